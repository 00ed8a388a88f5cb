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

/// The kernel has link `id`.
pub fn link_exists(id: u64) -> bool {
    sh(&format!("bpftool link show id {id} >/dev/null 2>&1")).is_ok()
}

/// The u64 at key 0 of a pinned array map (little-endian), read by bpftool.
pub fn read_counter(pin: &Path) -> anyhow::Result<u64> {
    let out = sh(&format!("bpftool -j map lookup pinned {} key 0 0 0 0", pin.display()))?;
    parse_counter(&out)
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

/// Every file and directory under `root`, as sorted relative paths ("" when missing).
pub fn pins_under(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.display().to_string());
            }
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

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
