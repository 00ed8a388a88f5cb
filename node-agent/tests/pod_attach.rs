//! Attaching inside pods, in the real kernel: XDP and TC on an interface inside a
//! network namespace (a pod's, made with `ip netns`), uprobes on a binary inside a
//! container root (a directory, and an overlay mount as containerd makes). What is
//! attached is read back with bpftool (inside the namespace through `nsenter --net`),
//! and traffic or calls move the programs' counters.

mod common;

use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use agent::attach::TcBackend;
use agent::attach::container::{ContainerRoot, attach_uprobe};
use agent::attach::netns::{PodNetns, PodTcLink, TcHook, attach_tc, attach_xdp, detach_tc};
use agent::attach::pod::PodError;
use agent::error::Reason;
use aya::Ebpf;
use aya::programs::{SchedClassifier, UProbe, Xdp};
use common::{kernel_has_link, link_gone, object, read_counter, setup, sh, sh_ok, unique};
use crds::names::{InterfaceName, ProgramName};
use crds::program::{Direction, XdpMode};
use crds::validate::UprobeTarget;
use serde_json::Value;

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// A pod as far as the kernel sees one: a network namespace at `/run/netns/NAME`, its
/// interface `inside` (a veth whose other end, `outside`, stays on the host), and on
/// the host an unrelated interface with the same name as the pod's.
struct Pod {
    ns: String,
    inside: String,
    outside: String,
    pod_ip: String,
}

impl Pod {
    fn new() -> Self {
        setup();
        let id = unique("");
        let (ns, inside, outside, twin_peer) =
            (format!("bfpod{id}"), format!("bfi{id}"), format!("bfo{id}"), format!("bft{id}"));
        let n = SUBNET.fetch_add(1, Ordering::SeqCst);
        let (o2, o3) = (std::process::id() % 250, (n * 4) % 256);
        let (host_ip, pod_ip) = (format!("172.30.{o2}.{}", o3 + 1), format!("172.30.{o2}.{}", o3 + 2));
        sh(&format!(
            "ip netns add {ns} && ip link add {outside} type veth peer name {inside} netns {ns} && \
             ip addr add {host_ip}/30 dev {outside} && ip link set {outside} up && \
             ip -n {ns} addr add {pod_ip}/30 dev {inside} && ip -n {ns} link set {inside} up && \
             ip -n {ns} link set lo up && \
             ip link add {inside} type veth peer name {twin_peer} && ip link set {inside} up && ip link set {twin_peer} up"
        ));
        Self { ns, inside, outside, pod_ip }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns))
    }

    fn netns(&self) -> PodNetns {
        PodNetns::new(self.path(), format!("pod team-a/{}", self.ns))
    }

    fn interface(&self) -> InterfaceName {
        InterfaceName::new(&self.inside).unwrap()
    }

    /// `n` pings from the host into the pod: each enters the pod's interface once.
    fn ping(&self, n: u32) {
        sh(&format!("ping -c {n} -i 0.01 -W 1 -q -I {} {} >/dev/null", self.outside, self.pod_ip));
    }

    /// `bpftool net show` inside the pod's namespace.
    fn net_inside(&self) -> Value {
        net_show(&format!("nsenter --net={} ", self.path().display()))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = sh_ok(&format!(
            "ip link del {} 2>/dev/null; ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null",
            self.outside, self.inside, self.ns
        ));
    }
}

/// `bpftool -j net show`, run after `prefix` (empty: the host's namespace).
fn net_show(prefix: &str) -> Value {
    let out = sh(&format!("{prefix}bpftool -j net show"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    v[0].clone()
}

/// The entries of `section` ("xdp", "tc") of a `net show` for device `dev`.
fn on_device(net: &Value, section: &str, dev: &str) -> Vec<Value> {
    net[section].as_array().into_iter().flatten().filter(|e| e["devname"] == dev).cloned().collect()
}

/// The kernel's view of link `id` (`bpftool link show`), if it exists.
fn link_info(id: u32) -> Option<Value> {
    let out = Command::new("bpftool").args(["-j", "link", "show", "id", &id.to_string()]).output().unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Ids of the kernel's links that run program `prog_id`.
fn links_of(prog_id: u32) -> Vec<u64> {
    let v: Value = serde_json::from_str(&sh("bpftool -j link show")).unwrap();
    v.as_array().unwrap().iter().filter(|l| l["prog_id"] == prog_id).filter_map(|l| l["id"].as_u64()).collect()
}

/// The kernel's fdinfo of the link pinned at `pin` (its type, program and hook).
fn link_fdinfo(pin: &Path) -> String {
    use std::os::fd::AsRawFd;
    let fd = agent::kernel::obj_get(pin).unwrap();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap()
}

/// A bpffs directory for this test's pins, removed with everything in it on drop.
struct Pins(PathBuf);

impl Pins {
    fn new() -> Self {
        setup();
        let dir = PathBuf::from(format!("/sys/fs/bpf/bpfleet-podtest-{}", unique("")));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn at(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An example object, with map `map` pinned in `pins` for reading its counter.
fn load_object(file: &str, map: &str, pins: &Pins) -> (Ebpf, PathBuf) {
    let ebpf = Ebpf::load_file(object(file)).unwrap();
    let pin = pins.at(map);
    ebpf.map(map).unwrap_or_else(|| panic!("no map {map} in {file}")).pin(&pin).unwrap();
    (ebpf, pin)
}

fn xdp_program(ebpf: &mut Ebpf) -> &mut Xdp {
    let xdp: &mut Xdp = ebpf.program_mut("count_packets").unwrap().try_into().unwrap();
    xdp.load().unwrap();
    xdp
}

/// tc_counter.o's program, loaded, and its kernel id.
fn tc_program(ebpf: &mut Ebpf) -> (&mut SchedClassifier, u32) {
    let tc: &mut SchedClassifier = ebpf.program_mut("count_tc").unwrap().try_into().unwrap();
    tc.load().unwrap();
    let id = tc.info().unwrap().id();
    (tc, id)
}

/// A pod, and the example `file` with its counter `map` pinned.
fn pod_with(file: &str, map: &str) -> (Pins, Pod, Ebpf, PathBuf) {
    let pins = Pins::new();
    let pod = Pod::new();
    let (ebpf, counter) = load_object(file, map, &pins);
    (pins, pod, ebpf, counter)
}

fn ingress(interface: &InterfaceName, priority: u16, backend: TcBackend) -> TcHook<'_> {
    TcHook { interface, direction: Direction::Ingress, priority, backend, peers: &[] }
}

fn name(s: &str) -> ProgramName {
    ProgramName::new(s).unwrap()
}

fn failure(r: Result<impl std::fmt::Debug, PodError>) -> agent::error::AgentError {
    match r {
        Err(PodError::Failed(e)) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn xdp_attaches_to_the_pods_interface_not_the_hosts_namesake() {
    let (pins, pod, mut ebpf, counter) = pod_with("xdp_counter.o", "packet_count");
    let xdp = xdp_program(&mut ebpf);
    let prog_id = xdp.info().unwrap().id();
    let pin = pins.at("xdp_link");

    let link = attach_xdp(xdp, &name("count_packets"), &pod.netns(), &pod.interface(), XdpMode::Generic, &pin)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(link.path, pin);
    assert!(pin.exists() && kernel_has_link(link.link_id));

    // Inside the pod: the program on its interface, in the mode asked for.
    let inside = on_device(&pod.net_inside(), "xdp", &pod.inside);
    assert_eq!(inside.len(), 1, "{inside:?}");
    assert_eq!(inside[0]["id"], prog_id, "{inside:?}");
    assert_eq!(inside[0]["mode"], "generic", "{inside:?}");
    // The host's interface of the same name has nothing.
    let host = net_show("");
    assert!(on_device(&host, "xdp", &pod.inside).is_empty(), "{host}");

    pod.ping(5);
    assert!(read_counter(&counter) >= 5, "the pod's packets are counted: {}", read_counter(&counter));

    // The pin alone keeps it: the thread that attached is long gone.
    link.detach().unwrap();
    assert!(!pin.exists());
    assert!(link_gone(link.link_id), "link {} still in the kernel", link.link_id);
    assert!(on_device(&pod.net_inside(), "xdp", &pod.inside).is_empty());
    let before = read_counter(&counter);
    pod.ping(3);
    assert_eq!(read_counter(&counter), before, "nothing counts after detaching");
    // Detaching again is done already.
    link.detach().unwrap();
}

#[test]
fn a_missing_interface_and_a_pod_gone_are_told_apart() {
    let (pins, pod, mut ebpf, _) = pod_with("xdp_counter.o", "packet_count");
    let xdp = xdp_program(&mut ebpf);
    let prog = name("count_packets");
    let pin = pins.at("link");

    // An interface the host has but the pod has not (the host's veth end).
    let outside = InterfaceName::new(&pod.outside).unwrap();
    let e = failure(attach_xdp(xdp, &prog, &pod.netns(), &outside, XdpMode::Auto, &pin));
    assert_eq!(e.reason, Reason::InterfaceNotFound);
    assert_eq!(
        e.message,
        format!(
            "interface {} not found in the network namespace /run/netns/{} (pod team-a/{})",
            pod.outside, pod.ns, pod.ns
        )
    );
    assert_eq!(e.program.as_deref(), Some("count_packets"));
    assert!(!pin.exists());

    // The pod's namespace unmounted (as the runtime does first when a pod stops): gone.
    sh(&format!("umount {}", pod.path().display()));
    assert!(pod.path().exists(), "the empty mount point stays for a moment");
    let e = attach_xdp(xdp, &prog, &pod.netns(), &pod.interface(), XdpMode::Auto, &pin).unwrap_err();
    assert!(matches!(&e, PodError::Gone(p) if p.path() == pod.path()), "{e:?}");
    // Then removed: still gone, and said so in words.
    std::fs::remove_file(pod.path()).unwrap();
    let e = attach_xdp(xdp, &prog, &pod.netns(), &pod.interface(), XdpMode::Auto, &pin).unwrap_err();
    assert!(e.is_gone(), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "the network namespace /run/netns/{} (pod team-a/{}) no longer exists: the pod or container stopped",
            pod.ns, pod.ns
        )
    );
    assert!(!pin.exists());
    assert!(links_of(xdp.info().unwrap().id()).is_empty(), "nothing attached");
    // A namespace deleted the ordinary way.
    let other = Pod::new();
    sh(&format!("ip netns del {}", other.ns));
    let other_iface = other.interface();
    let tc_hook = ingress(&other_iface, 1, TcBackend::Auto);
    let (mut tc_obj, _) = load_object("tc_counter.o", "tc_packet_count", &pins);
    let (tc, _) = tc_program(&mut tc_obj);
    assert!(attach_tc(tc, &name("count_tc"), &other.netns(), &tc_hook, &pins.at("tc")).unwrap_err().is_gone());
}

#[test]
fn tcx_attaches_inside_the_pod() {
    let (pins, pod, mut ebpf, counter) = pod_with("tc_counter.o", "tc_packet_count");
    let (tc, prog_id) = tc_program(&mut ebpf);
    let iface = pod.interface();
    let hook = ingress(&iface, 10, TcBackend::Tcx);
    let pin = pins.at("tcx_link");

    let link = attach_tc(tc, &name("count_tc"), &pod.netns(), &hook, &pin).unwrap_or_else(|e| panic!("{e}"));
    let PodTcLink::Tcx(link) = link else { panic!("TCX asked, got {link:?}") };
    // Debian's bpftool shows a TCX link as `type 11` with its program, no interface: the
    // kernel's fdinfo of the pinned link says which, by index, and it is the pod's.
    let info = link_info(link.link_id).expect("the link exists");
    assert_eq!(info["prog_id"], prog_id, "{info}");
    let fdinfo = link_fdinfo(&pin);
    let ifindex = |ns: &str, dev: &str| -> u64 {
        let v: Value = serde_json::from_str(&sh(&format!("ip {ns} -j link show {dev}"))).unwrap();
        v[0]["ifindex"].as_u64().unwrap()
    };
    let (in_pod, on_host) = (ifindex(&format!("-n {}", pod.ns), &pod.inside), ifindex("", &pod.inside));
    assert_ne!(in_pod, on_host, "the pod's interface and its host namesake have different indexes here");
    assert!(fdinfo.contains(&format!("ifindex:\t{in_pod}\n")), "{fdinfo}");
    // Traffic into the pod runs it.
    pod.ping(6);
    assert!(read_counter(&counter) >= 6, "counted {}", read_counter(&counter));
    assert_eq!(links_of(prog_id), vec![u64::from(link.link_id)]);

    detach_tc(&pod.netns(), &PodTcLink::Tcx(link.clone())).unwrap();
    assert!(!pin.exists());
    assert!(link_gone(link.link_id));
    let before = read_counter(&counter);
    pod.ping(3);
    assert_eq!(read_counter(&counter), before, "nothing counts after detaching");

    // Missing interface inside the pod, in words.
    let missing = InterfaceName::new("nosuch0").unwrap();
    let hook = TcHook { interface: &missing, ..hook };
    let e = failure(attach_tc(tc, &name("count_tc"), &pod.netns(), &hook, &pin));
    assert_eq!(e.reason, Reason::InterfaceNotFound);
    assert!(e.message.starts_with("interface nosuch0 not found in the network namespace /run/netns/"), "{e}");
}

/// Kernels before 6.6 have no TCX: a clsact filter inside the pod, which `bpftool net`
/// shows, removed by entering the namespace again.
#[test]
fn clsact_filters_attach_inside_the_pod() {
    let (pins, pod, mut ebpf, counter) = pod_with("tc_counter.o", "tc_packet_count");
    let (tc, prog_id) = tc_program(&mut ebpf);
    let iface = pod.interface();
    let hook = ingress(&iface, 7, TcBackend::Clsact);

    let link =
        attach_tc(tc, &name("count_tc"), &pod.netns(), &hook, &pins.at("unused")).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(link, PodTcLink::Filter { priority: 7, .. }), "{link:?}");
    let inside = on_device(&pod.net_inside(), "tc", &pod.inside);
    assert_eq!(inside.len(), 1, "{inside:?}");
    assert_eq!(inside[0]["id"], prog_id);
    assert_eq!(inside[0]["kind"], "clsact/ingress");
    assert!(on_device(&net_show(""), "tc", &pod.inside).is_empty(), "nothing on the host's namesake");
    pod.ping(4);
    assert!(read_counter(&counter) >= 4);

    detach_tc(&pod.netns(), &link).unwrap();
    assert!(on_device(&pod.net_inside(), "tc", &pod.inside).is_empty());
    // Once the pod is gone, removing its filters is done already.
    sh(&format!("ip netns del {}", pod.ns));
    detach_tc(&pod.netns(), &link).unwrap();
}

/// A container root: `/bin/uprobe_target` (a copy of the example), an empty `/usr/bin`,
/// and links that would lead out of it if followed on the host.
struct Container {
    dir: tempfile::TempDir,
    /// A real file outside the root, which escapes would reach.
    outside: PathBuf,
}

impl Container {
    fn new() -> Self {
        setup();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::copy(object("uprobe_target"), root.join("bin/uprobe_target")).unwrap();
        let outside = dir.path().join("outside/uprobe_target");
        std::fs::copy(object("uprobe_target"), &outside).unwrap();
        symlink("/usr/bin/bash", root.join("evil")).unwrap();
        symlink(&outside, root.join("abs-escape")).unwrap();
        symlink("../outside/uprobe_target", root.join("rel-escape")).unwrap();
        symlink("/bin/uprobe_target", root.join("inside-link")).unwrap();
        Self { dir, outside }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn open(&self) -> ContainerRoot {
        ContainerRoot::open(self.root(), "container app of pod team-a/web").unwrap()
    }
}

fn probe(target: &str) -> UprobeTarget {
    UprobeTarget { target: target.into(), symbol: Some("bpfleet_test_probe".into()), offset: 0, pid: None }
}

/// Run a copy of uprobe_target, calling the probed function `n` times.
fn run_target(binary: &Path, n: u32) {
    let out = Command::new(binary).arg(n.to_string()).output().unwrap();
    assert!(out.status.success(), "{}: {out:?}", binary.display());
}

fn uprobe_program<'a>(ebpf: &'a mut Ebpf, function: &str) -> &'a mut UProbe {
    let up: &mut UProbe = ebpf.program_mut(function).unwrap().try_into().unwrap();
    up.load().unwrap();
    up
}

#[test]
fn uprobes_attach_to_the_binary_inside_the_container_root() {
    let pins = Pins::new();
    let c = Container::new();
    let root = c.open();
    let (mut ebpf, calls) = load_object("uprobe_counter.o", "uprobe_count", &pins);
    let returns = pins.at("uretprobe_count");
    ebpf.map("uretprobe_count").unwrap().pin(&returns).unwrap();

    let mut attach = |function: &str, target: &str| {
        let up = uprobe_program(&mut ebpf, function);
        attach_uprobe(up, &name(function), &root, &probe(target), &pins.at(function)).unwrap_or_else(|e| panic!("{e}"))
    };
    let entry = attach("count_calls", "/bin/uprobe_target");
    // Through an absolute symlink inside the container, to the same file.
    let ret = attach("count_returns", "/inside-link");
    assert!(kernel_has_link(entry.link_id) && kernel_has_link(ret.link_id));

    run_target(&c.root().join("bin/uprobe_target"), 7);
    assert_eq!(read_counter(&calls), 7);
    assert_eq!(read_counter(&returns), 7);
    // The same program elsewhere on the host (another inode) is not probed.
    run_target(&object("uprobe_target"), 5);
    run_target(&c.outside, 5);
    assert_eq!(read_counter(&calls), 7);

    for link in [&entry, &ret] {
        link.detach().unwrap();
        assert!(!link.path.exists());
        assert!(link_gone(link.link_id));
    }
    run_target(&c.root().join("bin/uprobe_target"), 3);
    assert_eq!(read_counter(&calls), 7, "nothing counts after detaching");
}

/// A container root that is an overlay mount, as containerd's are: the probe is attached
/// through the file's own layer, so the root can still be unmounted (as the runtime does
/// when the container stops) while the probe stays and counts.
#[test]
fn a_probe_in_an_overlay_root_does_not_keep_it_mounted() {
    let pins = Pins::new();
    setup();
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) =
        (dir.path().join("lower"), dir.path().join("upper"), dir.path().join("work"), dir.path().join("rootfs"));
    for d in [&lower.join("bin"), &upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::copy(object("uprobe_target"), lower.join("bin/app")).unwrap();
    sh(&format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
        lower.display(),
        upper.display(),
        work.display(),
        merged.display()
    ));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let guard = Unmount(merged.clone());
    let root = ContainerRoot::open(&merged, "container app of pod team-a/web").unwrap();
    let (mut ebpf, calls) = load_object("uprobe_counter.o", "uprobe_count", &pins);
    let up = uprobe_program(&mut ebpf, "count_calls");
    let link = attach_uprobe(up, &name("count_calls"), &root, &probe("/bin/app"), &pins.at("probe")).unwrap();
    run_target(&merged.join("bin/app"), 4);
    assert_eq!(read_counter(&calls), 4, "counted through the container's root");
    drop(root);
    // The runtime's unmount (no lazy detach): it must not be busy.
    let out = std::process::Command::new("umount").arg(&merged).output().unwrap();
    assert!(out.status.success(), "the probe keeps the container root mounted: {out:?}");
    assert!(kernel_has_link(link.link_id));
    run_target(&lower.join("bin/app"), 3);
    assert_eq!(read_counter(&calls), 7, "the same file, probed on, after the root went");
    link.detach().unwrap();
    drop(guard);
}

#[test]
fn paths_out_of_the_container_are_refused_and_nothing_is_attached() {
    let pins = Pins::new();
    let c = Container::new();
    let root = c.open();
    let (mut ebpf, _) = load_object("uprobe_counter.o", "uprobe_count", &pins);
    let up = uprobe_program(&mut ebpf, "count_calls");
    let prog_id = up.info().unwrap().id();
    let prog = name("count_calls");
    let pin = pins.at("up");
    let root_shown = format!("the container root {} (container app of pod team-a/web)", c.root().display());
    let outside_name = c.outside.strip_prefix(c.dir.path()).unwrap().display().to_string();

    // Each of these names a file that exists on the host; inside the root none exists.
    for escape in [
        "/evil".to_string(),
        "/abs-escape".into(),
        "/rel-escape".into(),
        format!("/../{outside_name}"),
        format!("/bin/../../../{outside_name}"),
        format!("/../../../../..{}", c.outside.display()),
    ] {
        let e = failure(attach_uprobe(up, &prog, &root, &probe(&escape), &pin));
        assert_eq!(e.reason, Reason::TargetNotFound, "{escape}: {e}");
        assert_eq!(e.program.as_deref(), Some("count_calls"));
        assert_eq!(
            e.message,
            format!(
                "{escape} does not exist in {root_shown} (its symlinks and '..' resolve inside the container): \
                 name the binary by its path inside the container"
            )
        );
        assert!(!pin.exists(), "{escape}");
    }
    // Inside the root, /evil is the container's own /usr/bin/bash, whichever file that is.
    std::fs::write(c.root().join("usr/bin/bash"), b"not the host's bash").unwrap();
    let resolved = root.resolve(Path::new("/evil")).unwrap();
    let meta = std::fs::metadata(resolved.fd_path()).unwrap();
    assert_eq!(meta.ino(), std::fs::metadata(c.root().join("usr/bin/bash")).unwrap().ino());
    assert_ne!(meta.ino(), std::fs::metadata("/usr/bin/bash").unwrap().ino());
    // ... which is not an ELF binary.
    let e = failure(attach_uprobe(up, &prog, &root, &probe("/evil"), &pin));
    assert!(e.message.contains("it is not an ELF binary or library"), "{e}");

    // Not a regular file; not absolute; a magic link; a symbol the binary lacks.
    let e = failure(attach_uprobe(up, &prog, &root, &probe("/bin"), &pin));
    assert!(
        e.message.contains("/bin in the container root") && e.message.contains("is a directory, not a regular file"),
        "{e}"
    );
    let e = failure(attach_uprobe(up, &prog, &root, &probe("bin/uprobe_target"), &pin));
    assert_eq!(e.reason, Reason::InvalidSpec, "{e}");
    symlink("/proc/self/exe", c.root().join("magic")).unwrap();
    let e = failure(attach_uprobe(up, &prog, &root, &probe("/magic"), &pin));
    assert_eq!(e.reason, Reason::TargetNotFound, "{e}");
    let stripped = c.root().join("bin/stripped");
    std::fs::copy(c.root().join("bin/uprobe_target"), &stripped).unwrap();
    sh(&format!("strip --strip-all {}", stripped.display()));
    let e = failure(attach_uprobe(up, &prog, &root, &probe("/bin/stripped"), &pin));
    assert!(e.message.contains("the binary has no symbol \"bpfleet_test_probe\""), "{e}");

    assert!(!pin.exists());
    assert!(links_of(prog_id).is_empty(), "nothing attached");
}

#[test]
fn a_container_gone_is_told_apart() {
    let c = Container::new();
    let e = ContainerRoot::open(c.dir.path().join("no-such-rootfs"), "container app").unwrap_err();
    assert!(e.is_gone(), "{e:?}");
    // Removed after it was opened: what is resolved in it then is gone too.
    let root = c.open();
    std::fs::remove_dir_all(c.root()).unwrap();
    let e = root.resolve(Path::new("/bin/uprobe_target")).unwrap_err();
    assert!(e.is_gone(), "{e:?}");
}
