//! Programs inside pods through a real agent process: the operator's Apply names pods by
//! uid, a fake container runtime (a real CRI server on a socket) says where each pod's
//! network namespace is (namespaces the test makes with `ip netns`, each with its `eth0`),
//! and the agent attaches in them. What is attached is read from the kernel: bpftool inside
//! each namespace (`nsenter --net`), bpftool's link and program lists, bpffs, and counters
//! that traffic into the pods moves.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use common::fake_cri::FakeCri;
use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use serde_json::Value;
use tonic::transport::Channel;

static POD: AtomicU32 = AtomicU32::new(0);

/// A pod as the kernel and the fake runtime see it: a network namespace at
/// `/run/netns/NAME` whose `eth0` is one end of a veth pair (the other, `outside`, on the
/// host), registered with the runtime under a uid.
struct Pod {
    uid: String,
    name: String,
    ns: String,
    outside: String,
    pod_ip: String,
}

impl Pod {
    /// A pod with an address (`ping` reaches it) or without (quicker to make by the hundred).
    fn new(cri: &FakeCri, addressed: bool) -> Self {
        let n = POD.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let (ns, outside) = (format!("bfpd{}x{n}", pid % 100_000), format!("bfpo{}x{n}", pid % 100_000));
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", pid, n);
        let (o2, o3, o4) = (64 + pid % 64, n / 64, (n % 64) * 4);
        let (host_ip, pod_ip) = (format!("100.{o2}.{o3}.{}", o4 + 1), format!("100.{o2}.{o3}.{}", o4 + 2));
        // No IPv6 on the host's end: its own chatter (DAD, router and multicast listener
        // messages) would enter the pod and count in the map the pods share.
        let mut cmd = format!(
            "ip netns add {ns} && ip link add {outside} type veth peer name eth0 netns {ns} && \
             sysctl -qw net.ipv6.conf.{outside}.disable_ipv6=1 && \
             ip link set {outside} up && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"
        );
        if addressed {
            cmd.push_str(&format!(
                " && ip addr add {host_ip}/30 dev {outside} && ip -n {ns} addr add {pod_ip}/30 dev eth0"
            ));
        }
        sh(&cmd);
        let name = format!("web-{n}");
        cri.add(&uid, "shop", &name, &Self::netns_path(&ns));
        Self { uid, name, ns, outside, pod_ip }
    }

    /// The pod's sandbox made again, as the kubelet does when it was killed: a new network
    /// namespace (and `eth0`) for the same pod uid, the old one gone.
    fn new_sandbox(&mut self, cri: &FakeCri) {
        let n = POD.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 100_000;
        let (ns, outside) = (format!("bfpd{pid}x{n}"), format!("bfpo{pid}x{n}"));
        sh(&format!(
            "ip netns del {old} && ip netns add {ns} && ip link add {outside} type veth peer name eth0 netns {ns} && \
             sysctl -qw net.ipv6.conf.{outside}.disable_ipv6=1 && ip link set {outside} up && \
             ip -n {ns} link set eth0 up",
            old = self.ns
        ));
        let _ = sh_ok(&format!("ip link del {} 2>/dev/null", self.outside));
        (self.ns, self.outside) = (ns, outside);
        cri.add(&self.uid, "shop", &self.name, &Self::netns_path(&self.ns));
    }

    fn netns_path(ns: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{ns}"))
    }

    fn wire(&self, programs: &[&str]) -> v1::Pod {
        v1::Pod {
            uid: self.uid.clone(),
            namespace: "shop".into(),
            name: self.name.clone(),
            programs: programs.iter().map(|p| p.to_string()).collect(),
            containers: vec![],
        }
    }

    /// `n` pings from the host into the pod: each enters the pod's eth0 once.
    fn ping(&self, n: u32) {
        sh(&format!("ping -c {n} -i 0.01 -W 1 -q -I {} {} >/dev/null", self.outside, self.pod_ip));
    }

    /// `bpftool net show` inside the pod: the XDP program ids on its eth0.
    fn xdp_inside(&self) -> Vec<u64> {
        let net = net_show(&format!("nsenter --net={} ", Self::netns_path(&self.ns).display()));
        on_eth0(&net, "xdp")
    }

    /// The TC (clsact) program ids on the pod's eth0.
    fn tc_inside(&self) -> Vec<u64> {
        let net = net_show(&format!("nsenter --net={} ", Self::netns_path(&self.ns).display()));
        on_eth0(&net, "tc")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = sh_ok(&format!("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", self.outside, self.ns));
    }
}

/// `bpftool -j net show` after `prefix` (empty: the host's namespace).
fn net_show(prefix: &str) -> Value {
    let out = sh(&format!("{prefix}bpftool -j net show"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    v[0].clone()
}

fn on_eth0(net: &Value, section: &str) -> Vec<u64> {
    net[section]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["devname"] == "eth0")
        .filter_map(|e| e["id"].as_u64())
        .collect()
}

/// Every program id attached to any interface of the host's namespace, XDP or TC.
fn host_attached() -> Vec<u64> {
    let net = net_show("");
    ["xdp", "tc"]
        .iter()
        .flat_map(|s| net[*s].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["id"].as_u64())
        .collect()
}

/// The program a kernel link runs, if the link exists.
fn link_prog(id: u32) -> Option<u64> {
    let out =
        std::process::Command::new("bpftool").args(["-j", "link", "show", "id", &id.to_string()]).output().ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok().filter(|_| out.status.success())?;
    v["prog_id"].as_u64()
}

const XDP_IN_PODS: &str = "  - {name: count_packets, type: XDP, xdp: {mode: Auto, pods: {namespace: shop}}}\n";

fn tc_in_pods(priority: u16) -> String {
    format!(
        "  - {{name: count_tc, type: TC, tc: {{direction: Ingress, priority: {priority}, pods: {{namespace: shop, \
         interfaces: [eth0]}}}}}}\n"
    )
}

fn request(owner: &str, programs_yaml: &str, object: &str, pods: &[&Pod], program: &str) -> v1::ApplyRequest {
    let mut req = apply_request(owner, programs_yaml, object);
    req.pods = pods.iter().map(|p| p.wire(&[program])).collect();
    req
}

async fn apply(client: &mut AgentClient<Channel>, req: &v1::ApplyRequest) -> (v1::OwnerState, bool) {
    let r = client.apply(req.clone()).await.unwrap_or_else(|e| panic!("apply: {e:?}")).into_inner();
    (r.state.expect("a state"), r.changed)
}

async fn list(client: &mut AgentClient<Channel>) -> v1::ListResponse {
    client.list(v1::ListRequest::default()).await.expect("list").into_inner()
}

async fn remove(client: &mut AgentClient<Channel>, uid: &str) {
    let req = v1::RemoveRequest {
        owner: Some(v1::Owner { uid: uid.into(), name: String::new() }),
        epoch: 0,
        node_name: String::new(),
    };
    assert!(client.remove(req).await.unwrap().into_inner().removed);
}

fn pod_state<'a>(state: &'a v1::OwnerState, pod: &Pod) -> &'a v1::PodState {
    state.pods.iter().find(|p| p.uid == pod.uid).unwrap_or_else(|| panic!("no pod {} in {:?}", pod.uid, state.pods))
}

/// The one link id of a pod that is attached, checked to be so.
fn attached_link(state: &v1::OwnerState, pod: &Pod) -> u32 {
    let p = pod_state(state, pod);
    assert_eq!((p.reason.as_str(), p.message.as_str()), ("", ""), "{p:?}");
    assert_eq!(p.link_ids.len(), 1, "{p:?}");
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("shop", pod.name.as_str()));
    p.link_ids[0]
}

fn pod_dir(dirs: &Dirs, owner: &str, revision: &str, pod: &Pod) -> PathBuf {
    dirs.root.join(owner).join(revision).join("pods").join(&pod.uid)
}

fn spawn(dirs: &Dirs, cri: &FakeCri, extra: &[&str]) -> AgentProc {
    let mut args = vec!["--cri-socket", path_str(cri.socket())];
    args.extend_from_slice(extra);
    AgentProc::spawn_tls_with(dirs, &args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xdp_counter_follows_the_pod_set_and_survives_a_restart() {
    let dirs = Dirs::new("pods");
    let cri = FakeCri::start();
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new(&cri, true)).collect();
    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;

    // Three pods: loaded once, attached in each pod's namespace, nothing on the node.
    let all = request("in-pods", XDP_IN_PODS, "xdp_counter.o", &pods.iter().collect::<Vec<_>>(), "count_packets");
    let (state, changed) = apply(&mut client, &all).await;
    assert!(changed);
    assert_eq!(state.health, v1::Health::Healthy as i32, "{state:?}");
    let prog = state.attached[0].program_id;
    assert!(state.attached[0].link_ids.is_empty(), "no link on the node: {state:?}");
    let links: Vec<u32> = pods.iter().map(|p| attached_link(&state, p)).collect();
    for (pod, link) in pods.iter().zip(&links) {
        assert_eq!(pod.xdp_inside(), [u64::from(prog)], "bpftool inside {}", pod.ns);
        assert_eq!(link_prog(*link), Some(u64::from(prog)));
        assert!(pod_dir(&dirs, "in-pods", &all.revision, pod).join("count_packets/0").exists());
    }
    assert!(!host_attached().contains(&u64::from(prog)), "the node's interfaces have nothing: {:?}", host_attached());

    // Traffic into a pod is counted, in the revision's one map that every pod shares.
    let counter = map_pin(&state, "packet_count");
    let before = read_counter(&counter);
    pods[0].ping(5);
    pods[2].ping(5);
    assert!(read_counter(&counter) >= before + 10, "counted {}", read_counter(&counter) - before);

    let digest_of_three = list(&mut client).await.digest;

    // The same revision without pod 0: it is detached and unpinned, the others keep their
    // links, nothing is reloaded.
    let mut watch = client.watch(v1::WatchRequest::default()).await.unwrap().into_inner();
    let current = watch.message().await.unwrap().unwrap();
    assert_eq!(current.state.unwrap().pods.len(), 3, "Watch starts with the pods as they are");
    let two = request("in-pods", XDP_IN_PODS, "xdp_counter.o", &[&pods[1], &pods[2]], "count_packets");
    assert_eq!(two.revision, all.revision, "the pod set is no part of the revision");
    let (state, changed) = apply(&mut client, &two).await;
    let event = watch.message().await.unwrap().unwrap();
    assert_eq!((event.kind, event.reason.as_str()), (v1::watch_event::Kind::Updated as i32, "pods changed"));
    assert_eq!(event.state.unwrap().pods, state.pods, "Watch tells the pods as they are now");
    drop(watch);
    assert!(changed, "a pod went");
    assert_eq!(state.attached[0].program_id, prog, "not reloaded");
    assert_eq!(state.pods.len(), 2, "{state:?}");
    assert_eq!([attached_link(&state, &pods[1]), attached_link(&state, &pods[2])], [links[1], links[2]]);
    assert!(pods[0].xdp_inside().is_empty(), "still attached in the pod that went");
    assert!(link_gone(links[0]), "link {} still in the kernel", links[0]);
    assert!(!pod_dir(&dirs, "in-pods", &all.revision, &pods[0]).exists(), "{:?}", pins_under(&dirs.root));
    let before = read_counter(&counter);
    pods[0].ping(3);
    assert_eq!(read_counter(&counter), before, "the pod that went is not counted");

    // Again the same: nothing changes, and the runtime is not even asked.
    let calls = cri.calls();
    let (again, changed) = apply(&mut client, &two).await;
    assert!(!changed);
    assert_eq!(again.pods, state.pods);
    assert_eq!(cri.calls(), calls, "a no-op asks the runtime nothing");

    // List reports the pods, and its digest moved with them.
    let l = list(&mut client).await;
    assert_ne!(l.digest, digest_of_three, "the operator's unchanged-digest path must see a pod go");
    assert_eq!(l.owners[0].pods, state.pods);
    assert_eq!(l.digest, proto::NodeDigest::of_states(&l.owners), "the operator computes the same digest");

    // kill -9: the pods keep their programs; a new agent adopts them, same link ids.
    drop(client);
    agent.kill9();
    let before = read_counter(&counter);
    pods[1].ping(4);
    assert!(read_counter(&counter) >= before + 4, "counting stopped with the agent");
    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let l = list(&mut client).await;
    assert_eq!(l.owners.len(), 1, "{l:?}");
    assert_eq!(l.owners[0].pods, state.pods, "adopted as they were");
    assert_eq!(l.digest, proto::NodeDigest::of_states(&l.owners));
    let (adopted, changed) = apply(&mut client, &two).await;
    assert!(!changed, "adopted, not attached again: {adopted:?}");
    assert_eq!([attached_link(&adopted, &pods[1]), attached_link(&adopted, &pods[2])], [links[1], links[2]]);

    // Remove: nothing of it in bpffs, in the pods or in the kernel.
    remove(&mut client, "in-pods").await;
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    for (pod, link) in pods.iter().zip(&links).skip(1) {
        assert!(pod.xdp_inside().is_empty(), "still attached in {}", pod.ns);
        assert!(link_gone(*link));
    }
    assert!(program_gone(prog), "program {prog} still loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_are_gone_or_lack_the_interface_fail_alone() {
    let dirs = Dirs::new("podfail");
    let cri = FakeCri::start();
    let ok = Pod::new(&cri, false);
    // The runtime still names it, but its namespace is gone: the pod died meanwhile.
    let died = Pod::new(&cri, false);
    sh(&format!("ip netns del {}", died.ns));
    // Running, but without the interface the program names.
    let bare = Pod::new(&cri, false);
    sh(&format!("ip -n {} link del eth0", bare.ns));
    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;

    let mut req = request("fails", XDP_IN_PODS, "xdp_counter.o", &[&ok, &died, &bare], "count_packets");
    // Never started on this node: the runtime has no sandbox for it.
    let unknown = v1::Pod {
        uid: "0badc0de-0000-4000-8000-000000000000".into(),
        namespace: "shop".into(),
        name: "web-elsewhere".into(),
        programs: vec!["count_packets".into()],
        containers: vec![],
    };
    req.pods.push(unknown.clone());
    // A pod naming a program that does not attach inside pods is a bad request, said so.
    let mut bad = req.clone();
    bad.pods[0].programs = vec!["count_tc".into()];
    let e = client.apply(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.metadata().get("bpfleet-reason").unwrap(), "InvalidSpec");
    assert!(
        e.message().starts_with(&format!("pods[0] (shop/{}): program \"count_tc\" is not one of", ok.name)),
        "{e:?}"
    );
    let (state, changed) = apply(&mut client, &req).await;
    assert!(changed);
    assert_eq!(state.health, v1::Health::Healthy as i32, "pod failures are the pods': {state:?}");
    assert_eq!(state.last_error, "");
    let prog = state.attached[0].program_id;
    attached_link(&state, &ok);
    assert_eq!(ok.xdp_inside(), [u64::from(prog)]);

    let gone = pod_state(&state, &died);
    assert_eq!(gone.reason, "TargetNotFound", "{gone:?}");
    assert_eq!(
        gone.message,
        format!(
            "the network namespace /run/netns/{} (pod shop/{}) no longer exists: the pod or container stopped",
            died.ns, died.name
        )
    );
    assert!(gone.link_ids.is_empty());
    let missing = pod_state(&state, &bare);
    assert_eq!(missing.reason, "InterfaceNotFound", "{missing:?}");
    assert_eq!(
        missing.message,
        format!("interface eth0 not found in the network namespace /run/netns/{} (pod shop/{})", bare.ns, bare.name)
    );
    let elsewhere = state.pods.iter().find(|p| p.uid == unknown.uid).unwrap();
    assert_eq!(elsewhere.reason, "TargetNotFound");
    assert!(elsewhere.message.contains("has no sandbox on this node"), "{elsewhere:?}");
    // Nothing of the failed pods in bpffs.
    for pod in [&died, &bare] {
        assert!(!pod_dir(&dirs, "fails", &req.revision, pod).exists(), "{:?}", pins_under(&dirs.root));
    }

    // The interface shows up: the same Apply attaches there now, and says it changed.
    sh(&format!(
        "ip link add {o} type veth peer name eth0 netns {ns} && sysctl -qw net.ipv6.conf.{o}.disable_ipv6=1 && \
         ip link set {o} up && ip -n {ns} link set eth0 up",
        o = bare.outside,
        ns = bare.ns
    ));
    let (state, changed) = apply(&mut client, &req).await;
    assert!(changed);
    attached_link(&state, &bare);
    assert_eq!(bare.xdp_inside(), [u64::from(prog)]);
    // Still failing the same way: no change.
    let (_, changed) = apply(&mut client, &req).await;
    assert!(!changed, "the same failures again are no change");

    remove(&mut client, "fails").await;
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    assert!(ok.xdp_inside().is_empty() && bare.xdp_inside().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_takes_over_every_pod_and_leaves_nothing_of_the_old() {
    let dirs = Dirs::new("podrev");
    let cri = FakeCri::start();
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new(&cri, true)).collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;

    let v1_req = request("rev", XDP_IN_PODS, "xdp_counter.o", &refs, "count_packets");
    let (s1, _) = apply(&mut client, &v1_req).await;
    let old_prog = s1.attached[0].program_id;
    let links: Vec<u32> = pods.iter().map(|p| attached_link(&s1, p)).collect();

    // xdp_counter_v2 counts two per packet.
    let v2_req = request("rev", XDP_IN_PODS, "xdp_counter_v2.o", &refs, "count_packets");
    assert_ne!(v1_req.revision, v2_req.revision);
    let (s2, changed) = apply(&mut client, &v2_req).await;
    assert!(changed);
    let new_prog = s2.attached[0].program_id;
    assert_ne!(new_prog, old_prog);
    for (pod, link) in pods.iter().zip(&links) {
        // The pod's link was switched in place (no moment without a program): same id.
        assert_eq!(attached_link(&s2, pod), *link);
        assert_eq!(link_prog(*link), Some(u64::from(new_prog)));
        assert_eq!(pod.xdp_inside(), [u64::from(new_prog)]);
    }
    assert!(program_gone(old_prog), "the old revision's program is still loaded");
    assert!(!dirs.root.join("rev").join(&v1_req.revision).exists(), "{:?}", pins_under(&dirs.root));
    let counter = map_pin(&s2, "packet_count");
    let before = read_counter(&counter);
    pods[1].ping(5);
    let n = read_counter(&counter) - before;
    assert!((10..20).contains(&n), "v2 counts +2 per packet, got {n} for 5");

    remove(&mut client, "rev").await;
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    assert!(pods.iter().all(|p| p.xdp_inside().is_empty()));
}

/// The agent follows a pod's end and a pod's new sandbox on its own, within seconds and
/// without an Apply: dead links go (nothing left of them), the pod is looked up again and
/// attached in its new namespace, or reported gone; Watch says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_stop_or_get_a_new_sandbox_are_followed_without_an_apply() {
    let dirs = Dirs::new("podchurn");
    let cri = FakeCri::start();
    let stops = Pod::new(&cri, false);
    let mut restarts = Pod::new(&cri, false);
    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let req = request("churn", XDP_IN_PODS, "xdp_counter.o", &[&stops, &restarts], "count_packets");
    let (state, _) = apply(&mut client, &req).await;
    let prog = u64::from(state.attached[0].program_id);
    let (stop_link, old_link) = (attached_link(&state, &stops), attached_link(&state, &restarts));
    let mut watch = client.watch(v1::WatchRequest::default()).await.unwrap().into_inner();
    watch.message().await.unwrap().unwrap();

    // One pod ends (the runtime forgets it), the other's sandbox is made again.
    sh(&format!("ip netns del {}", stops.ns));
    restarts.new_sandbox(&cri);
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        let l = list(&mut client).await;
        let pods = l.owners[0].pods.clone();
        let done = pods.iter().any(|p| p.uid == stops.uid && p.reason == "TargetNotFound")
            && pods.iter().any(|p| p.uid == restarts.uid && p.reason.is_empty() && p.link_ids != [old_link]);
        if done {
            seen = pods;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!seen.is_empty(), "not followed within 10 s: {:?}", list(&mut client).await.owners[0].pods);
    eprintln!("a pod's end and a new sandbox followed in {:?}", started.elapsed());
    let stopped = seen.iter().find(|p| p.uid == stops.uid).unwrap();
    assert!(stopped.link_ids.is_empty(), "{stopped:?}");
    assert!(link_gone(stop_link) && link_gone(old_link), "dead links left in the kernel");
    assert!(!pod_dir(&dirs, "churn", &req.revision, &stops).exists(), "{:?}", pins_under(&dirs.root));
    assert_eq!(restarts.xdp_inside(), [prog], "attached in the new sandbox");
    let event = watch.message().await.unwrap().unwrap();
    assert_eq!(event.reason, "pod links died: attached again or released");

    remove(&mut client, "churn").await;
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
}

/// An Apply that dies after attaching in a new pod but before recording it: the next
/// agent removes what no record claims, and the pods it recorded keep their links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_links_no_record_claims_are_removed_at_start() {
    let dirs = Dirs::new("podcrash");
    let cri = FakeCri::start();
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new(&cri, false)).collect();
    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let one = request("crash", XDP_IN_PODS, "xdp_counter.o", &[&pods[0]], "count_packets");
    let (state, _) = apply(&mut client, &one).await;
    let kept = attached_link(&state, &pods[0]);
    drop(client);
    agent.kill9();

    let mut faulty = AgentProc::spawn_tls_with(
        &dirs,
        &["--cri-socket", path_str(cri.socket())],
        &[("BPFLEET_FAULT", "pods-after-attach")],
    );
    let mut client = faulty.ready_client(dirs.client_tls()).await;
    let both = request("crash", XDP_IN_PODS, "xdp_counter.o", &[&pods[0], &pods[1]], "count_packets");
    client.apply(both.clone()).await.expect_err("the agent dies after attaching in the new pod");
    assert!(!faulty.wait_exit(10).success());
    drop(client);
    let prog = u64::from(state.attached[0].program_id);
    assert_eq!(pods[1].xdp_inside(), [prog], "attached, not recorded");
    assert!(pod_dir(&dirs, "crash", &both.revision, &pods[1]).exists());

    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    assert!(pods[1].xdp_inside().is_empty(), "a link no record claims is left in the pod");
    assert!(!pod_dir(&dirs, "crash", &both.revision, &pods[1]).exists(), "{:?}", pins_under(&dirs.root));
    let l = list(&mut client).await;
    assert_eq!(l.owners[0].pods.len(), 1);
    assert_eq!(attached_link(&l.owners[0], &pods[0]), kept, "the recorded pod keeps its link");
    assert_eq!(pods[0].xdp_inside(), [prog]);
    // The operator's next Apply attaches it again.
    let (state, changed) = apply(&mut client, &both).await;
    assert!(changed);
    attached_link(&state, &pods[1]);
    remove(&mut client, "crash").await;
    assert!(pins_under(&dirs.root).is_empty());
}

/// TC inside pods through both mechanisms: TCX links (pinned, shown by bpftool's link
/// list) and clsact filters (shown by `bpftool net` inside the pod, removed by entering it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tc_counters_attach_in_pods_with_tcx_and_clsact() {
    for backend in ["tcx", "clsact"] {
        let dirs = Dirs::new(&format!("podtc{backend}"));
        let cri = FakeCri::start();
        let pods: Vec<Pod> = (0..2).map(|_| Pod::new(&cri, true)).collect();
        let mut agent = spawn(&dirs, &cri, &["--tc-backend", backend]);
        let mut client = agent.ready_client(dirs.client_tls()).await;
        let req = request("tc", &tc_in_pods(10), "tc_counter.o", &pods.iter().collect::<Vec<_>>(), "count_tc");
        let (state, _) = apply(&mut client, &req).await;
        let prog = u64::from(state.attached[0].program_id);
        for pod in &pods {
            let p = pod_state(&state, pod);
            assert_eq!(p.reason, "", "{backend}: {p:?}");
            match backend {
                "tcx" => assert_eq!(link_prog(p.link_ids[0]), Some(prog), "{backend}"),
                _ => assert_eq!(pod.tc_inside(), [prog], "{backend}: bpftool inside {}", pod.ns),
            }
        }
        assert!(!host_attached().contains(&prog), "{backend}: nothing on the node");
        let counter = map_pin(&state, "tc_packet_count");
        let before = read_counter(&counter);
        pods[0].ping(4);
        assert!(read_counter(&counter) >= before + 4, "{backend}: counted {}", read_counter(&counter) - before);

        // One pod fewer: its hook is free again, the other's stays.
        let one = request("tc", &tc_in_pods(10), "tc_counter.o", &[&pods[1]], "count_tc");
        let (after, changed) = apply(&mut client, &one).await;
        assert!(changed);
        assert_eq!(after.pods.len(), 1);
        if backend == "clsact" {
            assert!(pods[0].tc_inside().is_empty(), "clsact filter left in the pod that went");
            assert_eq!(pods[1].tc_inside(), [prog]);
        } else {
            assert!(link_gone(pod_state(&state, &pods[0]).link_ids[0]));
        }
        let before = read_counter(&counter);
        pods[0].ping(3);
        assert_eq!(read_counter(&counter), before, "{backend}: the pod that went is not counted");

        // A new revision at another priority cannot take the hook over: attached at its
        // place, then the old one goes; nothing of the old revision stays in the pod.
        let moved = request("tc", &tc_in_pods(20), "tc_counter.o", &[&pods[1]], "count_tc");
        assert_ne!(moved.revision, one.revision);
        let (state, changed) = apply(&mut client, &moved).await;
        assert!(changed);
        let new_prog = u64::from(state.attached[0].program_id);
        let p = pod_state(&state, &pods[1]);
        assert_eq!((p.reason.as_str(), p.link_ids.len()), ("", 1), "{backend}: {p:?}");
        match backend {
            "tcx" => {
                assert_eq!(link_prog(p.link_ids[0]), Some(new_prog));
                assert!(link_gone(pod_state(&after, &pods[1]).link_ids[0]), "the old revision's link stays");
            }
            _ => assert_eq!(pods[1].tc_inside(), [new_prog], "{backend}: one filter, the new revision's"),
        }
        assert!(program_gone(prog as u32), "{backend}: the old revision's program is still loaded");
        let before = read_counter(&counter);
        pods[1].ping(3);
        let n = read_counter(&counter) - before;
        assert!((3..6).contains(&n), "{backend}: counted once per packet, got {n} for 3");

        remove(&mut client, "tc").await;
        assert!(pins_under(&dirs.root).is_empty(), "{backend}: left in bpffs: {:?}", pins_under(&dirs.root));
        assert!(pods[1].tc_inside().is_empty(), "{backend}: left in the pod");
        assert!(program_gone(new_prog as u32), "{backend}: program still loaded");
    }
}

/// A node with 200 selected pods: all attached in one Apply, then a quarter of them
/// replaced by new pods in the next (the figures for docs/benchmarks.md; no bound asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pods_and_a_quarter_of_them_replaced() {
    let dirs = Dirs::new("pods200");
    let cri = FakeCri::start();
    let made = Instant::now();
    let pods: Vec<Pod> = (0..250).map(|_| Pod::new(&cri, false)).collect();
    eprintln!("250 pod namespaces made in {:?}", made.elapsed());
    let mut agent = spawn(&dirs, &cri, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let first: Vec<&Pod> = pods[..200].iter().collect();
    let req = request("pods200", XDP_IN_PODS, "xdp_counter.o", &first, "count_packets");
    let started = Instant::now();
    let (state, _) = apply(&mut client, &req).await;
    let took = started.elapsed();
    println!("BENCH pods_per_apply=200 apply_seconds={:.3}", took.as_secs_f64());
    eprintln!("200 pods attached in one Apply in {took:?}");
    let prog = u64::from(state.attached[0].program_id);
    let links: Vec<u32> = first.iter().map(|p| attached_link(&state, p)).collect();
    for pod in pods[..200].iter().step_by(17) {
        assert_eq!(pod.xdp_inside(), [prog], "{}", pod.ns);
    }

    // Churn: 50 pods go, 50 new ones come; the 150 that stay keep their links.
    let next: Vec<&Pod> = pods[50..].iter().collect();
    let req = request("pods200", XDP_IN_PODS, "xdp_counter.o", &next, "count_packets");
    let started = Instant::now();
    let (state, changed) = apply(&mut client, &req).await;
    let took = started.elapsed();
    assert!(changed);
    println!("BENCH pods_replaced=50 of=200 apply_seconds={:.3}", took.as_secs_f64());
    eprintln!("50 of 200 pods replaced in one Apply in {took:?}");
    assert_eq!(state.pods.len(), 200);
    for (pod, link) in pods[50..200].iter().zip(&links[50..]) {
        assert_eq!(attached_link(&state, pod), *link, "pod {} kept its link", pod.ns);
    }
    assert!(links[..50].iter().all(|l| link_gone(*l)), "the gone pods' links are still in the kernel");
    for pod in &pods[..50] {
        assert!(pod.xdp_inside().is_empty(), "still attached in {}", pod.ns);
    }
    let fresh: Vec<u32> = pods[200..].iter().map(|p| attached_link(&state, p)).collect();

    let started = Instant::now();
    remove(&mut client, "pods200").await;
    eprintln!("removed from 200 pods in {:?}", started.elapsed());
    assert!(pins_under(&dirs.root).is_empty());
    assert!(links.iter().chain(&fresh).all(|l| link_gone(*l)));
}
