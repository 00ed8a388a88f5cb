//! Uprobes on a binary inside pods' containers through a real agent process: the Apply
//! names pods by uid with their containers, a fake container runtime (a real CRI server on
//! a socket) says which containers run and where each one's root file system is (a
//! directory the test made, holding a copy of the probed binary), and the agent probes the
//! binary inside each root. What is probed is read from the kernel: calls of each
//! container's copy counted, the host's copy not; link ids from bpftool; bpffs after a
//! container stops, restarts, and the program goes.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fake_cri::FakeCri;
use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

/// A pod of one container, `app`, whose root holds `/bin/app`: a copy of uprobe_target.
struct ContainerPod {
    uid: String,
    name: String,
    dir: tempfile::TempDir,
}

impl ContainerPod {
    fn new(cri: &FakeCri, n: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uid = format!("{:08x}-0000-4000-9000-{n:012x}", std::process::id());
        let pod = Self { uid, name: format!("app-{n}"), dir };
        pod.start(cri, 0);
        cri.add(&pod.uid, "shop", &pod.name, Path::new("/run/netns/none"));
        pod
    }

    /// Attempt `attempt` of the container: a fresh root, as a restarted container has.
    fn start(&self, cri: &FakeCri, attempt: u32) {
        let root = self.root(attempt);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(object("uprobe_target"), root.join("bin/app")).unwrap();
        cri.run_container(&self.uid, "app", &self.container_id(attempt), &root);
    }

    fn root(&self, attempt: u32) -> PathBuf {
        self.dir.path().join(format!("rootfs-{attempt}"))
    }

    fn container_id(&self, attempt: u32) -> String {
        format!("c{}-{attempt}", self.uid)
    }

    fn wire(&self) -> v1::Pod {
        v1::Pod {
            uid: self.uid.clone(),
            namespace: "shop".into(),
            name: self.name.clone(),
            programs: vec!["count_calls".into()],
            containers: vec!["app".into()],
        }
    }

    /// Run the container's copy of the binary, calling the probed function `n` times.
    fn call(&self, attempt: u32, n: u32) {
        run(&self.root(attempt).join("bin/app"), n);
    }
}

fn run(binary: &Path, n: u32) {
    let out = std::process::Command::new(binary).arg(n.to_string()).output().unwrap();
    assert!(out.status.success(), "{}: {out:?}", binary.display());
}

const IN_CONTAINERS: &str = "  - {name: count_calls, type: Uprobe, uprobe: {target: /bin/app, symbol: bpfleet_test_probe, \
                             containers: {namespace: shop, containerNames: [app]}}}\n";

async fn apply(client: &mut AgentClient<Channel>, req: &v1::ApplyRequest) -> v1::OwnerState {
    client.apply(req.clone()).await.unwrap_or_else(|e| panic!("apply: {e:?}")).into_inner().state.expect("a state")
}

async fn pods_now(client: &mut AgentClient<Channel>) -> Vec<v1::PodState> {
    let l = client.list(v1::ListRequest::default()).await.unwrap().into_inner();
    l.owners.into_iter().flat_map(|o| o.pods).collect()
}

/// Poll List until `ok` holds of the pods, for at most `secs`; how long it took.
async fn until(
    client: &mut AgentClient<Channel>,
    secs: u64,
    what: &str,
    ok: impl Fn(&[v1::PodState]) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let pods = pods_now(client).await;
        if ok(&pods) {
            return t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "{what} after {secs} s: {pods:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uprobes_follow_the_containers_they_probe() {
    setup();
    let dirs = Dirs::new("containers");
    let cri = FakeCri::start();
    let pods = [ContainerPod::new(&cri, 1), ContainerPod::new(&cri, 2)];
    let mut agent = AgentProc::spawn_tls_with(&dirs, &["--cri-socket", path_str(cri.socket())], &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;

    let mut req = apply_request("probes", IN_CONTAINERS, "uprobe_counter.o");
    req.pods = pods.iter().map(ContainerPod::wire).collect();
    let state = apply(&mut client, &req).await;
    assert_eq!(state.health, v1::Health::Healthy as i32, "{state:?}");
    assert!(state.attached[0].link_ids.is_empty(), "nothing probed on the node: {state:?}");
    let links: Vec<u32> = state
        .pods
        .iter()
        .map(|p| {
            assert_eq!((p.reason.as_str(), p.message.as_str()), ("", ""), "{p:?}");
            assert_eq!(p.link_ids.len(), 1, "{p:?}");
            p.link_ids[0]
        })
        .collect();
    assert!(links.iter().all(|l| kernel_has_link(*l)), "bpftool shows every probe: {links:?}");

    // Each container's binary is probed; the same program on the host (another inode) not.
    let calls = map_pin(&state, "uprobe_count");
    pods[0].call(0, 3);
    pods[1].call(0, 4);
    run(&object("uprobe_target"), 5);
    assert_eq!(read_counter(&calls), 7, "3 + 4 calls inside the containers, none outside");

    // Container app of pod 1 stops: its probe goes (link and pin) without an Apply,
    // quickly (the runtime must unmount its root); pod 2's stays as it was.
    cri.stop_container(&pods[0].container_id(0));
    let released = until(&mut client, 5, "the stopped container's probe released", |now| {
        now.iter().find(|p| p.uid == pods[0].uid).is_some_and(|p| p.link_ids.is_empty())
    })
    .await;
    assert!(link_gone(links[0]), "link {} still in the kernel", links[0]);
    let now = pods_now(&mut client).await;
    let stopped = now.iter().find(|p| p.uid == pods[0].uid).unwrap();
    assert_eq!(stopped.reason, "TargetNotFound", "{stopped:?}");
    assert!(stopped.message.contains("container app of pod shop/app-1 is not running"), "{stopped:?}");
    assert_eq!(now.iter().find(|p| p.uid == pods[1].uid).unwrap().link_ids, [links[1]], "the other keeps its probe");
    let pin_dir = dirs.root.join("probes").join(&req.revision).join("pods").join(&pods[0].uid);
    assert!(!pin_dir.exists(), "{:?}", pins_under(&dirs.root));

    // Restarted in place (a new container id and root): probed again, without an Apply.
    pods[0].start(&cri, 1);
    let again = until(&mut client, 5, "the restarted container probed", |now| {
        now.iter().find(|p| p.uid == pods[0].uid).is_some_and(|p| p.link_ids.len() == 1 && p.reason.is_empty())
    })
    .await;
    let relinked = pods_now(&mut client).await.into_iter().find(|p| p.uid == pods[0].uid).unwrap().link_ids[0];
    assert_ne!(relinked, links[0]);
    let before = read_counter(&calls);
    pods[0].call(1, 2);
    assert_eq!(read_counter(&calls), before + 2, "the restarted container's binary counts");
    eprintln!("a stopped container's probe released in {released:?}; its restart probed in {again:?}");

    // Remove: nothing in bpffs, no probe in the kernel.
    let removal = v1::RemoveRequest {
        owner: Some(v1::Owner { uid: "probes".into(), name: String::new() }),
        epoch: 0,
        node_name: String::new(),
    };
    assert!(client.remove(removal).await.unwrap().into_inner().removed);
    assert!(pins_under(&dirs.root).is_empty(), "left in bpffs: {:?}", pins_under(&dirs.root));
    assert!(link_gone(relinked) && link_gone(links[1]), "probes left in the kernel");
    assert!(program_gone(state.attached[0].program_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_a_missing_container_and_an_escape_fail_their_pod_alone() {
    setup();
    let dirs = Dirs::new("containerfail");
    let cri = FakeCri::start();
    let ok = ContainerPod::new(&cri, 11);
    // Its root's /bin/app is an absolute link to the host's copy: inside the root it
    // leads nowhere.
    let escape = ContainerPod::new(&cri, 12);
    std::fs::remove_file(escape.root(0).join("bin/app")).unwrap();
    std::os::unix::fs::symlink(object("uprobe_target"), escape.root(0).join("bin/app")).unwrap();
    // Named with a container the runtime does not run.
    let sidecar = ContainerPod::new(&cri, 13);
    // Its spec has no container of the name the program gives.
    let lacking = ContainerPod::new(&cri, 14);
    let mut agent = AgentProc::spawn_tls_with(&dirs, &["--cri-socket", path_str(cri.socket())], &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;

    let returns = "  - {name: count_returns, type: Uretprobe, uretprobe: {target: /bin/app, symbol: bpfleet_test_probe, \
                   containers: {namespace: shop, containerNames: [app, sidecar]}}}\n";
    let mut req = apply_request("fails", &format!("{IN_CONTAINERS}{returns}"), "uprobe_counter.o");
    let mut with_sidecar = sidecar.wire();
    with_sidecar.containers.push("sidecar".into());
    with_sidecar.programs = vec!["count_returns".into()];
    let mut without = lacking.wire();
    without.programs = vec!["count_returns".into()];
    req.pods = vec![ok.wire(), escape.wire(), with_sidecar, without];
    let state = apply(&mut client, &req).await;
    assert_eq!(state.health, v1::Health::Healthy as i32, "pods fail alone: {state:?}");
    let of = |p: &ContainerPod| state.pods.iter().find(|s| s.uid == p.uid).unwrap().clone();
    assert_eq!(of(&ok).link_ids.len(), 1);
    let e = of(&escape);
    assert_eq!((e.reason.as_str(), e.link_ids.len()), ("TargetNotFound", 0), "{e:?}");
    assert!(e.message.contains("/bin/app does not exist in the container root"), "{e:?}");
    let s = of(&sidecar);
    assert_eq!(s.link_ids.len(), 1, "app is probed: {s:?}");
    assert_eq!(s.reason, "TargetNotFound");
    assert!(s.message.contains("container sidecar of pod shop/app-13 has not been created"), "{s:?}");
    let l = of(&lacking);
    assert_eq!((l.reason.as_str(), l.link_ids.len()), ("TargetNotFound", 1), "app is probed: {l:?}");
    assert!(
        l.message.contains("pod shop/app-14 has no container named sidecar (its containers: app): fix containerNames"),
        "{l:?}"
    );
    let calls = map_pin(&state, "uprobe_count");
    run(&object("uprobe_target"), 3);
    assert_eq!(read_counter(&calls), 0, "the host's binary, which the escape led to, is not probed");
    ok.call(0, 1);
    assert_eq!(read_counter(&calls), 1);
}
