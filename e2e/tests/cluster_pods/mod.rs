//! Step 2d of the cluster scenario: programs inside pods, from the shipped examples
//! (`examples/manifests/xdp-pods.yaml`, `uprobe-containers.yaml`) in a namespace of the
//! test's, their Deployments running the examples' workload image. What is attached is
//! read from the kernel: bpftool inside each pod's network namespace, link ids before and
//! after, per-pod packet counts for pings into each pod, probe counts rising, bpffs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::installed::{IMAGE_REPO, Installed, NAMESPACE};
use e2e::kernel::{link_exists, parse_net_show, read_counter, read_keyed_counter};
use e2e::util::{repo_root, sh, wait_for};

use super::map_pin;

pub mod volumes;
use serde_json::Value;

/// The namespace whose pods the programs attach in (the chart's `podTargets.namespaces`).
pub const PODS_NS: &str = "bpfleet-e2e-pods";
/// Where containerd (with `netns_mounts_under_state_dir`) or the CNI keep pods' namespaces.
const NETNS_DIRS: [&str; 2] = ["/run/containerd/io.containerd.grpc.v1.cri/netns", "/run/netns"];

/// A pod as kubectl shows it.
#[derive(Clone, Debug)]
struct PodView {
    uid: String,
    name: String,
    running: bool,
    ip: String,
    /// (container id without the runtime prefix, restart count) of its first container.
    container: Option<(String, i64)>,
}

fn pods(c: &Installed, app: &str) -> Vec<PodView> {
    let v = c.kubectl_json(&["-n", PODS_NS, "get", "pods", "-l", &format!("app={app}")]).unwrap();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let cs = p["status"]["containerStatuses"].get(0);
            PodView {
                uid: p["metadata"]["uid"].as_str().unwrap_or_default().into(),
                name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                running: p["status"]["phase"] == "Running",
                ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
                container: cs.and_then(|c| {
                    let id = c["containerID"].as_str()?.rsplit("://").next()?.to_string();
                    c["state"]["running"].is_object().then_some((id, c["restartCount"].as_i64().unwrap_or(0)))
                }),
            }
        })
        .collect()
}

/// The pods a program's BpfNode entry lists: uid -> (link ids, reason).
fn listed(c: &Installed, node: &str, program: &str) -> BTreeMap<String, (Vec<u64>, String)> {
    let Some(p) = c.node_program(node, program).unwrap() else { return BTreeMap::new() };
    p["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            let links = x["linkIds"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
            let reason = x["reason"].as_str().unwrap_or_default().to_string();
            (x["uid"].as_str().unwrap_or_default().to_string(), (links, reason))
        })
        .collect()
}

/// Every listed pod attached (links, no reason) and exactly the running pods listed.
fn all_attached(c: &Installed, node: &str, program: &str, running: &BTreeSet<String>) -> Result<(), String> {
    let l = listed(c, node, program);
    let uids: BTreeSet<String> = l.keys().cloned().collect();
    if &uids != running {
        return Err(format!("lists {uids:?}, running {running:?}"));
    }
    match l.iter().find(|(_, (links, reason))| links.is_empty() || !reason.is_empty()) {
        Some((uid, x)) => Err(format!("pod {uid}: {x:?}")),
        None => Ok(()),
    }
}

fn running_uids(c: &Installed, app: &str) -> BTreeSet<String> {
    pods(c, app).into_iter().filter(|p| p.running).map(|p| p.uid).collect()
}

/// The node path of the network namespace holding `ip` (a pod's).
fn netns_of(ip: &str) -> PathBuf {
    let found =
        NETNS_DIRS.iter().flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten()).map(|e| e.path()).find(
            |p| {
                sh(&format!("nsenter --net={} ip -o -4 addr show", p.display()))
                    .is_ok_and(|out| out.split_whitespace().any(|w| w.starts_with(&format!("{ip}/"))))
            },
        );
    found.unwrap_or_else(|| panic!("no network namespace under {NETNS_DIRS:?} holds {ip}"))
}

/// Program ids attached with XDP to eth0 inside the namespace at `netns`, per bpftool.
fn xdp_inside(netns: &Path) -> Vec<u64> {
    let out = sh(&format!("nsenter --net={} bpftool -j net show dev eth0", netns.display())).unwrap();
    parse_net_show(&out).unwrap().into_iter().map(|a| a.id).collect()
}

fn program_id(c: &Installed, node: &str, program: &str) -> u64 {
    let p = c.node_program(node, program).unwrap().unwrap();
    p["attached"][0]["programId"].as_u64().unwrap_or_else(|| panic!("{program}: no program id in {p}"))
}

/// Pins under the agent's bpffs root whose path names pod `uid`.
fn pins_of_pod(uid: &str) -> Vec<String> {
    let out = sh(&format!("find /sys/fs/bpf/bpfleet -path '*/pods/{uid}*' 2>/dev/null")).unwrap_or_default();
    out.lines().map(str::to_string).collect()
}

/// A shipped example moved to the test's namespace, its workload the image built for the run.
pub fn example(name: &str, version: &str) -> String {
    let yaml = std::fs::read_to_string(repo_root().join("examples/manifests").join(format!("{name}.yaml"))).unwrap();
    let image = format!("{IMAGE_REPO}/bpfleet-example-ticker:{version}");
    yaml.replace("namespace: default", &format!("namespace: {PODS_NS}"))
        .replace("registry.k8s.io/pause:3.9", &image)
        .replace("ghcr.io/bpfleet/bpfleet-example-ticker:0.1.0", &image)
}

fn scale(c: &Installed, deployment: &str, replicas: usize) {
    c.kubectl(&["-n", PODS_NS, "scale", &format!("deployment/{deployment}"), &format!("--replicas={replicas}")])
        .unwrap();
}

/// Scale `web` to `replicas` and follow each new pod from Running to attached (polled
/// every 100 ms); the longest lag seen.
fn follow_scale_up(c: &Installed, node: &str, replicas: usize) -> Duration {
    let before: BTreeSet<String> = pods(c, "web").into_iter().map(|p| p.uid).collect();
    scale(c, "web", replicas);
    let (mut running_at, mut attached_at) = (BTreeMap::new(), BTreeMap::new());
    let t = Instant::now();
    loop {
        let now = Instant::now();
        for p in pods(c, "web").into_iter().filter(|p| p.running && !before.contains(&p.uid)) {
            running_at.entry(p.uid).or_insert(now);
        }
        for (uid, (links, reason)) in listed(c, node, "xdp-pods") {
            if !links.is_empty() && reason.is_empty() && running_at.contains_key(&uid) {
                attached_at.entry(uid).or_insert(now);
            }
        }
        if attached_at.len() == replicas - before.len() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "new pods: running {running_at:?}, attached {attached_at:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    attached_at.iter().map(|(uid, at)| at.duration_since(running_at[uid])).max().unwrap_or_default()
}

/// The scenario; `PODS_NS` exists (the chart's Role for it was installed in it).
pub fn programs_inside_pods(c: &Installed, node: &str, version: &str) {
    let object = repo_root().join("examples/bpf/build/xdp_pod_counter.o");
    c.kubectl(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "xdp-pod-counter-bytecode",
        &format!("--from-file={}", object.display()),
    ])
    .unwrap();
    // uprobe-counter-bytecode is step 2's.
    c.apply(&example("xdp-pods", version)).unwrap();
    c.apply(&example("uprobe-containers", version)).unwrap();
    for d in ["web", "ticker"] {
        c.kubectl(&["-n", PODS_NS, "rollout", "status", &format!("deployment/{d}"), "--timeout=180s"]).unwrap();
    }
    for p in ["xdp-pods", "uprobe-containers"] {
        wait_for(Duration::from_secs(60), format!("{p} attached in every pod"), || {
            all_attached(c, node, p, &running_uids(c, if p == "xdp-pods" { "web" } else { "ticker" }))
        });
    }
    let revision = c.program("xdp-pods").unwrap().unwrap()["status"]["revision"].clone();

    // In the kernel: each web pod's eth0 runs the program (bpftool inside its namespace),
    // and pings into each pod count under its own address.
    let xdp_prog = program_id(c, node, "xdp-pods");
    let by_ip = map_pin(c, node, "xdp-pods", "packets_by_ip");
    let web = pods(c, "web");
    for (i, p) in web.iter().enumerate() {
        assert_eq!(xdp_inside(&netns_of(&p.ip)), [xdp_prog], "bpftool inside pod {}", p.name);
        let key: Vec<u8> = p.ip.split('.').map(|o| o.parse().unwrap()).collect();
        let before = read_keyed_counter(&by_ip, &key).unwrap();
        let n = 3 + i as u64;
        sh(&format!("ping -c {n} -i 0.05 -W 1 -q {} >/dev/null", p.ip)).unwrap();
        let counted = read_keyed_counter(&by_ip, &key).unwrap() - before;
        assert!(counted >= n, "pod {} ({}): {counted} packets counted for {n} pings", p.name, p.ip);
    }
    eprintln!("step 2d: XDP inside {} web pods (bpftool inside each), pings counted per pod", web.len());

    // The uprobe counts the ticker inside its containers (10 calls a second each).
    let calls = map_pin(c, node, "uprobe-containers", "uprobe_count");
    let rate = |window: Duration| {
        let before = read_counter(&calls).unwrap();
        std::thread::sleep(window);
        read_counter(&calls).unwrap() - before
    };
    let counted = rate(Duration::from_secs(2));
    assert!(counted >= 20, "2 tickers, 2 s: {counted} calls of handle_request counted");

    pods_on_a_node_without_an_agent(c, node, version);

    // Scale up: each new pod attached soon after it runs, no new revision.
    let lag = follow_scale_up(c, node, 5);
    assert_eq!(c.program("xdp-pods").unwrap().unwrap()["status"]["revision"], revision, "pods are no revision");
    eprintln!("step 2d: scaled 3 -> 5: the new pods attached at most {lag:.1?} after Running (polled every 100 ms)");
    assert!(lag < Duration::from_secs(10), "new pods attached {lag:?} after Running");

    // Scale down: the gone pods' links and pins go; the others keep theirs.
    let all = listed(c, node, "xdp-pods");
    scale(c, "web", 1);
    let t = Instant::now();
    wait_for(Duration::from_secs(60), "web scaled down to 1", || {
        all_attached(c, node, "xdp-pods", &running_uids(c, "web"))
    });
    let kept = listed(c, node, "xdp-pods");
    assert_eq!(kept.len(), 1);
    for (uid, (links, _)) in &all {
        match kept.get(uid) {
            Some((same, _)) => assert_eq!(same, links, "the pod that stays keeps its link ids"),
            None => {
                assert!(links.iter().all(|l| !link_exists(*l)), "pod {uid}'s links {links:?} still in the kernel");
                assert!(pins_of_pod(uid).is_empty(), "pod {uid} left pins: {:?}", pins_of_pod(uid));
            }
        }
    }
    eprintln!("step 2d: scaled 5 -> 1 in {:.1?}: 4 pods' links and pins gone, the last one's unchanged", t.elapsed());

    // A container restarted in place: its probe goes with the old container (whose root
    // the runtime can then unmount) and a new one probes the new container.
    let victim = pods(c, "ticker").into_iter().find(|p| p.container.is_some()).unwrap();
    let (old_id, restarts) = victim.container.clone().unwrap();
    let old_links = listed(c, node, "uprobe-containers")[&victim.uid].0.clone();
    let pid = sh(&format!(
        "for p in $(pgrep -f /usr/local/bin/ticker); do grep -qs {old_id} /proc/$p/cgroup && echo $p; done; true"
    ))
    .unwrap();
    let pid = pid.split_whitespace().next().unwrap_or_else(|| panic!("no ticker process in container {old_id}"));
    sh(&format!("kill -9 {pid}")).unwrap();
    let t = Instant::now();
    wait_for(Duration::from_secs(90), "the ticker container restarted and probed again", || {
        let now = pods(c, "ticker").into_iter().find(|p| p.uid == victim.uid).ok_or("pod gone")?;
        let (id, n) = now.container.ok_or("not running")?;
        if id == old_id || n <= restarts {
            return Err(format!("container {id}, restarts {n}"));
        }
        let (links, reason) = listed(c, node, "uprobe-containers").get(&victim.uid).cloned().ok_or("not listed")?;
        (links.len() == old_links.len() && links.iter().all(|l| !old_links.contains(l)) && reason.is_empty())
            .then_some(())
            .ok_or(format!("links {links:?} (were {old_links:?}), reason {reason:?}"))
    });
    assert!(
        old_links.iter().all(|l| !link_exists(*l)),
        "the old container's probes {old_links:?} are still in the kernel"
    );
    wait_for(Duration::from_secs(30), "the old container's root unmounted", || {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        (!mounts.contains(&old_id)).then_some(()).ok_or_else(|| "still mounted".to_string())
    });
    let counted = rate(Duration::from_secs(2));
    assert!(counted >= 20, "after the restart: {counted} calls counted in 2 s");
    eprintln!(
        "step 2d: a ticker container restarted in place: probed again in {:.1?}, the old root unmounted",
        t.elapsed()
    );

    a_tenant_s_own_program(c, node);

    // Gone: programs, Deployments, namespace; nothing of them in the kernel or bpffs.
    let links: Vec<u64> = ["xdp-pods", "uprobe-containers"]
        .iter()
        .flat_map(|p| listed(c, node, p).into_values().flat_map(|(l, _)| l))
        .collect();
    let uprobe_prog = program_id(c, node, "uprobe-containers");
    c.kubectl(&["delete", "bpfprogram", "xdp-pods", "uprobe-containers", "--wait=true", "--timeout=60s"]).unwrap();
    wait_for(Duration::from_secs(30), "the programs' links gone", || {
        let left: Vec<&u64> = links.iter().filter(|l| link_exists(**l)).collect();
        left.is_empty().then_some(()).ok_or(format!("links {left:?}"))
    });
    for id in [xdp_prog, uprobe_prog] {
        assert!(!e2e::kernel::program_exists(id), "program {id} still loaded");
    }
    let left = sh("find /sys/fs/bpf/bpfleet -path '*/pods/*' 2>/dev/null").unwrap_or_default();
    assert!(left.trim().is_empty(), "pod pins left: {left}");
    // The namespace stays: the chart's Role for it goes with the release (step 5).
    c.kubectl(&["-n", PODS_NS, "delete", "deployment", "web", "ticker", "--wait=false"]).unwrap();
    eprintln!("step 2d: programs deleted: {} links and both programs gone from the kernel, no pod pins", links.len());
}

/// A selected pod on a node whose agent never starts (a Node object with a loopback
/// address nothing listens on, its pod's status written as Running, as no kubelet does
/// there): that node waits for its agent, counted apart; the program stays Ready on the
/// node that has one, its pods attached, nothing Stalled.
fn pods_on_a_node_without_an_agent(c: &Installed, node: &str, version: &str) {
    let away = "bpfe2e-podnode";
    c.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {away}\n  labels: {{kubernetes.io/os: linux}}\n\
         status:\n  addresses: [{{type: InternalIP, address: \"127.0.9.3\"}}]\n"
    ))
    .unwrap();
    let image = format!("{IMAGE_REPO}/bpfleet-example-ticker:{version}");
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-away, namespace: {PODS_NS}, labels: {{app: web}}}}\n\
         spec:\n  nodeName: {away}\n  containers: [{{name: web, image: \"{image}\"}}]\n"
    ))
    .unwrap();
    c.kubectl(&[
        "-n",
        PODS_NS,
        "patch",
        "pod",
        "web-away",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"127.0.9.4"}}"#,
    ])
    .unwrap();
    let running_here = running_uids(c, "web").len() as i64 - 1;
    wait_for(Duration::from_secs(60), "xdp-pods: the pod without an agent counted apart", || {
        let p = c.program("xdp-pods").map_err(|e| e.to_string())?.ok_or("absent")?;
        let st = &p["status"];
        let n = |v: &Value| v.as_i64().unwrap_or(0);
        let got = [
            n(&st["targetPods"]),
            n(&st["readyPods"]),
            n(&st["failedPods"]),
            n(&st["rollout"]["waitingForAgentNodes"]),
        ];
        let stalled =
            st["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Stalled" && c["status"] == "True");
        (got == [running_here + 1, running_here, 0, 1] && !stalled)
            .then_some(())
            .ok_or(format!("target/ready/failed pods, waiting nodes {got:?}; stalled {stalled}"))
    });
    let here: BTreeSet<String> =
        pods(c, "web").into_iter().filter(|p| p.running && p.name != "web-away").map(|p| p.uid).collect();
    all_attached(c, node, "xdp-pods", &here).unwrap();
    c.kubectl(&["-n", PODS_NS, "delete", "pod", "web-away", "--grace-period=0", "--force"]).unwrap();
    c.kubectl(&["delete", "node", away]).unwrap();
    wait_for(Duration::from_secs(60), "xdp-pods: no node waiting once the pod is gone", || {
        let p = c.program("xdp-pods").map_err(|e| e.to_string())?.ok_or("absent")?;
        let waiting = p["status"]["rollout"]["waitingForAgentNodes"].as_i64().unwrap_or(0);
        (waiting == 0).then_some(()).ok_or(format!("{waiting} waiting"))
    });
    eprintln!("step 2d: a selected pod on a node without an agent: that node waits, counted apart; nothing Stalled");
}

/// A BpfNamespacedProgram written in the pods' namespace: TC inside the ticker pods from a
/// ConfigMap of that namespace, run through the operator's mirror BpfProgram, its status
/// the tenant's; one naming another namespace's ConfigMap is refused at `kubectl apply`;
/// deleting it takes the mirror and every link with it.
fn a_tenant_s_own_program(c: &Installed, node: &str) {
    let object = repo_root().join("examples/bpf/build/tc_counter.o");
    c.kubectl(&["-n", PODS_NS, "create", "configmap", "tenant-tc", &format!("--from-file={}", object.display())])
        .unwrap();
    let tenant = |name: &str, cm_namespace: &str| {
        format!(
            "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfNamespacedProgram\nmetadata: {{name: {name}, namespace: {PODS_NS}}}\n\
             spec:\n  bytecode:\n    configMap: {{name: tenant-tc, namespace: {cm_namespace}, key: tc_counter.o}}\n  programs:\n    \
             - {{name: count_tc, type: TC, tc: {{direction: Ingress, pods: {{namespace: {PODS_NS}, selector: {{matchLabels: {{app: ticker}}}}}}}}}}\n"
        )
    };
    // Another namespace's ConfigMap: refused when written (the webhook or the policy).
    let refused = c.apply(&tenant("tenant-elsewhere", NAMESPACE)).unwrap_err().to_string();
    assert!(refused.contains("reads ConfigMaps of its own namespace only"), "{refused}");

    let t = Instant::now();
    c.apply(&tenant("tenant-tc", PODS_NS)).unwrap();
    let mirror = format!("{PODS_NS}.tenant-tc");
    let tickers = running_uids(c, "ticker");
    wait_for(Duration::from_secs(60), "the tenant's program Ready in every ticker pod", || {
        let v =
            c.kubectl_json(&["-n", PODS_NS, "get", "bpfnamespacedprogram", "tenant-tc"]).map_err(|e| e.to_string())?;
        let st = &v["status"];
        let ready =
            st["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
        let current = st["observedGeneration"] == v["metadata"]["generation"];
        (ready && current && st["readyPods"].as_i64() == Some(tickers.len() as i64))
            .then_some(())
            .ok_or(format!("status {st}"))
    });
    let m = c.program(&mirror).unwrap().expect("the mirror BpfProgram");
    assert_eq!(m["metadata"]["labels"]["bpfleet.dev/tenant-namespace"], PODS_NS);
    all_attached(c, node, &mirror, &tickers).unwrap();
    let links: Vec<u64> = listed(c, node, &mirror).into_values().flat_map(|(l, _)| l).collect();
    let prog = program_id(c, node, &mirror);
    // TCX links (this bpftool's `net show` lists no TCX): each in the kernel, running it.
    let kernel_links = e2e::kernel::links().unwrap();
    assert_eq!(links.len(), tickers.len(), "one link a pod: {links:?}");
    for l in &links {
        assert!(kernel_links.contains(&(*l, prog)), "link {l} running program {prog}: {kernel_links:?}");
    }
    let counter = map_pin(c, node, &mirror, "tc_packet_count");
    let before = read_counter(&counter).unwrap();
    let ip = pods(c, "ticker")[0].ip.clone();
    sh(&format!("ping -c 4 -i 0.05 -W 1 -q {ip} >/dev/null")).unwrap();
    assert!(read_counter(&counter).unwrap() >= before + 4, "the tenant's TC counts pings into its pod");
    eprintln!(
        "step 2d: a tenant's BpfNamespacedProgram Ready in {:.1?} (TC in {} pods, its own ConfigMap); another namespace's ConfigMap refused at apply",
        t.elapsed(),
        tickers.len()
    );

    c.kubectl(&["-n", PODS_NS, "delete", "bpfnamespacedprogram", "tenant-tc", "--wait=true", "--timeout=60s"]).unwrap();
    assert!(c.program(&mirror).unwrap().is_none(), "the mirror outlived its program");
    assert!(links.iter().all(|l| !link_exists(*l)), "the tenant's links {links:?} are still in the kernel");
    assert!(!e2e::kernel::program_exists(prog), "the tenant's program {prog} is still loaded");
}
