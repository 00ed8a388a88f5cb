//! Reading a map's entries for people (`kubectl bpfleet maps` through ReadMaps): every
//! key in the kernel's order, its value (one per possible CPU for a per-CPU map), and the
//! BTF the map was created with so the reader can name fields. Read-only and bounded: a
//! budget of entries, bytes and time covers one answer, and running out is said, never
//! hidden. Decoding is the reader's: the agent sends bytes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Instant;

use super::info::{self, KernelMap};

/// Entries one answer holds at most (a request may ask fewer).
pub const MAX_ENTRIES: u32 = 100_000;
/// Entries per map when a request does not say.
pub const DEFAULT_ENTRIES: u32 = 10_000;
/// Bytes of keys, values and BTF in one answer at most (under the gRPC answer limit).
pub const MAX_BYTES: u32 = crds::mapread::MAX_NODE_BYTES;
/// Bytes counted per key and per value on top of their own (allocations, wire framing).
const ENTRY_OVERHEAD: usize = 32;
/// Longest a read may take, in milliseconds (a request may ask less).
pub const MAX_MILLIS: u32 = 10_000;
/// When a request does not say.
pub const DEFAULT_MILLIS: u32 = 2_000;

/// What one answer may still spend.
#[derive(Clone, Debug)]
pub struct Budget {
    pub entries_per_map: u32,
    pub bytes: usize,
    pub deadline: Instant,
}

/// One map's entries as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    pub name: String,
    pub kernel: KernelMap,
    /// The map type's name (`Hash`, `PerCpuArray`, …), or its number when unknown.
    pub type_name: String,
    /// Values per entry: the possible CPUs of a per-CPU map, else 1.
    pub values_per_entry: u32,
    /// The map's BTF (empty without), and why it is missing when the map has some.
    pub btf: Vec<u8>,
    pub btf_note: String,
    pub entries: Vec<Entry>,
    /// Why not every entry is here (a limit reached), in words; empty when all are.
    pub truncated: String,
    /// Why the map could not be read at all; empty when it was.
    pub error: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    /// One value, or one per possible CPU (each `value_size` bytes).
    pub values: Vec<Vec<u8>>,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// Kernel map type names by number (`enum bpf_map_type`), spelled as aya spells them.
const TYPE_NAMES: [&str; 34] = [
    "Unspecified",
    "Hash",
    "Array",
    "ProgramArray",
    "PerfEventArray",
    "PerCpuHash",
    "PerCpuArray",
    "StackTrace",
    "CgroupArray",
    "LruHash",
    "LruPerCpuHash",
    "LpmTrie",
    "ArrayOfMaps",
    "HashOfMaps",
    "DevMap",
    "SockMap",
    "CpuMap",
    "XskMap",
    "SockHash",
    "CgroupStorage",
    "ReuseportSockArray",
    "PerCpuCgroupStorage",
    "Queue",
    "Stack",
    "SkStorage",
    "DevMapHash",
    "StructOps",
    "RingBuf",
    "InodeStorage",
    "TaskStorage",
    "BloomFilter",
    "UserRingBuf",
    "CgrpStorage",
    "Arena",
];
const PERF_EVENT_ARRAY: u32 = 4;
const PER_CPU_HASH: u32 = 5;
const PER_CPU_ARRAY: u32 = 6;
const LRU_PER_CPU_HASH: u32 = 10;
const PER_CPU_CGROUP_STORAGE: u32 = 21;
const QUEUE: u32 = 22;
const STACK: u32 = 23;
const RING_BUF: u32 = 27;
const BLOOM_FILTER: u32 = 30;
const USER_RING_BUF: u32 = 31;

/// Kernel map types whose values are one per possible CPU.
pub fn per_cpu(map_type: u32) -> bool {
    matches!(map_type, PER_CPU_HASH | PER_CPU_ARRAY | LRU_PER_CPU_HASH | PER_CPU_CGROUP_STORAGE)
}

/// Types whose entries a lookup by key cannot give (events flow through them instead).
fn not_readable(map_type: u32) -> Option<&'static str> {
    Some(match map_type {
        RING_BUF | USER_RING_BUF => "a ring buffer holds events for one consumer, not entries",
        PERF_EVENT_ARRAY => "a perf event array holds event buffers, not entries",
        QUEUE | STACK => "it has no keys (reading it would consume it)",
        BLOOM_FILTER => "a bloom filter answers membership only",
        _ => return None,
    })
}

/// The name of kernel map type `n`.
pub fn type_name(n: u32) -> String {
    TYPE_NAMES.get(n as usize).map_or_else(|| format!("type {n}"), |s| (*s).to_string())
}

/// Read the map pinned at `pin` (named `name` in its ELF object) within `budget`, which
/// the read spends.
pub fn dump(name: &str, pin: &Path, budget: &mut Budget) -> Dump {
    let mut dump = Dump { name: name.to_string(), values_per_entry: 1, ..Default::default() };
    let fd = match crate::kernel::obj_get(pin) {
        Ok(fd) => fd,
        Err(e) => {
            dump.error = format!("the map's pin {} does not open: {e}", pin.display());
            return dump;
        }
    };
    let kernel = match info::map_info(fd.as_fd()) {
        Ok(k) => k,
        Err(e) => {
            dump.error = format!("the kernel did not describe the map: {e}");
            return dump;
        }
    };
    dump.type_name = type_name(kernel.map_type);
    dump.kernel = kernel.clone();
    if let Some(why) = not_readable(kernel.map_type) {
        dump.error = format!("{} map: {why}", dump.type_name);
        return dump;
    }
    if per_cpu(kernel.map_type) {
        match aya::util::nr_cpus() {
            Ok(n) => dump.values_per_entry = n as u32,
            Err((file, e)) => {
                dump.error = format!("cannot count the possible CPUs ({file}: {e})");
                return dump;
            }
        }
    }
    if kernel.btf_id != 0 && kernel.btf_value_type_id != 0 {
        match info::btf_blob(kernel.btf_id) {
            Ok(blob) if blob.len() <= budget.bytes => {
                budget.bytes -= blob.len();
                dump.btf = blob;
            }
            Ok(blob) => {
                dump.btf_note = format!("the map's BTF ({} bytes) is over what is left of the answer", blob.len())
            }
            Err(e) => dump.btf_note = format!("the map's BTF (id {}) could not be read: {e}", kernel.btf_id),
        }
    } else {
        dump.btf_note = "the map was created without BTF for its key and value".into();
    }
    read_entries(fd.as_fd(), &kernel, &mut dump, budget);
    dump
}

/// Walk the keys with BPF_MAP_GET_NEXT_KEY and look each up, until the end or the budget.
fn read_entries(fd: BorrowedFd<'_>, kernel: &KernelMap, dump: &mut Dump, budget: &mut Budget) {
    let key_size = kernel.key_size as usize;
    let stride = if dump.values_per_entry > 1 {
        (kernel.value_size as usize).next_multiple_of(8)
    } else {
        kernel.value_size as usize
    };
    let value_len = stride * dump.values_per_entry as usize;
    // What an entry costs whoever holds the answer: its bytes and their framing (a key and
    // a value per CPU, each a separate allocation and a field on the wire).
    let entry_bytes = key_size + value_len + ENTRY_OVERHEAD * (1 + dump.values_per_entry as usize);
    // A hash map walked while entries are deleted starts again from its first key when the
    // key walked from is gone: a key seen twice ends the walk instead of repeating it.
    let mut seen = std::collections::HashSet::new();
    let mut key: Option<Vec<u8>> = None;
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; value_len];
    loop {
        match next_key(fd, key.as_deref(), &mut next) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                dump.truncated = format!("listing keys stopped after {} entries: {e}", dump.entries.len());
                return;
            }
        }
        if dump.entries.len() >= budget.entries_per_map as usize {
            dump.truncated = format!(
                "the map has more than {} entries: only the first {} are here (ask for more entries, at most {MAX_ENTRIES})",
                dump.entries.len(),
                dump.entries.len()
            );
            return;
        }
        if entry_bytes > budget.bytes {
            dump.truncated = format!(
                "the answer's byte limit was reached after {} entries: read one map at a time or ask fewer entries",
                dump.entries.len()
            );
            return;
        }
        if Instant::now() >= budget.deadline {
            dump.truncated = format!("the read's time limit ran out after {} entries", dump.entries.len());
            return;
        }
        if !seen.insert(next.clone()) {
            dump.truncated = format!(
                "the map changed while it was read (entries deleted meanwhile): {} entries, each once",
                dump.entries.len()
            );
            return;
        }
        match lookup(fd, &next, &mut value) {
            // Deleted since its key was listed: nothing to show, and the walk goes on from
            // the key before it.
            Ok(false) => continue,
            Ok(true) => {
                budget.bytes -= entry_bytes;
                let values =
                    value.chunks(stride.max(1)).map(|v| v[..kernel.value_size as usize].to_vec()).collect::<Vec<_>>();
                dump.entries.push(Entry { key: next.clone(), values });
            }
            Err(e) => {
                dump.truncated = format!("looking up an entry failed after {} entries: {e}", dump.entries.len());
                return;
            }
        }
        key = Some(next.clone());
    }
}

/// BPF_MAP_GET_NEXT_KEY: the key after `key` (the first with None) into `next`; false at
/// the end.
fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> std::io::Result<bool> {
    let attr: [u64; 3] =
        [u64::from(fd.as_raw_fd() as u32), key.map_or(0, |k| k.as_ptr() as u64), next.as_mut_ptr() as u64];
    // SAFETY: `key` (when given) is readable and `next` writable for the map's key size
    // (the caller sized them from this map's own info); both outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) { Ok(false) } else { Err(e) };
    }
    Ok(true)
}

/// BPF_MAP_LOOKUP_ELEM of `key` into `value`; false when there is no such entry. `key`
/// and `value` must be the sizes the map's own info gives (a value per possible CPU for a
/// per-CPU map).
pub(crate) fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> std::io::Result<bool> {
    let attr: [u64; 4] = [u64::from(fd.as_raw_fd() as u32), key.as_ptr() as u64, value.as_mut_ptr() as u64, 0];
    // SAFETY: `key` is readable and `value` writable for the sizes the caller took from
    // this map's info; both outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_ELEM, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) { Ok(false) } else { Err(e) };
    }
    Ok(true)
}

/// A checked ReadMaps: whose maps, which one (all when None), and the budget.
#[derive(Clone, Debug)]
pub struct ReadInput {
    pub uid: crds::names::OwnerUid,
    pub map: Option<crds::names::MapName>,
    pub budget: Budget,
}

/// Check a ReadMaps request's fields: a valid owner uid and map name, limits within the
/// agent's (0 takes the default).
pub fn check(
    owner_uid: &str,
    map: &str,
    max_entries: u32,
    max_bytes: u32,
    timeout_ms: u32,
) -> crate::error::Result<ReadInput> {
    use crate::request::invalid;
    let uid = crds::names::OwnerUid::new(owner_uid).map_err(|e| invalid(format!("ReadMaps owner_uid: {e}")))?;
    let map = (!map.is_empty())
        .then(|| crds::names::MapName::new(map).map_err(|e| invalid(format!("ReadMaps map: {e}"))))
        .transpose()?;
    let bounded = |what: &str, asked: u32, default: u32, max: u32| match asked {
        0 => Ok(default),
        n if n <= max => Ok(n),
        n => Err(invalid(format!("ReadMaps {what} is {n}; at most {max} are allowed"))),
    };
    let entries = bounded("max_entries", max_entries, DEFAULT_ENTRIES, MAX_ENTRIES)?;
    let bytes = bounded("max_bytes", max_bytes, MAX_BYTES, MAX_BYTES)?;
    let millis = bounded("timeout_ms", timeout_ms, DEFAULT_MILLIS, MAX_MILLIS)?;
    let deadline = Instant::now() + std::time::Duration::from_millis(u64::from(millis));
    Ok(ReadInput { uid, map, budget: Budget { entries_per_map: entries, bytes: bytes as usize, deadline } })
}

/// Read the maps of `record`'s running revision (one when `map` names it). A name the
/// revision does not have is an error listing the ones it has.
pub fn read_record(
    record: &crate::store::OwnerRecord,
    map: Option<&crds::names::MapName>,
    budget: &mut Budget,
) -> crate::error::Result<Vec<Dump>> {
    let chosen: Vec<_> = match map {
        Some(name) => {
            let found = record.maps.iter().find(|m| m.name == name.as_str());
            let found = found.ok_or_else(|| {
                crate::request::invalid(format!("ReadMaps: {}", crate::probe::no_such_map(record, name.as_str())))
            })?;
            vec![found]
        }
        None => record.maps.iter().collect(),
    };
    Ok(chosen.into_iter().map(|m| dump(&m.name, &m.pin_path, budget)).collect())
}
