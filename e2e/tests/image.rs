//! `bytecode.image` end to end: a real API server, the operator, process-mode nodes, and
//! Debian's `docker-registry` on loopback holding images made with the `oci` library
//! (as `kubectl bpfleet image build/push/sign` makes them). The nodes never reach the
//! registry: the operator pulls and ships the bytes.
//!
//! Run: see scenarios.rs. Without KUBECONFIG (or without docker-registry) it skips with
//! one line.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::BpfProgram;
use e2e::env::{APPLY_TIMEOUT, Env, condition, map_pin, ready};
use e2e::kernel;
use e2e::util::{block_on, wait_for};
use kube::ResourceExt;
use oci::testing::{REGISTRY, Registry, have};
use oci::{Platform, Reference, SigningKey, build_image, generate_key_pair};
use serde_json::json;

const KEYS_SECRET: &str = "image-keys";

fn image_status(p: &BpfProgram) -> Option<crds::program::ImageStatus> {
    p.status.as_ref()?.image.clone()
}

fn stalled_with(p: &BpfProgram, reason: &str) -> Result<(), String> {
    let s = p.status.as_ref().ok_or("no status")?;
    if s.observed_generation != p.metadata.generation {
        return Err("status is for an older generation".into());
    }
    let c = condition(s, "Stalled").ok_or("no Stalled condition")?;
    if c.status == "True" && c.reason == reason { Ok(()) } else { Err(format!("Stalled: {c:?}")) }
}

#[test]
fn image_bytecode_is_pinned_by_digest_verified_and_shipped_by_the_operator() {
    const TEST: &str = "image_bytecode_is_pinned_by_digest_verified_and_shipped_by_the_operator";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    if !have(REGISTRY, TEST) {
        return;
    }
    let mut registry = Registry::start(None);
    let client = registry.client();
    let (private, public) = generate_key_pair().unwrap();
    let key = SigningKey::from_pem(private.as_bytes()).unwrap();
    let build = |object: &str| {
        build_image(&e2e::util::object(object), object, &Platform::linux("amd64"), &BTreeMap::new()).unwrap().bundle
    };
    let tag: Reference = registry.reference("bpfleet/xdp-counter:v1");
    let v1 = build("xdp_counter.o");
    let d1 = block_on(client.push(&tag, &v1)).unwrap();
    block_on(client.sign(&tag, &d1, &key)).unwrap();

    let host = registry.host.clone();
    let mut env = Env::start_with(TEST, &kubeconfig, |cluster| {
        cluster.create_secret(KEYS_SECRET, "Opaque", &[("release.pub", public.clone().into_bytes())]).unwrap();
        vec![format!("--insecure-registry={host}"), format!("--image-signature-keys-secret={KEYS_SECRET}")]
    });
    let (a, b) = (env.add_node(&[]), env.add_node(&[]));
    let url = format!("{}/bpfleet/xdp-counter:v1", registry.host);
    let spec = env.xdp_spec(env.selector(&[]), json!({"image": {"url": url}}), "count_packets", &["eth0"]);
    let name = env.create_program("from-image", spec);

    // Pulled, verified, pinned: status names the digest and the key; nodes count packets.
    let p = env.wait_ready(&name, 2);
    let st = image_status(&p).expect("status.image");
    assert_eq!(st.digest, d1.to_string());
    assert_eq!(st.verified_by.as_deref(), Some("release.pub"));
    let (rev, uid) = (p.status.as_ref().unwrap().revision.clone().unwrap(), p.uid().unwrap());
    let mut ids = Vec::new();
    for i in [a, b] {
        let e = env.wait_node_runs(i, &uid, &rev);
        let n = env.node(i);
        let pin = map_pin(&e, "packet_count");
        let before = kernel::read_counter(&pin).unwrap();
        n.ping(5);
        wait_for(Duration::from_secs(15), format!("{}: the image's program counts", n.name), || {
            let c = kernel::read_counter(&pin).map_err(|e| format!("{e:#}"))?;
            if c >= before + 5 { Ok(()) } else { Err(format!("{before} -> {c}")) }
        });
        ids.push(n.xdp("eth0")[0].id);
    }

    // The tag moves in the registry: nothing moves on the nodes (same spec, same digest).
    let v2 = build("xdp_counter_v2.o");
    let d2 = block_on(client.push(&tag, &v2)).unwrap();
    block_on(client.sign(&tag, &d2, &key)).unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let p = env.program(&name);
    assert_eq!(image_status(&p).unwrap().digest, d1.to_string(), "a moved tag is not followed silently");
    assert_eq!(p.status.as_ref().unwrap().revision.as_deref(), Some(rev.as_str()));
    assert_eq!(vec![env.node(a).xdp("eth0")[0].id, env.node(b).xdp("eth0")[0].id], ids);

    // Resolving again on request rolls the new digest out.
    env.cluster.annotate_program(&name, "bpfleet.dev/resolve-image", "1").unwrap();
    let p = env.wait_program(&name, "on the new digest", APPLY_TIMEOUT, |p| {
        let st = image_status(p).ok_or("no status.image")?;
        if st.digest != d2.to_string() {
            return Err(format!("digest {}", st.digest));
        }
        ready(p, 2)
    });
    let rev2 = p.status.as_ref().unwrap().revision.clone().unwrap();
    assert_ne!(rev2, rev);
    for i in [a, b] {
        env.wait_node_runs(i, &uid, &rev2);
    }

    // An unsigned image is refused, and nothing running is touched.
    let unsigned = registry.reference("bpfleet/xdp-counter:unsigned");
    let note = BTreeMap::from([("org.example.note".to_string(), "never signed".to_string())]);
    let never_signed =
        build_image(&e2e::util::object("xdp_counter.o"), "xdp_counter.o", &Platform::linux("amd64"), &note);
    block_on(client.push(&unsigned, &never_signed.unwrap().bundle)).unwrap();
    let ids2 = vec![env.node(a).xdp("eth0")[0].id, env.node(b).xdp("eth0")[0].id];
    env.cluster
        .patch_program_spec(
            &name,
            json!({"bytecode": {"image": {"url": format!("{}/bpfleet/xdp-counter:unsigned", registry.host)}}}),
        )
        .unwrap();
    let p = env.wait_program(&name, "refused as unsigned", APPLY_TIMEOUT, |p| stalled_with(p, "ImageUnsigned"));
    let msg = &condition(p.status.as_ref().unwrap(), "Stalled").unwrap().message;
    assert!(msg.contains("sig"), "the message says what is missing: {msg}");
    assert_eq!(vec![env.node(a).xdp("eth0")[0].id, env.node(b).xdp("eth0")[0].id], ids2);

    // The registry goes down during a change: the status says so; the nodes keep running.
    registry.stop();
    env.cluster
        .patch_program_spec(
            &name,
            json!({"bytecode": {"image": {"url": format!("{}/bpfleet/xdp-counter:v2", registry.host)}}}),
        )
        .unwrap();
    let p = env.wait_program(&name, "registry unreachable", APPLY_TIMEOUT, |p| stalled_with(p, "ImageUnavailable"));
    let msg = &condition(p.status.as_ref().unwrap(), "Stalled").unwrap().message;
    assert!(msg.contains(&registry.host), "the registry is named: {msg}");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(vec![env.node(a).xdp("eth0")[0].id, env.node(b).xdp("eth0")[0].id], ids2, "nothing running is touched");
    for i in [a, b] {
        env.wait_node_runs(i, &uid, &rev2);
    }
}

#[test]
fn a_wrong_pull_secret_is_reported_and_the_right_one_pulls() {
    const TEST: &str = "a_wrong_pull_secret_is_reported_and_the_right_one_pulls";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    if !have(REGISTRY, TEST) || !have("/usr/bin/htpasswd", TEST) {
        return;
    }
    use base64::Engine;
    // htpasswd (bcrypt) over TLS with a fresh CA the operator is told to trust.
    let registry = Registry::start(Some(("ci", "s3cret")));
    let ca = registry.ca_pem.clone().expect("a TLS registry has a CA");
    let client = oci::Client::new(oci::ClientOptions {
        credentials: oci::Credentials::basic(&registry.host, "ci", "s3cret"),
        ca_pem: Some(ca.clone()),
        ..Default::default()
    })
    .unwrap();
    let tag = registry.reference("private/xdp-counter:v1");
    let image =
        build_image(&e2e::util::object("xdp_counter.o"), "xdp_counter.o", &Platform::linux("amd64"), &BTreeMap::new());
    let digest = block_on(client.push(&tag, &image.unwrap().bundle)).unwrap();

    let docker_config = |user: &str, pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        json!({"auths": {registry.host.clone(): {"auth": auth}}}).to_string().into_bytes()
    };
    let ca_file = std::env::temp_dir().join(format!("bpfleet-e2e-registry-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &ca).unwrap();
    let mut env = Env::start_with(TEST, &kubeconfig, |cluster| {
        let t = "kubernetes.io/dockerconfigjson";
        cluster.create_secret("wrong-creds", t, &[(".dockerconfigjson", docker_config("ci", "guess"))]).unwrap();
        cluster.create_secret("right-creds", t, &[(".dockerconfigjson", docker_config("ci", "s3cret"))]).unwrap();
        vec![format!("--registry-ca-file={}", ca_file.display())]
    });
    let a = env.add_node(&[]);
    let url = format!("{}/private/xdp-counter:v1", registry.host);
    let spec = env.xdp_spec(
        env.selector(&[]),
        json!({"image": {"url": url, "pullSecret": "wrong-creds"}}),
        "count_packets",
        &["eth0"],
    );
    let name = env.create_program("private", spec);
    let p = env.wait_program(&name, "refused credentials", APPLY_TIMEOUT, |p| stalled_with(p, "ImageUnavailable"));
    let msg = &condition(p.status.as_ref().unwrap(), "Stalled").unwrap().message;
    assert!(msg.contains(&registry.host), "the registry is named: {msg}");
    assert!(env.node(a).xdp("eth0").is_empty(), "nothing reached the node");

    env.cluster
        .patch_program_spec(&name, json!({"bytecode": {"image": {"url": url, "pullSecret": "right-creds"}}}))
        .unwrap();
    let p = env.wait_ready(&name, 1);
    assert_eq!(image_status(&p).unwrap().digest, digest.to_string());
    assert_eq!(env.node(a).xdp("eth0").len(), 1);

    // The operator now holds the image, pulled with right-creds. A program that pins the
    // same digest without credentials must still be refused by the registry, not served
    // from the operator's cache.
    let pinned = |secret: Option<&str>| {
        let mut image = json!({"url": url, "digest": digest.to_string()});
        if let Some(s) = secret {
            image["pullSecret"] = json!(s);
        }
        env.xdp_spec(env.selector(&[]), json!({"image": image}), "count_packets", &["eth1"])
    };
    env.node(a).add_interface("eth1").unwrap();
    let freeloader = env.create_program("freeloader", pinned(None));
    env.wait_program(&freeloader, "refused without credentials", APPLY_TIMEOUT, |p| {
        stalled_with(p, "ImageUnavailable")
    });
    assert!(env.node(a).xdp("eth1").is_empty(), "cached bytes reached a program without credentials");
    env.cluster.patch_program_spec(&freeloader, json!({"bytecode": {"image": {"pullSecret": "right-creds"}}})).unwrap();
    env.wait_ready(&freeloader, 1);
    let _ = std::fs::remove_file(ca_file);
}
