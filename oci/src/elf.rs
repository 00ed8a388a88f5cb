//! What an eBPF object declares, in the vocabulary of bpfman's labels: program name ->
//! type (from its ELF section), map name -> type.

use std::collections::BTreeMap;

use aya_obj::obj::{EbpfSectionKind, ProgramSection};

use crate::error::{Error, Result};
use crate::layer::check_bpf_elf;
use crate::limits::MAX_ELF_BYTES;

/// The programs and maps of an object, as label values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfContents {
    pub programs: BTreeMap<String, String>,
    pub maps: BTreeMap<String, String>,
}

/// Parse `elf` (named `name` in messages) and list its programs and maps.
pub fn describe(name: &str, elf: &[u8]) -> Result<ElfContents> {
    if elf.len() as u64 > MAX_ELF_BYTES {
        return Err(Error::TooLarge { what: format!("{name} ({} bytes)", elf.len()), limit: MAX_ELF_BYTES });
    }
    check_bpf_elf(name, elf)?;
    let obj = aya_obj::Object::parse(elf)
        .map_err(|e| Error::NotBytecode { reason: format!("{name} is not a loadable eBPF object: {e}") })?;
    let programs = obj.programs.iter().map(|(n, p)| (n.clone(), section_type(&p.section).to_string())).collect();
    let maps = obj
        .maps
        .iter()
        .filter(|(_, m)| matches!(m.section_kind(), EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps))
        .map(|(n, m)| (n.clone(), map_type_name(m.map_type())))
        .collect();
    Ok(ElfContents { programs, maps })
}

/// The program type as bpfman's labels spell it (lowercase, snake case).
fn section_type(s: &ProgramSection) -> &'static str {
    match s {
        ProgramSection::KRetProbe => "kretprobe",
        ProgramSection::KProbe => "kprobe",
        ProgramSection::UProbe { .. } => "uprobe",
        ProgramSection::URetProbe { .. } => "uretprobe",
        ProgramSection::TracePoint => "tracepoint",
        ProgramSection::SocketFilter => "socket_filter",
        ProgramSection::Xdp { .. } => "xdp",
        ProgramSection::SkMsg => "sk_msg",
        ProgramSection::SkSkbStream { .. } => "sk_skb",
        ProgramSection::SockOps => "sockops",
        ProgramSection::SchedClassifier => "tc",
        ProgramSection::CgroupSkb { .. } => "cgroup_skb",
        ProgramSection::CgroupSockAddr { .. } => "cgroup_sock_addr",
        ProgramSection::CgroupSysctl => "cgroup_sysctl",
        ProgramSection::CgroupSockopt { .. } => "cgroup_sockopt",
        ProgramSection::LircMode2 => "lirc_mode2",
        ProgramSection::PerfEvent => "perf_event",
        ProgramSection::RawTracePoint => "raw_tracepoint",
        ProgramSection::Lsm { .. } | ProgramSection::LsmCgroup => "lsm",
        ProgramSection::BtfTracePoint => "tp_btf",
        ProgramSection::FEntry { .. } => "fentry",
        ProgramSection::FExit { .. } => "fexit",
        ProgramSection::FlowDissector => "flow_dissector",
        ProgramSection::Extension => "ext",
        ProgramSection::SkLookup => "sk_lookup",
        ProgramSection::SkReuseport { .. } => "sk_reuseport",
        ProgramSection::CgroupSock { .. } => "cgroup_sock",
        ProgramSection::CgroupDevice => "cgroup_device",
        ProgramSection::Iter { .. } => "iter",
        #[allow(unreachable_patterns)]
        _ => "unknown",
    }
}

/// `enum bpf_map_type` (include/uapi/linux/bpf.h) as snake-case names.
fn map_type_name(t: u32) -> String {
    const NAMES: [&str; 34] = [
        "unspec",
        "hash",
        "array",
        "prog_array",
        "perf_event_array",
        "per_cpu_hash",
        "per_cpu_array",
        "stack_trace",
        "cgroup_array",
        "lru_hash",
        "lru_per_cpu_hash",
        "lpm_trie",
        "array_of_maps",
        "hash_of_maps",
        "devmap",
        "sockmap",
        "cpumap",
        "xskmap",
        "sockhash",
        "cgroup_storage",
        "reuseport_sockarray",
        "per_cpu_cgroup_storage",
        "queue",
        "stack",
        "sk_storage",
        "devmap_hash",
        "struct_ops",
        "ring_buf",
        "inode_storage",
        "task_storage",
        "bloom_filter",
        "user_ring_buf",
        "cgrp_storage",
        "arena",
    ];
    NAMES.get(t as usize).map_or_else(|| format!("type_{t}"), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_bpf_is_refused() {
        assert_eq!(describe("x.o", b"hello").unwrap_err().kind(), crate::ErrorKind::NotBytecode);
        assert_eq!(map_type_name(6), "per_cpu_array");
        assert_eq!(map_type_name(99), "type_99");
    }
}
