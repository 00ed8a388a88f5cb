//! What the kernel and bpffs say, read with bpftool, tc, ip and /proc — never from the
//! agent's own state, which is what is under test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use agent::testing::listing_json as json;
pub use agent::testing::sh;

/// bpffs and tracefs mounted.
pub fn mounts() -> anyhow::Result<()> {
    sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf")?;
    sh("mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true")?;
    Ok(())
}

/// One loaded program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prog {
    pub id: u32,
    pub name: String,
}

/// Every program loaded in the kernel.
pub fn programs() -> anyhow::Result<Vec<Prog>> {
    let v = json("bpftool -j prog show")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some(Prog {
                        id: p["id"].as_u64()? as u32,
                        name: p["name"].as_str().unwrap_or_default().to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

/// One link: its id and the program it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub id: u32,
    pub prog_id: u32,
    pub kind: String,
    pub ifindex: Option<u32>,
}

/// Every link in the kernel.
pub fn links() -> anyhow::Result<Vec<Link>> {
    let v = json("bpftool -j link show")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| {
                    Some(Link {
                        id: l["id"].as_u64()? as u32,
                        prog_id: l["prog_id"].as_u64().unwrap_or(0) as u32,
                        kind: l["type"].as_str().unwrap_or_default().to_string(),
                        ifindex: l["ifindex"].as_u64().map(|i| i as u32),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

pub fn program_loaded(id: u32) -> bool {
    sh(&format!("bpftool prog show id {id} >/dev/null 2>&1")).is_ok()
}

/// Program id of a pinned program.
pub fn pinned_program(pin: &Path) -> anyhow::Result<u32> {
    let v = json(&format!("bpftool -j prog show pinned {}", pin.display()))?;
    v["id"].as_u64().map(|i| i as u32).with_context(|| format!("no id for {}", pin.display()))
}

/// Program a pinned link runs.
pub fn pinned_link_program(pin: &Path) -> anyhow::Result<u32> {
    let v = json(&format!("bpftool -j link show pinned {}", pin.display()))?;
    v["prog_id"].as_u64().map(|i| i as u32).with_context(|| format!("no prog_id for {}", pin.display()))
}

/// One BPF hook on an interface, as `bpftool net show` and `tc filter show` see it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hook {
    /// `xdp`, `tcx/ingress`, `clsact/egress`, … (bpftool's kind).
    pub kind: String,
    pub prog_id: u32,
    /// clsact filter priority (`pref`), 0 for the others.
    pub priority: u32,
}

/// The BPF hooks of interface `dev`: XDP (from `ip link` and bpftool), TCX and clsact
/// (bpftool), and clsact filters with their priority (`tc filter show`).
pub fn interface_hooks(dev: &str) -> anyhow::Result<Vec<Hook>> {
    let mut out = Vec::new();
    let net = json(&format!("bpftool -j net show dev {dev}"))?;
    for section in ["xdp", "tc"] {
        for h in net[0][section].as_array().into_iter().flatten() {
            let id = h["id"].as_u64().or_else(|| h["prog_id"].as_u64()).unwrap_or(0) as u32;
            let kind =
                if section == "xdp" { "xdp".to_string() } else { h["kind"].as_str().unwrap_or("tc").to_string() };
            // clsact filters are read below with their priority.
            if !kind.starts_with("clsact") {
                out.push(Hook { kind, prog_id: id, priority: 0 });
            }
        }
    }
    let idx = ifindex(dev)?;
    for (direction, attach_type) in [("ingress", BPF_TCX_INGRESS), ("egress", BPF_TCX_EGRESS)] {
        for prog_id in tcx_programs(idx, attach_type)? {
            out.push(Hook { kind: format!("tcx/{direction}"), prog_id, priority: 0 });
        }
    }
    for direction in ["ingress", "egress"] {
        // No clsact qdisc: no filters (tc says so on stderr).
        let Ok(v) = json(&format!("tc -j filter show dev {dev} {direction} 2>/dev/null")) else { continue };
        for f in v.as_array().into_iter().flatten() {
            let Some(id) = f["options"]["prog"]["id"].as_u64() else { continue };
            out.push(Hook {
                kind: format!("clsact/{direction}"),
                prog_id: id as u32,
                priority: f["pref"].as_u64().unwrap_or(0) as u32,
            });
        }
    }
    // `ip link` reads XDP through another netlink path: both must agree.
    let ip = json(&format!("ip -d -j link show dev {dev}"))?;
    let ip_xdp = ip[0]["xdp"]["prog"]["id"].as_u64().map(|i| i as u32);
    let bpftool_xdp = out.iter().find(|h| h.kind == "xdp").map(|h| h.prog_id);
    if ip_xdp != bpftool_xdp {
        bail!("ip link says XDP program {ip_xdp:?} on {dev}, bpftool says {bpftool_xdp:?}");
    }
    out.sort();
    Ok(out)
}

// This machine's bpftool (7.1) predates TCX: `net show` lists no TCX program and `link
// show` gives TCX links no interface. The kernel is asked directly (BPF_PROG_QUERY).
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// Programs attached through TCX to interface `ifindex` at `attach_type`.
fn tcx_programs(ifindex: u32, attach_type: u32) -> anyhow::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    // union bpf_attr's query: target_ifindex, attach_type, query_flags, attach_flags,
    // prog_ids (u64 pointer at 16), count (u32 at 24), then fields left zero.
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; prog_ids points at
    // `ids`, which outlives the call and holds `count` u32s.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        bail!("BPF_PROG_QUERY of TCX on ifindex {ifindex}: {e}");
    }
    let n = u32::from_ne_bytes(attr[24..28].try_into().unwrap_or_default()) as usize;
    Ok(ids[..n.min(ids.len())].to_vec())
}

pub fn ifindex(dev: &str) -> anyhow::Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
        .with_context(|| format!("no interface {dev}"))?;
    Ok(s.trim().parse()?)
}

/// Every path under `root` (relative), sorted.
pub use agent::testing::tree;

/// Program ids held by pins under `root`: pinned programs and the programs of pinned links.
pub fn pinned_programs_under(root: &Path) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for rel in tree(root) {
        let p = root.join(&rel);
        if p.is_dir() {
            continue;
        }
        if let Ok(id) = pinned_program(&p) {
            ids.insert(id);
        } else if let Ok(id) = pinned_link_program(&p) {
            ids.insert(id);
        }
    }
    ids
}

/// What a process holds, from /proc: memory, descriptors, and the BPF objects behind them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcView {
    pub rss_kib: u64,
    pub fds: usize,
    pub prog_ids: BTreeSet<u32>,
    pub link_ids: BTreeSet<u32>,
    pub map_fds: usize,
}

pub fn process(pid: u32) -> anyhow::Result<ProcView> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut view = ProcView { rss_kib, ..Default::default() };
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        view.fds += 1;
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        let target = target.display().to_string();
        if !target.starts_with("anon_inode:bpf") {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
            .unwrap_or_default();
        let field =
            |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u32>().ok());
        if let Some(id) = field("link_id:") {
            view.link_ids.insert(id);
        } else if let Some(id) = field("prog_id:") {
            view.prog_ids.insert(id);
        } else if target.contains("map") {
            view.map_fds += 1;
        }
    }
    Ok(view)
}

/// Wait up to `secs` for `f` (the kernel frees programs and links after an RCU grace
/// period, not at the moment their last reference goes).
pub fn settle(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A veth pair whose host end (in this namespace) the trial's programs attach to; the
/// peer sits in its own network namespace. Removed on drop.
pub struct Veth {
    pub host: String,
    ns: String,
}

impl Veth {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let (host, peer, ns) = (format!("rlh{tag}"), format!("rlp{tag}"), format!("rlns{tag}"));
        let _ = sh(&format!("ip link del {host} 2>/dev/null; ip netns del {ns} 2>/dev/null"));
        sh(&format!(
            "ip netns add {ns} && ip link add {host} type veth peer name {peer} netns {ns} && \
             ip link set {host} up && ip -n {ns} link set {peer} up"
        ))?;
        Ok(Self { host, ns })
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", self.host, self.ns));
    }
}

/// A private bpffs root and state directory; removed on drop.
pub struct Dirs {
    pub root: PathBuf,
    pub state: PathBuf,
}

impl Dirs {
    pub fn new(tag: &str, work: &Path) -> Self {
        Self { root: PathBuf::from(format!("/sys/fs/bpf/bpfleet-rel-{tag}")), state: work.join(format!("state-{tag}")) }
    }

    /// Owner records and anything else the agent left in its state directory.
    pub fn state_files(&self) -> Vec<String> {
        tree(&self.state)
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
