//! Zero-gap upgrades, proven with held traffic and read from the kernel.
//!
//! A peer namespace sends a steady UDP stream to port 9999 over a veth pair while the
//! agent binary (over mTLS gRPC) upgrades a counting program 20 times, each time to a
//! new revision (its REVISION global changes). `udp_counter.o` counts the stream (and
//! nothing else: no ARP, no IPv6 neighbour discovery) in `udp_count`, and per revision
//! in `udp_count_by_rev`. The maps are shared by every revision of the owner (same
//! shape, see `plan::maps`), so one counter keeps counting across all 21 revisions:
//! after the stream stops it must equal the packets sent exactly — fewer would be a gap
//! (a packet no revision saw), more a double count (two revisions saw one packet). Each
//! upgrade waits until the new revision has counted packets, so every swap happened
//! under traffic. Counters are read with bpftool, not from the agent's reports.
//!
//! Tracepoints and uprobes have no in-place link replacement in the kernel; for them
//! the new revision is attached before the old one goes: the agent is held between its
//! commit and the removal of the previous revision (`BPFLEET_PAUSE=after-commit:…`),
//! and bpftool must show both revisions' links attached at that moment.

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

const PORT: u16 = 9999;
const UPGRADES: u32 = 20;
/// Packets per second of the held stream.
const RATE: u64 = 2000;

/// Revision number `rev` of an owner running `programs_yaml` of udp_counter.o, with
/// REVISION = `rev` (the agent takes the revision string as given; the operator would
/// hash the spec, whose globalData differs).
fn udp_request(uid: &str, programs_yaml: &str, rev: u32) -> v1::ApplyRequest {
    let mut req = apply_request(uid, programs_yaml, "udp_counter.o");
    req.revision = format!("{:016x}", 0xabc0_0000_u64 + u64::from(rev));
    req.global_data = [("REVISION".to_string(), rev.to_le_bytes().to_vec().into())].into_iter().collect();
    req
}

/// A steady UDP stream from the peer namespace to `dst:9999`, and a socket on the host
/// side that receives it (so the test knows the network itself lost nothing).
struct Stream {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<u64>,
    recv_stop: Arc<AtomicBool>,
}

impl Stream {
    fn start(ns: &str, dst: &str) -> Self {
        let sock = UdpSocket::bind((dst, PORT)).expect("bind the receiving socket");
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let recv_stop = Arc::new(AtomicBool::new(false));
        let rs = recv_stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut n = 0;
            loop {
                match sock.recv(&mut buf) {
                    Ok(_) => n += 1,
                    Err(_) if rs.load(Ordering::SeqCst) => return n,
                    Err(_) => {}
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, ns, dst) = (stop.clone(), ns.to_string(), dst.to_string());
        let sender = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open the netns");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            let interval = Duration::from_nanos(1_000_000_000 / RATE);
            let started = Instant::now();
            let mut sent: u64 = 0;
            while !st.load(Ordering::SeqCst) {
                let due = started + interval * sent as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                sock.send_to(&sent.to_le_bytes(), (dst.as_str(), PORT)).expect("send");
                sent += 1;
            }
            sent
        });
        Self { stop, sender, receiver, recv_stop }
    }

    /// Stop sending; returns (sent, received) once the last packet had time to arrive.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self.sender.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        self.recv_stop.store(true, Ordering::SeqCst);
        (sent, self.receiver.join().unwrap())
    }
}

/// `common::wait_for`, polling every 5 ms.
fn wait_for(secs: u64, what: &str, f: impl FnMut() -> bool) {
    agent::testing::wait::wait_until(Duration::from_secs(secs), Duration::from_millis(5), what, f)
}

/// What one held-traffic run measured.
#[derive(Debug)]
struct Held {
    sent: u64,
    received: u64,
    counted: u64,
    by_revision: Vec<u64>,
    link_ids: Vec<Vec<u32>>,
}

/// Apply revision 0, start the stream, upgrade 20 times (each time waiting until the new
/// revision counts), stop the stream, read the counters.
fn held_upgrades(
    rt: &tokio::runtime::Runtime,
    client: &mut AgentClient<Channel>,
    veth: &Veth,
    uid: &str,
    yaml: &str,
) -> Held {
    let apply = |client: &mut AgentClient<Channel>, rev: u32| {
        let resp = rt.block_on(client.apply(udp_request(uid, yaml, rev))).unwrap_or_else(|e| panic!("{e:?}"));
        resp.into_inner().state.unwrap()
    };
    let first = apply(client, 0);
    let total = map_pin(&first, "udp_count");
    let by_rev = map_pin(&first, "udp_count_by_rev");
    // Let ARP settle before the stream, so no packet waits on neighbour resolution.
    veth.ping_from_ns(1);
    let stream = Stream::start(&veth.ns, &veth.host_ip);
    wait_for(10, "revision 0 to count", || read_u64(&by_rev, 0) > 0);
    let mut link_ids = vec![first.attached[0].link_ids.clone()];
    for rev in 1..=UPGRADES {
        let state = apply(client, rev);
        assert_eq!(map_pin(&state, "udp_count"), total, "the counter map is the owner's, across revisions");
        link_ids.push(state.attached[0].link_ids.clone());
        wait_for(10, &format!("revision {rev} to count"), || read_u64(&by_rev, rev) > 0);
    }
    let (sent, received) = stream.finish();
    Held {
        sent,
        received,
        counted: read_u64(&total, 0),
        by_revision: (0..=UPGRADES).map(|r| read_u64(&by_rev, r)).collect(),
        link_ids,
    }
}

fn check_held(what: &str, h: &Held) {
    eprintln!(
        "{what}: sent {} received {} counted {} over {UPGRADES} upgrades; per revision {:?}",
        h.sent, h.received, h.counted, h.by_revision
    );
    assert_eq!(h.received, h.sent, "{what}: the network itself lost packets; the run proves nothing");
    assert_eq!(h.by_revision.iter().sum::<u64>(), h.counted, "{what}: per-revision counts must add up");
    assert!(h.by_revision.iter().all(|&n| n > 0), "{what}: every revision must have counted under traffic");
    assert_eq!(
        h.counted, h.sent,
        "{what}: every packet must be counted exactly once across the upgrades (fewer: a gap, more: a double count)"
    );
}

fn xdp_yaml(iface: &str) -> String {
    format!("  - {{name: xdp_udp_count, type: XDP, xdp: {{interfaces: [{iface}], mode: Generic}}}}\n")
}

fn tc_yaml(iface: &str) -> String {
    format!("  - {{name: tc_udp_count, type: TC, tc: {{interfaces: [{iface}], direction: Ingress, priority: 10}}}}\n")
}

#[test]
fn xdp_upgrades_under_traffic_lose_and_repeat_no_packet() {
    let dirs = Dirs::new("upg-xdp");
    let veth = Veth::new();
    let rt = rt();
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = rt.block_on(agent.ready_client(dirs.client_tls()));
    let h = held_upgrades(&rt, &mut client, &veth, "upg-xdp", &xdp_yaml(&veth.host));
    check_held("XDP", &h);
    assert!(h.link_ids.windows(2).all(|w| w[0] == w[1]), "XDP keeps one link, swapped in place: {:?}", h.link_ids);
}

#[test]
fn tcx_upgrades_under_traffic_lose_and_repeat_no_packet() {
    let dirs = Dirs::new("upg-tcx");
    let veth = Veth::new();
    let rt = rt();
    let mut agent = AgentProc::spawn_tls_with(&dirs, &["--tc-backend", "tcx"], &[]);
    let mut client = rt.block_on(agent.ready_client(dirs.client_tls()));
    let h = held_upgrades(&rt, &mut client, &veth, "upg-tcx", &tc_yaml(&veth.host));
    check_held("TCX", &h);
    assert!(h.link_ids.windows(2).all(|w| w[0] == w[1]), "TCX keeps one link, updated in place: {:?}", h.link_ids);
    // The kernel's list of TCX programs on the hook (this bpftool predates TCX).
    let (_, on_hook) =
        aya::programs::SchedClassifier::query_tcx(&veth.host, aya::programs::TcAttachType::Ingress).unwrap();
    let ids: Vec<u32> = on_hook.iter().map(|p| p.id()).collect();
    assert_eq!(ids.len(), 1, "exactly one program left on the hook: {ids:?}");
}

#[test]
fn clsact_upgrades_under_traffic_lose_and_repeat_no_packet() {
    let dirs = Dirs::new("upg-cls");
    let veth = Veth::new();
    let rt = rt();
    let mut agent = AgentProc::spawn_tls_with(&dirs, &["--tc-backend", "clsact"], &[]);
    let mut client = rt.block_on(agent.ready_client(dirs.client_tls()));
    let h = held_upgrades(&rt, &mut client, &veth, "upg-cls", &tc_yaml(&veth.host));
    check_held("clsact", &h);
    let filters = sh(&format!("tc filter show dev {} ingress", veth.host));
    let handles = filters.lines().filter(|l| l.contains(" handle ")).count();
    assert_eq!(handles, 1, "exactly one filter left, replaced in place: {filters}");
}

/// Links of both revisions are attached while the agent sits between its commit and
/// the removal of the previous revision; afterwards only the new one's are.
fn overlap(uid: &str, yaml: &str, object_name: &str, during: impl Fn(&v1::OwnerState)) {
    let dirs = Dirs::new(uid);
    let flags = dirs.tmp.path().join("pause");
    std::fs::create_dir_all(&flags).unwrap();
    let pause = format!("after-commit:{}", flags.display());
    let rt = rt();
    let mut agent = AgentProc::spawn_tls(&dirs, &[("BPFLEET_PAUSE", &pause)]);
    let mut client = rt.block_on(agent.ready_client(dirs.client_tls()));
    let mut r1 = apply_request(uid, yaml, object_name);
    r1.revision = "1111111111111111".into();
    let old = rt.block_on(client.apply(r1.clone())).unwrap().into_inner().state.unwrap();
    let mut r2 = r1;
    r2.revision = "2222222222222222".into();
    let mut c2 = client.clone();
    let pending = rt.spawn(async move { c2.apply(r2).await });
    let flag: PathBuf = flags.join(format!("after-commit.{uid}"));
    wait_for(20, "the agent to reach after-commit", || flag.exists());

    let old_links: Vec<u32> = old.attached.iter().flat_map(|a| a.link_ids.clone()).collect();
    let old_progs: Vec<u32> = old.attached.iter().map(|a| a.program_id).collect();
    let links: serde_json::Value = serde_json::from_str(&sh("bpftool -j link show")).unwrap();
    let running: Vec<(u64, u64)> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["id"].as_u64().unwrap(), l["prog_id"].as_u64().unwrap_or(0)))
        .collect();
    for id in &old_links {
        assert!(running.iter().any(|(l, _)| *l == u64::from(*id)), "old link {id} must still be attached: {running:?}");
    }
    // The new revision's programs: loaded from its pins, each with its own links.
    let new_dir = dirs.root.join(uid).join("2222222222222222").join("progs");
    let mut new_progs = Vec::new();
    for e in std::fs::read_dir(&new_dir).unwrap().flatten() {
        let v: serde_json::Value =
            serde_json::from_str(&sh(&format!("bpftool -j prog show pinned {}", e.path().display()))).unwrap();
        new_progs.push(v["id"].as_u64().unwrap());
    }
    assert_eq!(new_progs.len(), old_progs.len());
    for p in &new_progs {
        assert!(!old_progs.iter().any(|o| u64::from(*o) == *p));
        assert!(running.iter().any(|(_, prog)| prog == p), "new program {p} must be attached already: {running:?}");
    }
    during(&old);
    eprintln!(
        "{uid}: at after-commit both revisions run: old links {old_links:?} (programs {old_progs:?}), new programs {new_progs:?}"
    );

    std::fs::remove_file(&flag).unwrap();
    let new = rt.block_on(pending).unwrap().unwrap().into_inner().state.unwrap();
    assert_eq!(new.revision, "2222222222222222");
    for id in &old_links {
        assert!(!kernel_has_link(*id), "old link {id} must be gone after the upgrade");
    }
    for p in &old_progs {
        assert!(program_gone(*p), "old program {p} must be unloaded");
    }
    for a in &new.attached {
        assert!(a.link_ids.iter().all(|l| kernel_has_link(*l)));
    }
    drop(agent);
}

#[test]
fn tracepoint_upgrade_attaches_the_new_revision_before_detaching_the_old() {
    let yaml = "  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}\n";
    overlap("upg-tp", yaml, "tracepoint_openat.o", |_| {});
}

#[test]
fn uprobe_upgrade_attaches_the_new_revision_before_detaching_the_old() {
    let target = object("uprobe_target");
    let yaml = format!(
        "  - {{name: count_calls, type: Uprobe, uprobe: {{target: {t}, symbol: bpfleet_test_probe}}}}\n  - {{name: count_returns, type: Uretprobe, uretprobe: {{target: {t}, symbol: bpfleet_test_probe}}}}\n",
        t = target.display()
    );
    overlap("upg-up", &yaml, "uprobe_counter.o", |old| {
        // Both revisions fire meanwhile: the counter they share counts each call twice.
        let pin = map_pin(old, "uprobe_count");
        let before = read_counter(&pin);
        sh(&format!("{} 10 >/dev/null", target.display()));
        assert_eq!(read_counter(&pin), before + 20, "both revisions' uprobes must fire during the overlap");
    });
}
