//! What the operator may hold, sized from its container's memory limit (the chart's
//! `operator.resources.limits.memory`, 256 MiB by default), read from the cgroup at start.
//!
//! The formula (docs/security.md), with L the limit:
//!
//! | what                          | share  | bounds           | at 256 MiB | no limit |
//! |-------------------------------|--------|------------------|------------|----------|
//! | pulled images cache           | L / 8  | 16 MiB – 128 MiB | 32 MiB     | 128 MiB  |
//! | ConfigMap bytecode cache      | L / 16 | 8 MiB – 64 MiB   | 16 MiB     | 64 MiB   |
//! | registry answers in flight    | L / 8  | 16 MiB – 64 MiB  | 32 MiB     | 64 MiB   |
//! | image pulls at once           | L / 128 MiB | 1 – 4       | 2          | 4        |
//!
//! A pull holds at most a 16 MiB layer and its 16 MiB object besides what is in flight,
//! so the registry side stays under ~L/2 at 256 MiB (32 + 16 + 2 × 32 MiB), leaving the
//! rest to reconciles, watches and agent connections.

use std::path::Path;

const MIB: u64 = 1 << 20;

/// Sizes of the operator's caches and registry bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The limit they were computed from (`None`: no limit found).
    pub limit: Option<u64>,
    pub image_cache_bytes: usize,
    pub config_map_cache_bytes: usize,
    pub registry_bytes_in_flight: u64,
    pub max_pulls: usize,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::for_limit(None)
    }
}

impl MemoryBudget {
    pub fn for_limit(limit: Option<u64>) -> MemoryBudget {
        let share = |div: u64, lo: u64, hi: u64| limit.map_or(hi, |l| (l / div).clamp(lo, hi));
        MemoryBudget {
            limit,
            image_cache_bytes: share(8, 16 * MIB, 128 * MIB) as usize,
            config_map_cache_bytes: share(16, 8 * MIB, 64 * MIB) as usize,
            registry_bytes_in_flight: share(8, 16 * MIB, 64 * MIB),
            max_pulls: limit.map_or(4, |l| (l / (128 * MIB)).clamp(1, 4)) as usize,
        }
    }

    /// From this process's cgroup (v2 `memory.max`, else v1 `memory.limit_in_bytes`).
    pub fn from_cgroup() -> MemoryBudget {
        MemoryBudget::for_limit(cgroup_limit(Path::new("/sys/fs/cgroup")))
    }
}

/// The memory limit under a cgroup mount; `None` when there is none (or it is "max").
pub fn cgroup_limit(root: &Path) -> Option<u64> {
    ["memory.max", "memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|f| std::fs::read_to_string(root.join(f)).ok())
        .and_then(|s| parse_limit(&s))
}

/// `max` (v2) and v1's "unlimited" (a page-rounded `i64::MAX`) are no limit.
pub fn parse_limit(s: &str) -> Option<u64> {
    let n: u64 = s.trim().parse().ok()?;
    (n > 0 && n < 1 << 60).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_default_limit_gives_the_documented_sizes() {
        let b = MemoryBudget::for_limit(Some(256 * MIB));
        assert_eq!(b.image_cache_bytes, 32 << 20);
        assert_eq!(b.config_map_cache_bytes, 16 << 20);
        assert_eq!(b.registry_bytes_in_flight, 32 << 20);
        assert_eq!(b.max_pulls, 2);
        let none = MemoryBudget::for_limit(None);
        assert_eq!((none.image_cache_bytes, none.config_map_cache_bytes, none.max_pulls), (128 << 20, 64 << 20, 4));
        let tiny = MemoryBudget::for_limit(Some(64 * MIB));
        assert_eq!((tiny.image_cache_bytes, tiny.registry_bytes_in_flight, tiny.max_pulls), (16 << 20, 16 << 20, 1));
        let big = MemoryBudget::for_limit(Some(64 << 30));
        assert_eq!((big.image_cache_bytes, big.max_pulls), (128 << 20, 4));
    }

    #[test]
    fn cgroup_files() {
        assert_eq!(parse_limit("268435456\n"), Some(256 * MIB));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712"), None, "cgroup v1 unlimited");
        assert_eq!(parse_limit("0"), None);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_limit(dir.path()), None);
        std::fs::create_dir(dir.path().join("memory")).unwrap();
        std::fs::write(dir.path().join("memory/memory.limit_in_bytes"), "134217728").unwrap();
        assert_eq!(cgroup_limit(dir.path()), Some(128 * MIB), "v1");
        std::fs::write(dir.path().join("memory.max"), "268435456").unwrap();
        assert_eq!(cgroup_limit(dir.path()), Some(256 * MIB), "v2 first");
    }
}
