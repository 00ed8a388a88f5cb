//! Against a real registry on loopback: Debian's `docker-registry` (distribution),
//! without auth over HTTP and with htpasswd over TLS. Skipped with one line when the
//! binary is missing, unless BPFLEET_REQUIRE_REGISTRY or CI is set (then they fail).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use oci::manifest::{DOCKER_LAYER_TAR_GZIP, DOCKER_MANIFEST};
use oci::{
    Client, ClientOptions, Credentials, Digest, ErrorKind, Platform, PublicKey, Reference, SigningKey, build_image,
    build_index, generate_key_pair,
};

use oci::testing::{REGISTRY, Registry, have};

/// An example object compiled with clang (as examples/build.sh does).
fn example_elf(source: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let obj = out.path().join("x.o");
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-g", "-O2", "-target", "bpf", "-mcpu=v3", "-c", &multiarch])
        .arg(root.join("examples/bpf").join(source))
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("clang (scripts/install-deps.sh installs it)");
    assert!(status.success(), "clang failed on {source}");
    std::fs::read(obj).unwrap()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[tokio::test]
async fn push_pull_roundtrip_of_a_built_image() {
    if !have(REGISTRY, "push_pull_roundtrip_of_a_built_image") {
        return;
    }
    let reg = Registry::start(None);
    let client = reg.client();
    let elf = example_elf("xdp_counter.c");
    let built = build_image(&elf, "xdp_counter.o", &Platform::linux("amd64"), &labels()).unwrap();
    assert_eq!(built.contents.programs, BTreeMap::from([("count_packets".to_string(), "xdp".to_string())]));
    assert_eq!(built.contents.maps.get("packet_count").map(String::as_str), Some("array"));

    let tag = reg.reference("bytecode/xdp:v1");
    let pushed = client.push(&tag, &built.bundle).await.unwrap();
    assert_eq!(pushed, built.bundle.digest);
    let digest = client.resolve(&tag).await.unwrap();
    assert_eq!(digest, pushed);

    // Any platform: a single manifest is not filtered by platform.
    let image = client.pull(&tag.with_digest(digest.clone()), &Platform::linux("arm64")).await.unwrap();
    assert_eq!(image.elf.as_ref(), elf.as_slice());
    assert_eq!(image.elf_name, "xdp_counter.o");
    assert_eq!((image.digest.clone(), image.manifest_digest.clone()), (digest.clone(), digest.clone()));
    assert_eq!(image.reference.to_string(), format!("{}/bytecode/xdp@{digest}", reg.host));
    assert_eq!(image.programs.as_ref().unwrap()["count_packets"], "xdp");
    image.check_programs(&[("count_packets", "XDP")]).unwrap();
    let e = image.check_programs(&[("count_packets", "TC"), ("count_bytes", "XDP")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LabelsMismatch);
    assert!(e.to_string().contains("no program count_bytes (it lists: count_packets)"), "{e}");

    // Pushing the same object again gives the same digest (reproducible builds).
    let again = build_image(&elf, "xdp_counter.o", &Platform::linux("amd64"), &labels()).unwrap();
    assert_eq!(again.bundle.digest, digest);

    // Unknown tags and repositories.
    let e = client.resolve(&reg.reference("bytecode/xdp:nope")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ImageNotFound, "{e}");
    let e = client.pull(&reg.reference("nothing/here:v1"), &Platform::host()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ImageNotFound, "{e}");
    assert!(e.to_string().contains(&reg.host), "{e}");
}

/// A layout written by hand (not by this crate), copied by skopeo into the registry as
/// Docker schema 2 (Docker media types, gzip'd tar layer).
#[tokio::test]
async fn an_image_made_by_skopeo_is_pulled() {
    if !have(REGISTRY, "an_image_made_by_skopeo_is_pulled")
        || !have("/usr/bin/skopeo", "an_image_made_by_skopeo_is_pulled")
    {
        return;
    }
    let reg = Registry::start(None);
    let elf = example_elf("tc_counter.c");
    let layout = tempfile::tempdir().unwrap();
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len())
    };
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(elf.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "./tc_counter.o", elf.as_slice()).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let (layer, layer_size) = put(&gz.finish().unwrap());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "docker_version": "24.0.7",
        "config": {"Env": ["PATH=/"], "Labels": {
            "io.ebpf.programs": "{\"count_tc_packets\":\"tc\"}",
            "io.ebpf.maps": "{\"tc_packet_count\":\"per_cpu_array\"}"}},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]},
    });
    let (config, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
    });
    let (manifest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(layout.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(layout.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(format!("docker://{}/bytecode/tc:v1", reg.host))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));

    let client = reg.client();
    let tag = reg.reference("bytecode/tc:v1");
    let (raw, content_type) = client.fetch_manifest(&tag, "v1").await.unwrap();
    assert_eq!(content_type.as_deref(), Some(DOCKER_MANIFEST));
    assert!(String::from_utf8_lossy(&raw).contains(DOCKER_LAYER_TAR_GZIP));
    let image = client.pull(&tag, &Platform::linux("amd64")).await.unwrap();
    assert_eq!(image.elf.as_ref(), elf.as_slice());
    assert_eq!(image.elf_name, "tc_counter.o");
    assert_eq!(image.maps.as_ref().unwrap()["tc_packet_count"], "per_cpu_array");
    image.check_programs(&[("count_tc_packets", "TC")]).unwrap();
    let e = image.check_programs(&[("count_tc_packets", "XDP")]).unwrap_err();
    assert!(e.to_string().contains("labeled \"tc\" in the image but the spec says type XDP"), "{e}");
}

#[tokio::test]
async fn a_multi_arch_index_gives_each_node_its_architecture() {
    if !have(REGISTRY, "a_multi_arch_index_gives_each_node_its_architecture") {
        return;
    }
    let reg = Registry::start(None);
    let client = reg.client();
    let (xdp, tc) = (example_elf("xdp_counter.c"), example_elf("tc_counter.c"));
    let amd = build_image(&xdp, "prog.o", &Platform::linux("amd64"), &labels()).unwrap().bundle;
    let arm = build_image(&tc, "prog.o", &Platform::linux("arm64"), &labels()).unwrap().bundle;
    let repo = reg.reference("bytecode/multi:v1");
    for b in [&amd, &arm] {
        client.push(&repo.with_digest(b.digest.clone()), b).await.unwrap();
    }
    let index = build_index(&[(Platform::linux("amd64"), &amd), (Platform::linux("arm64"), &arm)]);
    client.push(&repo, &index).await.unwrap();
    let digest = client.resolve(&repo).await.unwrap();
    assert_eq!(digest, index.digest);

    let pinned = repo.with_digest(digest.clone());
    let on_arm = client.pull(&pinned, &Platform::linux("arm64")).await.unwrap();
    assert_eq!((on_arm.elf.as_ref(), &on_arm.manifest_digest), (tc.as_slice(), &arm.digest));
    assert_eq!(on_arm.digest, digest);
    assert_eq!(on_arm.platform, Some(Platform::linux("arm64")));
    let on_amd = client.pull(&pinned, &Platform::linux("amd64")).await.unwrap();
    assert_eq!(on_amd.elf.as_ref(), xdp.as_slice());
    let e = client.pull(&pinned, &Platform::linux("riscv64")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PlatformNotFound);
    assert!(e.to_string().contains("linux/amd64, linux/arm64"), "{e}");
}

#[tokio::test]
async fn signatures_unsigned_signed_wrong_key_copied_and_a_tampered_layer() {
    if !have(REGISTRY, "signatures_unsigned_signed_wrong_key_copied_and_a_tampered_layer") {
        return;
    }
    let reg = Registry::start(None);
    let client = reg.client();
    let (trusted_private, trusted_public) = generate_key_pair().unwrap();
    let (other_private, other_public) = generate_key_pair().unwrap();
    let key = SigningKey::from_pem(trusted_private.as_bytes()).unwrap();
    let trusted = PublicKey::parse_pem(trusted_public.as_bytes()).unwrap();
    let foreign = PublicKey::parse_pem(other_public.as_bytes()).unwrap();

    let elf = example_elf("xdp_counter.c");
    let repo = reg.reference("bytecode/signed:v1");
    let bundle = build_image(&elf, "xdp_counter.o", &Platform::linux("amd64"), &labels()).unwrap().bundle;
    let digest = client.push(&repo, &bundle).await.unwrap();

    let e = client.verify(&repo, &digest, &trusted).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsigned, "{e}");
    assert!(e.to_string().contains(&format!("sha256-{}.sig", digest.hex())), "{e}");

    client.sign(&repo, &digest, &key).await.unwrap();
    let ok = client.verify(&repo, &digest, &trusted).await.unwrap();
    assert_eq!((ok.digest.clone(), ok.key_index), (digest.clone(), 0));
    let e = client.verify(&repo, &digest, &foreign).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnknownKey, "{e}");
    // A second signature by another key is added next to the first; either key verifies.
    client.sign(&repo, &digest, &SigningKey::from_pem(other_private.as_bytes()).unwrap()).await.unwrap();
    client.verify(&repo, &digest, &foreign).await.unwrap();
    client.verify(&repo, &digest, &trusted).await.unwrap();

    // The signature of this image copied to another image's signature tag.
    let other = build_image(&example_elf("tc_counter.c"), "tc.o", &Platform::linux("amd64"), &labels()).unwrap().bundle;
    let other_digest = client.push(&reg.reference("bytecode/signed:v2"), &other).await.unwrap();
    let sig_tag = format!("sha256-{}.sig", digest.hex());
    let (sig_manifest, ct) = client.fetch_manifest(&repo, &sig_tag).await.unwrap();
    let copied = repo.with_tag(&format!("sha256-{}.sig", other_digest.hex()));
    client.push_manifest(&copied, ct.as_deref().unwrap(), sig_manifest).await.unwrap();
    let e = client.verify(&repo, &other_digest, &trusted).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureInvalid, "{e}");

    // The layer's bytes changed in the registry's storage: the pull refuses them,
    // naming the layer, although the (manifest) signature still verifies.
    let layer = &bundle.blobs[1].0;
    let path = reg.blob_path(layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 9;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let e = client.pull(&repo.with_digest(digest.clone()), &Platform::host()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tampered, "{e}");
    assert!(e.to_string().contains(&format!("layer {layer}")), "{e}");
    client.verify(&repo, &digest, &trusted).await.unwrap();
}

#[tokio::test]
async fn a_moved_tag_does_not_move_a_pinned_digest() {
    if !have(REGISTRY, "a_moved_tag_does_not_move_a_pinned_digest") {
        return;
    }
    let reg = Registry::start(None);
    let client = reg.client();
    let tag = reg.reference("bytecode/moving:stable");
    let (v1, v2) = (example_elf("xdp_counter.c"), example_elf("tc_counter.c"));
    client.push(&tag, &build_image(&v1, "p.o", &Platform::host(), &labels()).unwrap().bundle).await.unwrap();
    let d1 = client.resolve(&tag).await.unwrap();
    client.push(&tag, &build_image(&v2, "p.o", &Platform::host(), &labels()).unwrap().bundle).await.unwrap();
    let d2 = client.resolve(&tag).await.unwrap();
    assert_ne!(d1, d2);
    let pinned = client.pull(&tag.with_digest(d1.clone()), &Platform::host()).await.unwrap();
    assert_eq!((pinned.elf.as_ref(), pinned.digest), (v1.as_slice(), d1));
    // A tag with a digest is pinned by the digest.
    let both = Reference { digest: Some(pinned.manifest_digest.clone()), ..tag.clone() };
    assert_eq!(client.pull(&both, &Platform::host()).await.unwrap().elf.as_ref(), v1.as_slice());
    assert_eq!(client.pull(&tag, &Platform::host()).await.unwrap().elf.as_ref(), v2.as_slice());
}

#[tokio::test]
async fn a_registry_that_is_down_is_reported_unreachable() {
    if !have(REGISTRY, "a_registry_that_is_down_is_reported_unreachable") {
        return;
    }
    let mut reg = Registry::start(None);
    let client = reg.client();
    let tag = reg.reference("bytecode/down:v1");
    let digest = client
        .push(&tag, &build_image(&example_elf("xdp_counter.c"), "p.o", &Platform::host(), &labels()).unwrap().bundle)
        .await
        .unwrap();
    reg.stop();
    for e in [
        client.resolve(&tag).await.unwrap_err(),
        client.pull(&tag.with_digest(digest), &Platform::host()).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::RegistryUnreachable, "{e}");
        assert!(e.is_transient());
        assert!(e.to_string().contains(&format!("registry {} is unreachable", reg.host)), "{e}");
    }
}

#[tokio::test]
async fn htpasswd_over_tls_wrong_missing_and_right_credentials() {
    if !have(REGISTRY, "htpasswd_over_tls_wrong_missing_and_right_credentials")
        || !have("/usr/bin/htpasswd", "htpasswd_over_tls_wrong_missing_and_right_credentials")
    {
        return;
    }
    let reg = Registry::start(Some(("fleet", "s3cret")));
    let ca = reg.ca_pem.clone();
    let with = |credentials: Credentials, ca_pem: Option<Vec<u8>>| {
        Client::new(ClientOptions { credentials, ca_pem, ..Default::default() }).unwrap()
    };
    let tag = reg.reference("bytecode/private:v1");
    let elf = example_elf("xdp_counter.c");
    let bundle = build_image(&elf, "p.o", &Platform::host(), &labels()).unwrap().bundle;

    // The right user, from a dockerconfigjson blob as a pull secret holds it.
    let secret = format!(r#"{{"auths":{{"{}":{{"username":"fleet","password":"s3cret"}}}}}}"#, reg.host);
    let good = with(Credentials::from_docker_config(secret.as_bytes()).unwrap(), ca.clone());
    good.push(&tag, &bundle).await.unwrap();
    let image = good.pull(&tag, &Platform::host()).await.unwrap();
    assert_eq!(image.elf.as_ref(), elf.as_slice());

    for (name, client) in [
        ("no credentials", with(Credentials::anonymous(), ca.clone())),
        ("wrong password", with(Credentials::basic(&reg.host, "fleet", "wrong"), ca.clone())),
        ("credentials for another registry", with(Credentials::basic("127.0.0.1:1", "fleet", "s3cret"), ca.clone())),
    ] {
        let e = client.resolve(&tag).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "{name}: {e}");
        assert!(e.to_string().contains(&format!("registry {} refused access", reg.host)), "{name}: {e}");
    }
    // Without the CA the certificate is not trusted: unreachable, and the message says why.
    let e = with(Credentials::basic(&reg.host, "fleet", "s3cret"), None).resolve(&tag).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RegistryUnreachable, "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}
