//! What the kernel and bpffs say, read with the system's tools (bpftool, ip) and the
//! file system, never through bpfleet's own code.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::util::sh;

/// One XDP attachment on an interface, per `bpftool net show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    /// `generic`, `driver`, `offload`.
    pub mode: String,
    /// Kernel program id.
    pub id: u64,
}

/// Every XDP attachment on `ifname` inside network namespace `netns`.
pub fn xdp_attachments(netns: &str, ifname: &str) -> anyhow::Result<Vec<XdpAttachment>> {
    let out = sh(&format!("nsenter --net=/run/netns/{netns} bpftool -j net show dev {ifname}"))?;
    parse_net_show(&out)
}

/// `bpftool -j net show` output: `[{"xdp":[{"devname","ifindex","mode","id"} | {…,"multi_attachments":[…]}], "tc":[…]}]`.
pub fn parse_net_show(json: &str) -> anyhow::Result<Vec<XdpAttachment>> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("bpftool net show: {json}"))?;
    let mut out = Vec::new();
    for section in v.as_array().into_iter().flatten() {
        for dev in section["xdp"].as_array().into_iter().flatten() {
            let entries = match dev["multi_attachments"].as_array() {
                Some(multi) => multi.clone(),
                None => vec![dev.clone()],
            };
            for e in entries {
                if let Some(id) = e["id"].as_u64() {
                    out.push(XdpAttachment { mode: e["mode"].as_str().unwrap_or("").to_string(), id });
                }
            }
        }
    }
    Ok(out)
}

/// `ip -d link show` of `ifname` in `netns` mentions an XDP program.
pub fn link_shows_xdp(netns: &str, ifname: &str) -> anyhow::Result<bool> {
    let out = sh(&format!("ip -n {netns} -d link show dev {ifname}"))?;
    Ok(out.contains("xdp"))
}

/// The kernel has program `id` loaded.
pub fn program_exists(id: u64) -> bool {
    sh(&format!("bpftool prog show id {id} >/dev/null 2>&1")).is_ok()
}

/// Runs of program `id` the kernel counted (while `kernel.bpf_stats_enabled` was on), per
/// bpftool, which prints `run_cnt` only once the program has run time; None: no such
/// program.
pub fn run_count(id: u64) -> Option<u64> {
    let v = json(&format!("bpftool -j prog show id {id} 2>/dev/null")).ok()?;
    v["id"].as_u64()?;
    Some(v["run_cnt"].as_u64().unwrap_or(0))
}

/// `kernel.bpf_stats_enabled`: whether the kernel counts program runs now.
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// The kernel has link `id`.
pub fn link_exists(id: u64) -> bool {
    sh(&format!("bpftool link show id {id} >/dev/null 2>&1")).is_ok()
}

use agent::testing::listing_json as json;

/// The program pinned at `pin`, per bpftool (None: no program pinned there).
pub fn pinned_program(pin: &Path) -> Option<u64> {
    json(&format!("bpftool -j prog show pinned {} 2>/dev/null", pin.display())).ok()?["id"].as_u64()
}

/// The program the link pinned at `pin` runs, per bpftool (None: no link pinned there).
pub fn pinned_link_program(pin: &Path) -> Option<u64> {
    json(&format!("bpftool -j link show pinned {} 2>/dev/null", pin.display())).ok()?["prog_id"].as_u64()
}

/// Every link in the kernel: (link id, program id).
pub fn links() -> anyhow::Result<Vec<(u64, u64)>> {
    let v = json("bpftool -j link show")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["id"].as_u64()?, l["prog_id"].as_u64().unwrap_or(0))))
        .collect())
}

/// Every program id loaded in the kernel.
pub fn programs() -> anyhow::Result<std::collections::BTreeSet<u64>> {
    let v = json("bpftool -j prog show")?;
    Ok(v.as_array().into_iter().flatten().filter_map(|p| p["id"].as_u64()).collect())
}

/// Programs of the clsact (tc) filters on `ifname` in `netns`, both directions.
pub fn tc_filter_programs(netns: &str, ifname: &str) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for direction in ["ingress", "egress"] {
        // Without a clsact qdisc tc prints an error and no filter: nothing attached.
        let Ok(v) =
            json(&format!("nsenter --net=/run/netns/{netns} tc -j filter show dev {ifname} {direction} 2>/dev/null"))
        else {
            continue;
        };
        out.extend(v.as_array().into_iter().flatten().filter_map(|f| f["options"]["prog"]["id"].as_u64()));
    }
    Ok(out)
}

/// Program and link ids process `pid` holds descriptors of (`/proc/PID/fdinfo`).
pub fn held_by(pid: u32) -> (std::collections::BTreeSet<u64>, std::collections::BTreeSet<u64>) {
    let (mut progs, mut links) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let is_bpf = std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("anon_inode:bpf"));
        if !is_bpf {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
            .unwrap_or_default();
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok());
        if let Some(id) = field("link_id:") {
            links.insert(id);
        } else if let Some(id) = field("prog_id:") {
            progs.insert(id);
        }
    }
    (progs, links)
}

/// The u64 at key 0 of a pinned array map (little-endian), read by bpftool.
pub fn read_counter(pin: &Path) -> anyhow::Result<u64> {
    let out = sh(&format!("bpftool -j map lookup pinned {} key 0 0 0 0", pin.display()))?;
    parse_counter(&out)
}

/// The u64 under `key` (its bytes as the map stores them) in the hash map pinned at `pin`;
/// 0 when the map has no such entry.
pub fn read_keyed_counter(pin: &Path, key: &[u8]) -> anyhow::Result<u64> {
    let key: Vec<String> = key.iter().map(u8::to_string).collect();
    match sh(&format!("bpftool -j map lookup pinned {} key {}", pin.display(), key.join(" "))) {
        Ok(out) => parse_counter(&out),
        // Of a key the map lacks, `bpftool -j` prints `null` and fails (plain: "Not found").
        Err(e)
            if (e.to_string().trim_end().ends_with("null") || e.to_string().contains("Not found")) && pin.exists() =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// `bpftool -j map lookup` output: `{"key":[…],"value":["0x2a","0x00",…]}`.
pub fn parse_counter(json: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_str(json).with_context(|| format!("bpftool map lookup: {json}"))?;
    let Some(bytes) = v["value"].as_array() else { bail!("no value in {json}") };
    let mut buf = [0u8; 8];
    for (slot, b) in buf.iter_mut().zip(bytes) {
        let s = b.as_str().with_context(|| format!("value byte {b} is not a string"))?;
        *slot = u8::from_str_radix(s.trim_start_matches("0x"), 16).with_context(|| format!("value byte {s}"))?;
    }
    Ok(u64::from_le_bytes(buf))
}

/// Every file and directory under `root`, as sorted relative paths (none when missing).
pub use agent::testing::tree as pins_under;

/// Revision directories (16 hex characters) of one owner under a bpffs root.
pub fn revision_dirs(root: &Path, owner_uid: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root.join(owner_uid))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 16 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_show_single_and_multi() {
        let single =
            r#"[{"xdp":[{"devname":"eth0","ifindex":2,"mode":"generic","id":5522}],"tc":[],"flow_dissector":[]}]"#;
        assert_eq!(parse_net_show(single).unwrap(), vec![XdpAttachment { mode: "generic".into(), id: 5522 }]);
        let multi = r#"[{"xdp":[{"devname":"eth0","ifindex":2,"multi_attachments":[{"mode":"generic","id":1},{"mode":"driver","id":2}]}]}]"#;
        assert_eq!(parse_net_show(multi).unwrap().len(), 2);
        assert!(parse_net_show(r#"[{"xdp":[],"tc":[]}]"#).unwrap().is_empty());
    }

    #[test]
    fn counter_bytes_are_little_endian() {
        let json = r#"{"key":["0x00","0x00","0x00","0x00"],"value":["0x2a","0x01","0x00","0x00","0x00","0x00","0x00","0x00"]}"#;
        assert_eq!(parse_counter(json).unwrap(), 0x012a);
        assert!(parse_counter("{}").is_err());
    }
}
