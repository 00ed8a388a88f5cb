//! Probe: read-only readings of one owner's running revision for the operator's health
//! gates. Each program's kernel run count and run time (`bpf_prog_info`), and map entries
//! read by an integer key. Nothing of the owner changes; a stats lease only keeps the
//! kernel's run counting on (see `stats`). `server.rs` converts the wire to a
//! [`ProbeInput`] and a [`Reading`] back.
//!
//! A value is the entry's first 8 bytes (fewer for a smaller value), little-endian,
//! summed over CPUs for a per-CPU map: a counter as a program keeps one.

use std::os::fd::AsFd;
use std::time::Duration;

use aya::maps::{MapInfo, MapType};
use aya::programs::ProgramInfo;
use crds::names::{MapName, OwnerUid};

use crate::error::Result;
use crate::manager::Manager;
use crate::request::invalid;
use crate::stats::RunCounting;
use crate::store::{OwnerRecord, ProgramRecord};

/// Most map entries one Probe reads (16 checks of a health spec, each with a divisor).
pub const MAX_READS: usize = 32;
/// Longest stats lease one Probe asks for.
pub const MAX_LEASE_SECONDS: u32 = 600;

/// A checked Probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeInput {
    pub uid: OwnerUid,
    pub reads: Vec<MapRead>,
    /// Keep run counting on this long from now.
    pub lease: Option<Duration>,
}

/// One entry to read: a map of the owner by its ELF name, and the key as an integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRead {
    pub map: MapName,
    pub key: u64,
}

/// What a Probe answers. `revision` is empty when the owner runs nothing here (and then
/// nothing else is filled in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub revision: String,
    pub programs: Vec<Runs>,
    /// One per read, in the request's order: the value, or why it could not be read.
    pub values: Vec<(MapRead, Result<u64, String>)>,
    pub stats_enabled: bool,
}

/// A program's kernel run statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runs {
    pub name: String,
    /// The kernel's id of the program; 0 when its pin no longer opens (the program is not
    /// in the kernel as recorded: List reports the owner unhealthy).
    pub program_id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Check a Probe's fields: a valid owner uid, at most [`MAX_READS`] reads of valid map
/// names, a lease of at most [`MAX_LEASE_SECONDS`].
pub fn check(owner_uid: &str, reads: Vec<(String, u64)>, lease_seconds: u32) -> Result<ProbeInput> {
    let uid = OwnerUid::new(owner_uid).map_err(|e| invalid(format!("Probe owner_uid: {e}")))?;
    if reads.len() > MAX_READS {
        return Err(invalid(format!(
            "Probe asks for {} map reads; at most {MAX_READS} are allowed in one Probe: split them",
            reads.len()
        )));
    }
    if lease_seconds > MAX_LEASE_SECONDS {
        return Err(invalid(format!(
            "Probe stats_lease_seconds is {lease_seconds}; at most {MAX_LEASE_SECONDS} are allowed (probe again to extend)"
        )));
    }
    let reads = reads
        .into_iter()
        .enumerate()
        .map(|(i, (map, key))| {
            let map = MapName::new(map).map_err(|e| invalid(format!("Probe reads[{i}].map: {e}")))?;
            Ok(MapRead { map, key })
        })
        .collect::<Result<Vec<_>>>()?;
    let lease = (lease_seconds > 0).then(|| Duration::from_secs(u64::from(lease_seconds)));
    Ok(ProbeInput { uid, reads, lease })
}

/// Answer a Probe: take its lease when the owner runs something, then read the running
/// revision. Blocking kernel calls: run it off the async workers.
pub fn probe(manager: &Manager, counting: &std::sync::Arc<RunCounting>, input: &ProbeInput) -> Reading {
    let Some(mut record) = manager.record_of(input.uid.as_str()) else { return Reading::default() };
    if let Some(length) = input.lease {
        counting.lease(length);
    }
    // An Apply that commits meanwhile removes the old revision's program pins: read the
    // new revision once more rather than report its predecessor's programs as gone.
    let mut reading = read(&record, &input.reads);
    if reading.programs.iter().any(|p| p.program_id == 0)
        && let Some(now) = manager.record_of(input.uid.as_str())
        && now.revision != record.revision
    {
        record = now;
        reading = read(&record, &input.reads);
    }
    reading.stats_enabled = counting.enabled();
    reading
}

/// The readings of one record's programs and of `reads` in its maps.
fn read(record: &OwnerRecord, reads: &[MapRead]) -> Reading {
    let cpus = aya::util::nr_cpus().map_err(|(file, e)| format!("cannot count the possible CPUs ({file}: {e})"));
    Reading {
        revision: record.revision.clone(),
        programs: record.programs.iter().map(runs).collect(),
        values: reads.iter().map(|r| (r.clone(), read_entry(record, r, &cpus))).collect(),
        stats_enabled: false,
    }
}

/// A program's run statistics as the kernel counts them.
fn runs(p: &ProgramRecord) -> Runs {
    match ProgramInfo::from_pin(&p.pin) {
        Ok(info) => Runs {
            name: p.name.clone(),
            program_id: info.id(),
            run_count: info.run_count(),
            run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        },
        Err(e) => {
            tracing::warn!(program = %p.name, pin = %p.pin.display(), error = %e, "Probe: the program's pin does not open");
            Runs { name: p.name.clone(), program_id: 0, run_count: 0, run_time_ns: 0 }
        }
    }
}

/// Most map names an error lists.
const LISTED_MAPS: usize = 8;

/// One entry of the record's map `read.map`, or why it cannot be read, in words.
fn read_entry(record: &OwnerRecord, read: &MapRead, cpus: &Result<usize, String>) -> Result<u64, String> {
    let name = read.map.as_str();
    let Some(map) = record.maps.iter().find(|m| m.name == name) else {
        return Err(no_such_map(record, name));
    };
    // The shape and the descriptor come from one map: a pin replaced between two opens
    // could otherwise size the buffer for another map than the one read.
    let info = MapInfo::from_pin(&map.pin_path)
        .map_err(|e| format!("map {name:?} cannot be opened at {}: {e}", map.pin_path.display()))?;
    let shape = Shape {
        kind: kind(info.map_type().ok(), name)?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    let key = shape.key(name, read.key)?;
    let cpus = if shape.kind.per_cpu { cpus.clone()? } else { 1 };
    let fd = info.fd().map_err(|e| format!("map {name:?} cannot be opened: {e}"))?;
    let mut value = vec![0u8; shape.value_len(cpus)];
    match crate::maps::dump::lookup(fd.as_fd(), &key, &mut value) {
        Ok(true) => Ok(shape.sum(&value)),
        Ok(false) => Err(shape.no_entry(name, read.key)),
        Err(e) => Err(format!("reading map {name:?} at key {} failed: {e}", read.key)),
    }
}

pub(crate) fn no_such_map(record: &OwnerRecord, name: &str) -> String {
    let names: Vec<&str> = record.maps.iter().map(|m| m.name.as_str()).collect();
    let listed = match names.len() {
        0 => "it has no pinned maps".to_string(),
        n if n <= LISTED_MAPS => format!("its maps: {}", names.join(", ")),
        n => format!("its maps: {}, and {} more", names[..LISTED_MAPS].join(", "), n - LISTED_MAPS),
    };
    format!("revision {} of this owner has no map {name:?} ({listed})", record.revision)
}

/// How Probe reads a map's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kind {
    /// An array (keys 0 to max_entries - 1), else a hash.
    array: bool,
    /// One value per possible CPU.
    per_cpu: bool,
}

/// Array and hash maps, plain, LRU or per-CPU: the kinds a counter lives in, whose lookup
/// fills a buffer of a size their shape gives. Others are refused, naming their type.
fn kind(map_type: Option<MapType>, name: &str) -> Result<Kind, String> {
    let (array, per_cpu) = match map_type {
        Some(MapType::Array) => (true, false),
        Some(MapType::PerCpuArray) => (true, true),
        Some(MapType::Hash | MapType::LruHash) => (false, false),
        Some(MapType::PerCpuHash | MapType::LruPerCpuHash) => (false, true),
        other => {
            let what =
                other.map_or_else(|| "map of a type this agent does not know".to_string(), |t| format!("{t:?} map"));
            return Err(format!(
                "map {name:?} is a {what}; Probe reads array and hash maps (plain, LRU or per-CPU) only"
            ));
        }
    };
    Ok(Kind { array, per_cpu })
}

/// A map's shape as the kernel reports it.
#[derive(Clone, Copy, Debug)]
struct Shape {
    kind: Kind,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl Shape {
    /// The key as the map stores it: `key` little-endian in the map's 4- or 8-byte keys.
    fn key(&self, name: &str, key: u64) -> Result<Vec<u8>, String> {
        match self.key_size {
            4 => u32::try_from(key)
                .map(|k| k.to_le_bytes().to_vec())
                .map_err(|_| format!("key {key} does not fit map {name:?}'s 4-byte keys")),
            8 => Ok(key.to_le_bytes().to_vec()),
            n => Err(format!(
                "map {name:?} has {n}-byte keys; Probe reads maps whose keys are 4 or 8 bytes (an integer, e.g. an array index)"
            )),
        }
    }

    /// Bytes between two CPUs' values: each is rounded up to 8 bytes, as the kernel
    /// lays them out.
    fn stride(&self) -> usize {
        let size = self.value_size as usize;
        if self.kind.per_cpu { size.next_multiple_of(8) } else { size }
    }

    /// The size of the buffer a lookup fills: the value, or one per possible CPU.
    fn value_len(&self, cpus: usize) -> usize {
        if self.kind.per_cpu { self.stride() * cpus } else { self.stride() }
    }

    /// The value's first 8 bytes (fewer when it is smaller) as a little-endian unsigned
    /// integer; for a per-CPU map the sum over every CPU (wrapping, as a counter does).
    fn sum(&self, buf: &[u8]) -> u64 {
        let stride = self.stride();
        if stride == 0 {
            return 0;
        }
        buf.chunks(stride).fold(0u64, |sum, value| {
            let mut le = [0u8; 8];
            let n = value.len().min(8);
            le[..n].copy_from_slice(&value[..n]);
            sum.wrapping_add(u64::from_le_bytes(le))
        })
    }

    /// Why a lookup found nothing: an array's keys stop at its size, a hash has no such key.
    fn no_entry(&self, name: &str, key: u64) -> String {
        if self.kind.array && key >= u64::from(self.max_entries) {
            let last = self.max_entries.saturating_sub(1);
            return format!(
                "map {name:?} has no entry at key {key}: it is an array of {} entries (keys 0 to {last})",
                self.max_entries
            );
        }
        format!("map {name:?} has no entry at key {key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARRAY: Kind = Kind { array: true, per_cpu: false };
    const HASH: Kind = Kind { array: false, per_cpu: false };
    const PER_CPU_ARRAY: Kind = Kind { array: true, per_cpu: true };
    const PER_CPU_HASH: Kind = Kind { array: false, per_cpu: true };

    fn shape(kind: Kind, key_size: u32, value_size: u32, max_entries: u32) -> Shape {
        Shape { kind, key_size, value_size, max_entries }
    }

    #[test]
    fn requests_out_of_bounds_are_refused_with_what_to_fix() {
        let ok = check("uid-1", vec![("counters".into(), 7)], 600).unwrap();
        assert_eq!(ok.reads, vec![MapRead { map: MapName::new("counters").unwrap(), key: 7 }]);
        assert_eq!(ok.lease, Some(Duration::from_secs(600)));
        assert_eq!(check("uid-1", vec![], 0).unwrap().lease, None);

        let many = (0..33).map(|i| ("counters".to_string(), i)).collect();
        let e = check("uid-1", many, 0).unwrap_err();
        assert!(e.message.contains("33 map reads") && e.message.contains("at most 32"), "{}", e.message);
        assert!(check("uid-1", (0..32).map(|i| ("c".to_string(), i)).collect(), 0).is_ok());
        let e = check("uid-1", vec![], 601).unwrap_err();
        assert!(e.message.contains("601") && e.message.contains("at most 600"), "{}", e.message);
        let e = check("Bad/Uid", vec![], 0).unwrap_err();
        assert!(e.message.contains("owner_uid"), "{}", e.message);
        let e = check("uid-1", vec![("ok".into(), 0), ("../x".into(), 0)], 0).unwrap_err();
        assert!(e.message.contains("reads[1].map"), "{}", e.message);
        for e in [check("uid-1", vec![], 601).unwrap_err(), check("", vec![], 0).unwrap_err()] {
            assert_eq!(e.reason, crate::error::Reason::InvalidSpec);
        }
    }

    #[test]
    fn keys_are_little_endian_in_the_maps_key_size() {
        let array = shape(ARRAY, 4, 8, 4);
        assert_eq!(array.key("a", 7).unwrap(), [7, 0, 0, 0]);
        assert_eq!(array.key("a", 0x0102_0304).unwrap(), [4, 3, 2, 1]);
        assert_eq!(array.key("a", u64::from(u32::MAX)).unwrap(), [0xff; 4]);
        assert_eq!(array.key("a", 1 << 32).unwrap_err(), "key 4294967296 does not fit map \"a\"'s 4-byte keys");
        assert_eq!(shape(HASH, 8, 8, 4).key("h", 1 << 32).unwrap(), [0, 0, 0, 0, 1, 0, 0, 0]);
        let e = shape(HASH, 16, 8, 4).key("wide", 1).unwrap_err();
        assert!(e.contains("16-byte keys") && e.contains("4 or 8 bytes"), "{e}");
    }

    #[test]
    fn values_are_the_first_8_bytes_summed_over_cpus() {
        // A plain u64, a shorter u32 value, a longer value (only its first 8 bytes).
        assert_eq!(shape(ARRAY, 4, 8, 1).sum(&42u64.to_le_bytes()), 42);
        assert_eq!(shape(ARRAY, 4, 4, 1).sum(&[5, 1, 0, 0]), 261);
        let mut long = 9u64.to_le_bytes().to_vec();
        long.extend([0xff; 8]);
        assert_eq!(shape(HASH, 4, 16, 1).sum(&long), 9);
        assert_eq!(shape(HASH, 8, 12, 1).value_len(64), 12, "one value, whatever the CPUs");
        // Per CPU: a 12-byte value takes 16 bytes per CPU; the tail of each is not read.
        let cpu = |n: u64| {
            let mut v = n.to_le_bytes().to_vec();
            v.extend([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
            v
        };
        let wide = shape(PER_CPU_ARRAY, 4, 12, 1);
        assert_eq!(wide.value_len(3), 48);
        assert_eq!(wide.sum(&[cpu(1), cpu(20), cpu(300)].concat()), 321);
        // A 4-byte per-CPU value is padded to 8; the padding is zero.
        let small = shape(PER_CPU_HASH, 8, 4, 1);
        assert_eq!(small.value_len(2), 16);
        assert_eq!(small.sum(&[3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]), 7);
        // Counters wrap as they do in the kernel.
        let buf = [u64::MAX.to_le_bytes(), 2u64.to_le_bytes()].concat();
        assert_eq!(shape(PER_CPU_ARRAY, 4, 8, 1).sum(&buf), 1);
    }

    #[test]
    fn only_array_and_hash_maps_are_read() {
        assert_eq!(kind(Some(MapType::Array), "m"), Ok(ARRAY));
        assert_eq!(kind(Some(MapType::PerCpuArray), "m"), Ok(PER_CPU_ARRAY));
        for t in [MapType::Hash, MapType::LruHash] {
            assert_eq!(kind(Some(t), "m"), Ok(HASH));
        }
        for t in [MapType::PerCpuHash, MapType::LruPerCpuHash] {
            assert_eq!(kind(Some(t), "m"), Ok(PER_CPU_HASH));
        }
        // Ring buffers, program arrays, per-CPU cgroup storage (whose lookups fill other
        // sizes) and types this aya does not know.
        let e = kind(Some(MapType::RingBuf), "events").unwrap_err();
        assert!(e.contains("\"events\" is a RingBuf map") && e.contains("array and hash"), "{e}");
        for t in [Some(MapType::ProgramArray), Some(MapType::PerCpuCgroupStorage), None] {
            assert!(kind(t, "m").is_err(), "{t:?}");
        }
        assert!(kind(None, "m").unwrap_err().contains("a type this agent does not know"));
    }

    #[test]
    fn a_missing_entry_says_which_keys_an_array_has() {
        assert_eq!(
            shape(ARRAY, 4, 8, 4).no_entry("counters", 7),
            "map \"counters\" has no entry at key 7: it is an array of 4 entries (keys 0 to 3)"
        );
        assert_eq!(shape(PER_CPU_ARRAY, 4, 8, 4).no_entry("c", 2), "map \"c\" has no entry at key 2");
        assert_eq!(shape(PER_CPU_HASH, 8, 8, 4).no_entry("per_key", 7), "map \"per_key\" has no entry at key 7");
    }

    #[test]
    fn an_unknown_map_names_the_maps_there_are() {
        let record = |n: usize| OwnerRecord {
            schema: 1,
            uid: "u".into(),
            name: "n".into(),
            revision: "0123456789abcdef".into(),
            spec: vec![],
            programs: vec![],
            maps: (0..n)
                .map(|i| crate::store::MapRecord { name: format!("m{i}"), pin_path: format!("/x/m{i}").into() })
                .collect(),
            bytecode_digest: None,
            maps_recreated: vec![],
            metrics: vec![],
            pods: vec![],
        };
        assert_eq!(
            no_such_map(&record(2), "counters"),
            "revision 0123456789abcdef of this owner has no map \"counters\" (its maps: m0, m1)"
        );
        assert!(no_such_map(&record(0), "c").contains("it has no pinned maps"));
        let many = no_such_map(&record(20), "c");
        assert!(many.contains("m7, and 12 more") && !many.contains("m8"), "{many}");
    }
}
