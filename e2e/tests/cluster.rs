//! bpfleet on a real cluster, as a user installs it (docs/e2e.md, "Cluster mode"): the
//! images built from docker/*.Dockerfile with scripts/images.sh and loaded into the
//! container runtime, the chart installed with Helm, the agent as a pod. One scenario,
//! in order, because each step stands on the last:
//!
//! 1. install: every pod Ready;
//! 2. every shipped example Ready and counting — XDP and TC on a node interface, a
//!    tracepoint, a uprobe on a host binary (`/usr/bin/bash`, not the agent's), global
//!    data — plus image bytecode from a registry the operator knows only by a name in its
//!    /etc/hosts, over TLS (name resolution and TLS roots inside the FROM-scratch image);
//!    each BpfNode lists its program within 5 s;
//!    2c. health gates: a revision whose program never runs is halted by `mustRun` at the
//!    canary, one whose program runs passes (run counts read with bpftool);
//!    2d. programs inside pods (`cluster_pods`): XDP in each pod of a Deployment, packets
//!    counted per pod; a uprobe on a function of a containerised binary; scaled up and
//!    down, a container restarted in place: the attachments follow;
//! 3. the agent and operator pods restarted while packets flow: the same program and
//!    link ids, every packet counted;
//! 4. `helm upgrade` to newly built images: nothing re-attached, no revision changed;
//! 5. `helm uninstall`: nothing left in the kernel, bpffs or the API (the
//!    CRDs aside, as docs/install.md says);
//! 6. the uninstall order under Argo CD (no Helm hooks): bpfleet removed first leaves a
//!    BpfProgram held by its finalizer until a reinstall releases it; the documented
//!    order leaves nothing.
//!
//! Needs `KUBECONFIG` of a cluster whose node is this machine (`../shared/cluster-kit`
//! starts one); skips with one line otherwise.

mod cluster_pods;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::installed::{IMAGE_REPO, Installed, NAMESPACE, RELEASE, TestLink, cluster_or_skip};
use e2e::kernel::read_counter;
use e2e::util::{block_on, host_setup, is_root, random_suffix, repo_root, sh, sh_quiet, wait_for};
use oci::testing::Registry;
use oci::{Platform, build_image};
use serde_json::Value;

const TEST: &str = "cluster_install_examples_restarts_upgrade_uninstall";
const REGISTRY_NAME: &str = "registry.bpfleet.test";

/// The examples, their objects, the interface they attach to and the counters they own.
struct Example {
    name: &'static str,
    object: &'static str,
    /// `eth0` in the shipped manifest becomes this test interface (None: no interface).
    link: Option<usize>,
}

const EXAMPLES: [Example; 5] = [
    Example { name: "xdp-counter", object: "xdp_counter.o", link: Some(0) },
    Example { name: "tc-counter", object: "tc_counter.o", link: Some(0) },
    Example { name: "tracepoint-openat", object: "tracepoint_openat.o", link: None },
    Example { name: "uprobe-counter", object: "uprobe_counter.o", link: None },
    Example { name: "global-data", object: "global_data.o", link: Some(1) },
];

/// On the way out, also after a failure: uninstall and remove what the test created,
/// so the next run starts clean.
struct Teardown<'a>(&'a Installed);

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("teardown after a failure: uninstalling");
            let _ = self.0.helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "5m"]);
        }
        let _ = self.0.kubectl(&["delete", "namespace", NAMESPACE, "--wait=false"]);
        let _ = self.0.kubectl(&["delete", "namespace", cluster_pods::PODS_NS, "--wait=false"]);
    }
}

/// Every attachment of a program as its node reports it: program id -> link ids.
fn attachments(c: &Installed, node: &str, program: &str) -> BTreeMap<u64, Vec<u64>> {
    let p = c.node_program(node, program).unwrap().unwrap_or_else(|| panic!("{node}'s BpfNode lacks {program}"));
    p["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let links = a["linkIds"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
            (a["programId"].as_u64().unwrap(), links)
        })
        .collect()
}

fn map_pin(c: &Installed, node: &str, program: &str, map: &str) -> PathBuf {
    let p = c.node_program(node, program).unwrap().unwrap();
    let pin = p["maps"].as_array().into_iter().flatten().find(|m| m["name"] == map).map(|m| m["pinPath"].clone());
    PathBuf::from(pin.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| panic!("{program}: no map {map}")))
}

fn counter(c: &Installed, node: &str, program: &str, map: &str) -> u64 {
    read_counter(&map_pin(c, node, program, map)).unwrap_or_else(|e| panic!("{program}/{map}: {e:#}"))
}

fn status_revision(c: &Installed, name: &str) -> String {
    c.program(name).unwrap().unwrap()["status"]["revision"].as_str().unwrap_or_default().to_string()
}

/// Wait until the program is Ready for its current generation; returns how long it took.
fn wait_ready(c: &Installed, name: &str) -> Duration {
    let t = Instant::now();
    wait_for(Duration::from_secs(120), format!("{name} Ready"), || {
        let p = c.program(name).map_err(|e| e.to_string())?.ok_or("absent")?;
        let generation = p["metadata"]["generation"].as_i64();
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        if ready["status"] == "True" && ready["observedGeneration"].as_i64() == generation {
            Ok(())
        } else {
            Err(format!("Ready: {ready}; failures: {}", p["status"]["failures"]))
        }
    });
    t.elapsed()
}

/// A shipped example manifest with its interface swapped for a test link.
fn manifest(e: &Example, links: &[TestLink]) -> String {
    let path = repo_root().join("examples/manifests").join(format!("{}.yaml", e.name));
    let yaml = std::fs::read_to_string(&path).unwrap();
    match e.link {
        Some(i) => yaml.replace("interfaces: [eth0]", &format!("interfaces: [{}]", links[i].name)),
        None => yaml,
    }
}

/// Lines read by an interactive host bash: each is one readline() call.
fn bash_lines(n: usize) {
    let input = "true\n".repeat(n) + "exit\n";
    let out = std::process::Command::new("/usr/bin/bash")
        .args(["--norc", "--noprofile", "-i"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(out.success());
}

/// The rollout phase of a program (for its current generation), and its message.
fn rollout_phase(c: &Installed, name: &str) -> Result<(String, String), String> {
    let p = c.program(name).map_err(|e| e.to_string())?.ok_or("absent")?;
    if p["status"]["observedGeneration"] != p["metadata"]["generation"] {
        return Err("status of an older generation".into());
    }
    let r = &p["status"]["rollout"];
    Ok((r["phase"].as_str().unwrap_or_default().to_string(), r["message"].as_str().unwrap_or_default().to_string()))
}

/// Step 2c: health gates on the real node, through the agent pod (which, unprivileged,
/// cannot write `kernel.bpf_stats_enabled` and counts runs through its own
/// `BPF_ENABLE_STATS` handle): a revision attached where no frame arrives fails `mustRun`
/// (bpftool agrees: the program never ran); one attached where frames flow passes.
fn health_gates_in_the_cluster(c: &Installed, node: &str) {
    let busy = TestLink::create("bpfe2e3").unwrap();
    let idle = TestLink::create("bpfe2e4").unwrap();
    let manifest = |interfaces: &str, health: &str| {
        format!(
            "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfProgram\nmetadata: {{name: gated}}\nspec:\n  nodeSelector: {{}}\n  \
             bytecode:\n    configMap: {{name: xdp-counter-bytecode, namespace: {NAMESPACE}, key: xdp_counter.o}}\n  \
             programs:\n    - name: count_packets\n      type: XDP\n      xdp: {{interfaces: [{interfaces}]}}\n  \
             rollout:\n    health: {health}\n"
        )
    };
    c.apply(&manifest(&busy.name, "{}")).unwrap();
    wait_ready(c, "gated");
    let t = Instant::now();
    c.apply(&manifest(&idle.name, "{mustRun: true, minReadySeconds: 3}")).unwrap();
    let message = wait_for(Duration::from_secs(90), "gated: Halted by its mustRun gate", || {
        let (phase, message) = rollout_phase(c, "gated")?;
        if phase == "Halted" { Ok(message) } else { Err(format!("{phase}: {message}")) }
    });
    let halted_in = t.elapsed();
    assert!(message.contains("HealthGateFailed: ProgramDidNotRun: count_packets"), "{message}");
    let ids: Vec<u64> = attachments(c, node, "gated").into_keys().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(e2e::kernel::run_count(ids[0]), Some(0), "bpftool: program {} never ran", ids[0]);

    // Frames flow on the busy link: a revision on it passes the same gate.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let peer = busy.peer.clone();
    let sender = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            let _ = e2e::installed::send_frames(&peer, 5);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let t = Instant::now();
    c.apply(&manifest(&format!("{}, {}", busy.name, idle.name), "{mustRun: true, minReadySeconds: 3}")).unwrap();
    let took = wait_ready(c, "gated");
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let (phase, _) = rollout_phase(c, "gated").unwrap();
    assert_eq!(phase, "Complete");
    let ids: Vec<u64> = attachments(c, node, "gated").into_keys().collect();
    assert!(ids.iter().all(|id| e2e::kernel::run_count(*id).unwrap_or(0) > 0), "bpftool: {ids:?} ran");
    c.kubectl(&["delete", "bpfprogram", "gated", "--wait=true", "--timeout=60s"]).unwrap();
    eprintln!(
        "step 2c: health gates: an idle program halted by mustRun in {halted_in:.1?}, a running one Ready in {took:.1?} \
         ({:.1?} with the apply)",
        t.elapsed()
    );
}

/// Step 1b: writes go through the chart's admission (the operator's webhook behind its
/// Service on clusters without ValidatingAdmissionPolicy): a requester with RBAC write
/// but no grant is refused, a cluster admin is not (both as server-side dry runs).
/// `kubectl bpfleet maps` the way people run it: a token of the chart's map reader, the
/// real API server's service proxy to an operator pod, the node's agent pod. The count it
/// prints is the kernel's (bpftool on the node's pin, read right after).
fn maps_read_through_the_api_server(c: &Installed, node: &str) {
    // Built before the clock starts (the first use builds the binaries under test).
    let plugin = &e2e::util::binaries().plugin;
    let t = Instant::now();
    let out = std::process::Command::new(plugin)
        .args(["maps", "xdp-counter", "packet_count", "-o", "json", "--namespace", NAMESPACE])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("run kubectl-bpfleet");
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{stdout}: {e}"));
    assert_eq!(answer[0]["node"], node, "{answer}");
    let map = &answer[0]["maps"][0];
    assert_eq!(
        (map["name"].as_str(), map["type"].as_str(), map["valueType"].as_str()),
        (Some("packet_count"), Some("Array"), Some("__u64")),
        "{map}"
    );
    let printed = map["entries"][0]["value"].as_u64().unwrap_or_else(|| panic!("{map}"));
    let kernel = counter(c, node, "xdp-counter", "packet_count");
    assert!(printed > 0 && printed <= kernel, "printed {printed}, the kernel holds {kernel}");
    eprintln!(
        "step 2e: kubectl bpfleet maps through the API server's proxy to the operator pod: {printed} packets in {took:.1?} (bpftool then: {kernel})"
    );
}

fn admission_is_enforced_in_the_cluster(c: &Installed) {
    let rbac = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-bpfprogram-writer}
rules: [{apiGroups: [bpfleet.dev], resources: [bpfprograms], verbs: ["*"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-bpfprogram-writer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-bpfprogram-writer}
subjects: [{kind: User, name: e2e-stranger, apiGroup: rbac.authorization.k8s.io}]
"#;
    c.apply(rbac).unwrap();
    let program = r#"{"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "metadata": {"name": "e2e-admission"},
"spec": {"bytecode": {"path": "/opt/x.o"}, "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}]}}"#;
    let modes = c.kubectl(&["get", "validatingwebhookconfigurations", "-o", "name"]);
    let t = Instant::now();
    let refused =
        c.kubectl_with_input(&["create", "--dry-run=server", "-f", "-", "--as=e2e-stranger"], program).unwrap_err();
    let msg = format!("{refused:#}");
    assert!(msg.contains("e2e-stranger is named by no grant of BpfAdmissionPolicy default"), "{msg}");
    c.kubectl_with_input(&["create", "--dry-run=server", "-f", "-"], program).unwrap();
    let _ = c.kubectl(&["delete", "clusterrolebinding,clusterrole", "e2e-bpfprogram-writer", "--ignore-not-found"]);
    eprintln!(
        "step 1b: admission enforced ({}): a stranger with RBAC write refused, an admin admitted, in {:.1?}",
        modes.unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(", "),
        t.elapsed()
    );
}

#[test]
fn cluster_install_examples_restarts_upgrade_uninstall() {
    let Some(kubeconfig) = cluster_or_skip(TEST) else { return };
    assert!(is_root(), "the cluster e2e reads this node's kernel: run it as root");
    host_setup();
    let c = Installed::new(&kubeconfig).unwrap();
    assert!(
        !c.release_exists(),
        "a bpfleet release is already installed in {NAMESPACE}: uninstall it first (this suite installs and removes its own)"
    );
    let nodes = c.nodes().unwrap();
    let node = nodes[0].clone();
    let node_ip = c.node_ip(&node).unwrap();
    assert!(
        sh(&format!("ip -o addr show | grep -qw {node_ip}")).is_ok(),
        "node {node} ({node_ip}) is not this machine: the cluster e2e reads the kernel of the node it runs on"
    );
    let run = random_suffix();
    let started = Instant::now();

    // Images: built FROM scratch and loaded; nothing pulled.
    let v1 = format!("e2e-{run}-1");
    let t = Instant::now();
    let built = c.build_images(&v1).unwrap();
    eprintln!("images {v1} built in {:.0?}:\n{built}", t.elapsed());

    // A registry only a name in the operator's /etc/hosts reaches, over TLS with a CA
    // the chart is given: what the operator's static binary resolves and trusts itself.
    let registry = Registry::start_tls_at(&node_ip, &[REGISTRY_NAME]);
    let ca = registry.ca_pem.clone().unwrap();
    let pusher = oci::Client::new(oci::ClientOptions { ca_pem: Some(ca.clone()), ..Default::default() }).unwrap();
    let image = build_image(
        &e2e::util::object("xdp_counter.o"),
        "xdp_counter.o",
        &Platform::linux("amd64"),
        &Default::default(),
    )
    .unwrap();
    block_on(pusher.push(&registry.reference("e2e/xdp-counter:v1"), &image.bundle)).unwrap();
    let port = registry.host.rsplit(':').next().unwrap().to_string();

    let _teardown = Teardown(&c);
    c.kubectl(&["create", "namespace", NAMESPACE]).unwrap();
    // The chart's podTargets Role lives in it: it exists before the install.
    c.kubectl(&["create", "namespace", cluster_pods::PODS_NS]).unwrap();
    let ca_file = std::env::temp_dir().join(format!("bpfleet-e2e-ca-{run}.crt"));
    std::fs::write(&ca_file, &ca).unwrap();
    c.kubectl(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "e2e-registry-ca",
        &format!("--from-file=ca.crt={}", ca_file.display()),
    ])
    .unwrap();
    let sets = vec![
        format!("operator.hostAliases[0].ip={node_ip}"),
        format!("operator.hostAliases[0].hostnames[0]={REGISTRY_NAME}"),
        "operator.images.caConfigMap=e2e-registry-ca".to_string(),
        "operator.resyncSeconds=300".to_string(),
        format!("podTargets.namespaces={{{}}}", cluster_pods::PODS_NS),
        "csi.enabled=true".to_string(),
        format!("csi.namespaces={{{}}}", cluster_pods::PODS_NS),
    ];

    // 1. Install: every pod Ready.
    let t = Instant::now();
    c.install(&v1, &sets).unwrap();
    let pods = c.pods("").unwrap();
    eprintln!("step 1: installed, {} pods Ready in {:.0?}: {:?}", pods.len(), t.elapsed(), pods.keys());
    assert!(pods.keys().any(|p| p.starts_with(&format!("{RELEASE}-agent"))), "{pods:?}");
    assert!(pods.keys().filter(|p| p.starts_with(&format!("{RELEASE}-operator"))).count() >= 1, "{pods:?}");
    admission_is_enforced_in_the_cluster(&c);
    // A BpfNode for the node exists within 5 s of its agent being Ready (it was Ready
    // when `rollout status` returned).
    wait_for(Duration::from_secs(5), format!("BpfNode {node}"), || {
        c.kubectl(&["get", "bpfnode", &node]).map(|_| ()).map_err(|e| e.to_string())
    });

    // 2. Every example Ready and counting.
    let links = [
        TestLink::create("bpfe2e0").unwrap(),
        TestLink::create("bpfe2e1").unwrap(),
        TestLink::create("bpfe2e2").unwrap(),
    ];
    for e in &EXAMPLES {
        let object = repo_root().join("examples/bpf/build").join(e.object);
        c.kubectl(&[
            "-n",
            NAMESPACE,
            "create",
            "configmap",
            &format!("{}-bytecode", e.name),
            &format!("--from-file={}", object.display()),
        ])
        .unwrap();
        c.apply(&manifest(e, &links)).unwrap();
    }
    let image_program = format!(
        "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfProgram\nmetadata: {{name: xdp-image}}\nspec:\n  nodeSelector: {{}}\n  \
         bytecode:\n    image: {{url: \"{REGISTRY_NAME}:{port}/e2e/xdp-counter:v1\"}}\n  programs:\n    - name: count_packets\n      \
         type: XDP\n      xdp: {{interfaces: [{}], mode: Auto}}\n",
        links[2].name
    );
    c.apply(&image_program).unwrap();
    let names: Vec<&str> = EXAMPLES.iter().map(|e| e.name).chain(["xdp-image"]).collect();
    for name in &names {
        let took = wait_ready(&c, name);
        let revision = status_revision(&c, name);
        // The BpfNode follows: it names this revision within 5 s of Ready.
        let t = Instant::now();
        wait_for(Duration::from_secs(5), format!("BpfNode {node} lists {name} at {revision}"), || {
            let p = c.node_program(&node, name).map_err(|e| e.to_string())?.ok_or("not listed")?;
            (p["revision"] == revision.as_str()).then_some(()).ok_or(format!("lists {}", p["revision"]))
        });
        eprintln!("step 2: {name} Ready in {took:.1?}; BpfNode caught up {:.1?} later", t.elapsed());
    }
    let digest = c.program("xdp-image").unwrap().unwrap()["status"]["image"]["digest"].clone();
    assert!(digest.as_str().is_some_and(|d| d.starts_with("sha256:")), "image status: {digest}");

    let before = |p: &str, m: &str| counter(&c, &node, p, m);
    let (xdp0, tc0, seen0, sampled0, img0) = (
        before("xdp-counter", "packet_count"),
        before("tc-counter", "tc_packet_count"),
        before("global-data", "packets_seen"),
        before("global-data", "sampled_count_map"),
        before("xdp-image", "packet_count"),
    );
    links[0].send(100).unwrap();
    links[1].send(100).unwrap();
    links[2].send(10).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(before("xdp-counter", "packet_count") - xdp0, 100, "XDP counts every frame on {}", links[0].name);
    assert_eq!(before("tc-counter", "tc_packet_count") - tc0, 100, "TC counts every frame XDP passed");
    assert_eq!(before("global-data", "packets_seen") - seen0, 100);
    assert_eq!(before("global-data", "sampled_count_map") - sampled0, 25, "SAMPLE_RATE 4 from globalData");
    assert_eq!(before("global-data", "config_seen"), 4);
    assert_eq!(before("xdp-image", "packet_count") - img0, 10, "image bytecode pulled by name over TLS counts");
    let opens = before("tracepoint-openat", "openat_count");
    for _ in 0..20 {
        let _ = std::fs::File::open("/etc/hostname");
    }
    assert!(before("tracepoint-openat", "openat_count") >= opens + 20, "the tracepoint counts openat");
    let (calls, returns) = (before("uprobe-counter", "uprobe_count"), before("uprobe-counter", "uretprobe_count"));
    bash_lines(5);
    let (calls2, returns2) = (before("uprobe-counter", "uprobe_count"), before("uprobe-counter", "uretprobe_count"));
    assert!(
        calls2 >= calls + 5 && returns2 >= returns + 5,
        "host bash's readline: {calls}->{calls2}, {returns}->{returns2}"
    );
    eprintln!("step 2: every example counts (XDP, TC, global data, image, tracepoint, uprobe on the host's bash)");
    health_gates_in_the_cluster(&c, &node);
    maps_read_through_the_api_server(&c, &node);
    cluster_pods::volumes::map_volume_in_a_pod(&c, &v1, || counter(&c, &node, "xdp-counter", "packet_count"));
    cluster_pods::programs_inside_pods(&c, &node, &v1);

    // Without agent.hostPID (the default) a uprobe scoped to one host process is refused
    // with what to set; the unscoped uprobe above counts the host's bash all the same.
    let scoped = manifest(&EXAMPLES[3], &links)
        .replace("name: uprobe-counter\n", "name: uprobe-pid\n")
        .replace("symbol: readline}", &format!("symbol: readline, pid: {}}}", std::process::id()));
    c.apply(&scoped).unwrap();
    wait_for(Duration::from_secs(60), "uprobe-pid refused for want of the host's PID namespace", || {
        let p = c.program("uprobe-pid").map_err(|e| e.to_string())?.ok_or("absent")?;
        let f = p["status"]["failures"].as_array().and_then(|f| f.first().cloned()).ok_or("no failure yet")?;
        f["message"].as_str().filter(|m| m.contains("agent.hostPID=true")).map(|_| ()).ok_or(f.to_string())
    });
    c.kubectl(&["delete", "bpfprogram", "uprobe-pid", "--wait=true", "--timeout=60s"]).unwrap();

    // 2b. Selected nodes without a Ready agent wait for it; they never fail the program.
    //    `windows`: the agent DaemonSet (nodeSelector kubernetes.io/os=linux) puts no pod
    //    there. `joining`: it does, but no kubelet ever starts it. Their addresses are
    //    loopback ones nothing listens on.
    c.kubectl(&["label", "--overwrite", "node", &node, "bpfe2e/role=agents"]).unwrap();
    let fake_node = |name: &str, os: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/os: {os}, bpfe2e/role: agents}}\n\
             status:\n  addresses: [{{type: InternalIP, address: \"{ip}\"}}]\n"
        )
    };
    let waiting_program = "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfProgram\nmetadata: {name: waits}\nspec:\n  \
         nodeSelector: {matchLabels: {bpfe2e/role: agents}}\n  bytecode:\n    configMap: {name: tracepoint-openat-bytecode, \
         namespace: bpfleet-system, key: tracepoint_openat.o}\n  programs:\n    - name: count_openat\n      \
         type: Tracepoint\n      tracepoint: {names: [syscalls/sys_enter_openat]}\n";
    c.apply(&fake_node("bpfe2e-windows", "windows", "127.0.9.1")).unwrap();
    c.apply(waiting_program).unwrap();
    let conditions = |p: &Value| -> BTreeMap<String, String> {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["type"].as_str().unwrap_or("").to_string(), c["status"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    let counts = |p: &Value| {
        let st = &p["status"];
        [&st["targetNodes"], &st["readyNodes"], &st["failedNodes"], &st["waitingNodes"]]
            .map(|v| v.as_i64().unwrap_or(0))
    };
    wait_for(Duration::from_secs(30), "waits: Ready on the node with an agent, the one without counted apart", || {
        let p = c.program("waits").map_err(|e| e.to_string())?.ok_or("absent")?;
        let (cs, n) = (conditions(&p), counts(&p));
        (n == [2, 1, 0, 1] && cs["Ready"] == "True" && cs["Stalled"] == "False")
            .then_some(())
            .ok_or(format!("targets/ready/failed/waiting {n:?}, conditions {cs:?}"))
    });
    c.apply(&fake_node("bpfe2e-joining", "linux", "127.0.9.2")).unwrap();
    wait_for(Duration::from_secs(60), "waits: Reconciling for the joining node, never Stalled", || {
        let p = c.program("waits").map_err(|e| e.to_string())?.ok_or("absent")?;
        let (cs, n) = (conditions(&p), counts(&p));
        (n == [3, 1, 0, 2] && cs["Reconciling"] == "True" && cs["Stalled"] == "False" && cs["Ready"] == "False")
            .then_some(())
            .ok_or(format!("targets/ready/failed/waiting {n:?}, conditions {cs:?}"))
    });
    c.kubectl(&["delete", "node", "bpfe2e-joining", "bpfe2e-windows"]).unwrap();
    wait_for(Duration::from_secs(30), "waits: Ready once the nodes without agents are gone", || {
        let p = c.program("waits").map_err(|e| e.to_string())?.ok_or("absent")?;
        (counts(&p) == [1, 1, 0, 0]).then_some(()).ok_or(format!("{:?}", counts(&p)))
    });
    c.kubectl(&["delete", "bpfprogram", "waits", "--wait=true", "--timeout=60s"]).unwrap();
    c.kubectl(&["label", "node", &node, "bpfe2e/role-"]).unwrap();
    eprintln!("step 2b: a node without an agent and a joining node wait (counted apart), nothing Stalled");

    // 3. Agent and operator pods restarted while packets flow.
    let ids: BTreeMap<&str, BTreeMap<u64, Vec<u64>>> = names.iter().map(|n| (*n, attachments(&c, &node, n))).collect();
    let revisions: BTreeMap<&str, String> = names.iter().map(|n| (*n, status_revision(&c, n))).collect();
    for (name, progs) in &ids {
        for (prog, link_ids) in progs {
            assert!(e2e::kernel::program_exists(*prog), "{name}: program {prog} not in the kernel");
            for l in link_ids {
                assert!(e2e::kernel::link_exists(*l), "{name}: link {l} not in the kernel");
            }
        }
    }
    let xdp_before = before("xdp-counter", "packet_count");
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sent, stop, peer) = (sent.clone(), stop.clone(), links[0].peer.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                e2e::installed::send_frames(&peer, 10).unwrap();
                sent.fetch_add(10, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t = Instant::now();
    c.kubectl(&["-n", NAMESPACE, "delete", "pod", "-l", "app.kubernetes.io/name=bpfleet-agent", "--wait=true"])
        .unwrap();
    // Created while the node has no Ready agent: it waits, and runs as soon as the new
    // agent is Ready (not at the next resync, 300 s away here).
    c.apply(&manifest(&EXAMPLES[2], &links).replace("name: tracepoint-openat\n", "name: late\n")).unwrap();
    c.wait_workloads().unwrap();
    let agent_back = t.elapsed();
    let late = wait_ready(&c, "late");
    assert!(late < Duration::from_secs(10), "a program waiting for its agent ran {late:?} after the agent was Ready");
    // Ready because it runs: the node reports it, and the kernel has it.
    for (id, _) in attachments(&c, &node, "late") {
        assert!(e2e::kernel::program_exists(id), "late: program {id} is not in the kernel");
    }
    c.kubectl(&["delete", "bpfprogram", "late", "--wait=true", "--timeout=60s"]).unwrap();
    // The BpfNode drops a deleted program within 5 s (it used to list it, with its old
    // pin paths, until the next resync).
    wait_for(Duration::from_secs(5), format!("BpfNode {node} drops late"), || {
        match c.node_program(&node, "late").map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("still lists late at {}", p["revision"])),
        }
    });
    let t = Instant::now();
    c.kubectl(&["-n", NAMESPACE, "delete", "pod", "-l", "app.kubernetes.io/name=bpfleet-operator", "--wait=true"])
        .unwrap();
    c.wait_workloads().unwrap();
    let operator_back = t.elapsed();
    // A resync pass of the new leader (it lists every agent before deciding).
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sent = sent.load(Ordering::Relaxed) as u64;
    assert_eq!(before("xdp-counter", "packet_count") - xdp_before, sent, "every packet counted across the restarts");
    for name in &names {
        wait_ready(&c, name);
        assert_eq!(attachments(&c, &node, name), ids[name], "{name}: program and link ids unchanged across restarts");
        assert_eq!(status_revision(&c, name), revisions[name]);
    }
    eprintln!(
        "step 3: agent pod back in {agent_back:.0?} (a program created meanwhile Ready {late:.1?} after it), operator pods in {operator_back:.0?}; {sent} frames sent, {sent} counted; ids unchanged"
    );

    // 4. helm upgrade to newly built images: nothing re-attached.
    let v2 = format!("e2e-{run}-2");
    c.build_images(&v2).unwrap();
    let xdp_before = before("xdp-counter", "packet_count");
    c.install(&v2, &sets).unwrap();
    let agent_image = c
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "daemonset",
            &format!("{RELEASE}-agent"),
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .unwrap();
    assert_eq!(agent_image, format!("{IMAGE_REPO}/bpfleet-agent:{v2}"));
    std::thread::sleep(Duration::from_secs(3));
    for name in &names {
        wait_ready(&c, name);
        assert_eq!(attachments(&c, &node, name), ids[name], "{name}: re-attached by the upgrade");
        assert_eq!(status_revision(&c, name), revisions[name], "{name}: the upgrade changed its revision");
    }
    links[0].send(50).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(before("xdp-counter", "packet_count") - xdp_before, 50);
    eprintln!("step 4: upgraded {v1} -> {v2}: same ids, same revisions, still counting");

    // 5. helm uninstall: nothing left.
    let t = Instant::now();
    c.helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "5m"]).unwrap();
    eprintln!("step 5: uninstalled in {:.0?}", t.elapsed());
    for (name, progs) in &ids {
        for (prog, link_ids) in progs {
            assert!(!e2e::kernel::program_exists(*prog), "{name}: program {prog} still loaded after uninstall");
            for l in link_ids {
                assert!(!e2e::kernel::link_exists(*l), "{name}: link {l} still in the kernel");
            }
        }
    }
    for l in &links {
        let shown = sh(&format!("ip -d link show dev {}", l.name)).unwrap();
        assert!(!shown.contains("prog/xdp"), "XDP still on {}: {shown}", l.name);
    }
    let left = e2e::kernel::pins_under(std::path::Path::new("/sys/fs/bpf/bpfleet"));
    assert!(left.is_empty(), "bpffs still holds {left:?}");
    assert_eq!(c.kubectl(&["get", "bpfprograms", "-o", "name"]).unwrap().trim(), "", "BpfPrograms left");
    assert_eq!(c.kubectl(&["get", "bpfnodes", "-o", "name"]).unwrap().trim(), "", "BpfNodes left claiming programs");
    let pods = c.pods("").unwrap();
    assert!(pods.is_empty(), "pods left: {pods:?}");
    // The CSI driver's sockets go with it, or the next install's registration would wait
    // for the kubelet's backoff on the dead one.
    let registry = std::path::Path::new("/var/lib/kubelet/plugins_registry/csi.bpfleet.dev-reg.sock");
    assert!(!registry.exists(), "{} left behind", registry.display());

    // 6. Argo CD deletes without Helm's pre-delete hook (docs/install.md, "Uninstalling
    //    under Argo CD"). In the wrong order — bpfleet first — a BpfProgram keeps its
    //    finalizer and its program keeps running; reinstalling releases it and unloads
    //    the program. In the documented order nothing is left.
    let xdp = &EXAMPLES[0];
    let xdp_id = |c: &Installed| *attachments(c, &node, xdp.name).keys().next().unwrap();
    c.install(&v2, &sets).unwrap();
    c.apply(&manifest(xdp, &links)).unwrap();
    wait_ready(&c, xdp.name);
    wait_for(Duration::from_secs(5), "BpfNode lists xdp-counter", || {
        c.node_program(&node, xdp.name).map_err(|e| e.to_string())?.map(|_| ()).ok_or("not yet".to_string())
    });
    let id = xdp_id(&c);
    c.helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks", "--wait", "--timeout", "2m"]).unwrap();
    c.kubectl(&["delete", "bpfprogram", xdp.name, "--wait=false"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let stuck = c.program(xdp.name).unwrap().expect("held by its finalizer with no operator to release it");
    assert!(!stuck["metadata"]["deletionTimestamp"].is_null());
    assert!(e2e::kernel::program_exists(id), "pinned, the program outlives its agent");
    c.install(&v2, &sets).unwrap();
    wait_for(Duration::from_secs(60), "the reinstalled operator releases xdp-counter", || {
        match c.program(xdp.name).map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("still there: {}", p["status"]["conditions"])),
        }
    });
    assert!(!e2e::kernel::program_exists(id), "program {id} still loaded after the operator released it");
    eprintln!(
        "step 6: bpfleet removed before its programs: xdp-counter held by its finalizer, released by a reinstall"
    );

    c.apply(&manifest(xdp, &links)).unwrap();
    wait_ready(&c, xdp.name);
    wait_for(Duration::from_secs(5), "BpfNode lists xdp-counter", || {
        c.node_program(&node, xdp.name).map_err(|e| e.to_string())?.map(|_| ()).ok_or("not yet".to_string())
    });
    let id = xdp_id(&c);
    c.kubectl(&["delete", "bpfprograms", "--all", "--wait", "--timeout=2m"]).unwrap();
    assert!(!e2e::kernel::program_exists(id));
    c.helm(&["uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks", "--wait", "--timeout", "2m"]).unwrap();
    c.kubectl(&["delete", "bpfnodes", "--all"]).unwrap();
    assert!(e2e::kernel::pins_under(std::path::Path::new("/sys/fs/bpf/bpfleet")).is_empty());
    assert_eq!(c.kubectl(&["get", "bpfnodes,bpfprograms", "-o", "name"]).unwrap().trim(), "");
    eprintln!("step 6: in the documented order (programs, then bpfleet, then BpfNodes) nothing is left");

    sh_quiet(&format!("rm -f {}", ca_file.display()));
    eprintln!("{TEST}: passed in {:.0?}", started.elapsed());
}
