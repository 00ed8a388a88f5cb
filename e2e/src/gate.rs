//! How many nodes are between two revisions at once, seen from the agents themselves.
//!
//! Every e2e agent runs with `BPFLEET_PAUSE=after-attach:<node dir>/gate` (a
//! `test-support` fault point): while that directory exists, an apply that attached its
//! new revision and has not committed it yet (the old one still attached) creates a flag
//! file there and waits until the file is removed. [`ApplyGate`] opens the gates of
//! some nodes, holds each waiting apply for a while so that overlaps show, releases it,
//! and records the most nodes it saw waiting at the same moment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an [`ApplyGate`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Most nodes holding an apply between revisions at the same moment.
    pub max_concurrent: usize,
    /// Applies held, per node.
    pub applies: BTreeMap<String, usize>,
}

pub struct ApplyGate {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<GateStats>>,
    dirs: Vec<PathBuf>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApplyGate {
    /// Open the gates of `nodes` (name, gate directory); hold each apply `hold`.
    pub fn open(nodes: Vec<(String, PathBuf)>, hold: Duration) -> ApplyGate {
        for (_, dir) in &nodes {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("gate {}: {e}", dir.display()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(GateStats::default()));
        let dirs = nodes.iter().map(|(_, d)| d.clone()).collect();
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::spawn(move || watch(nodes, hold, stop, stats))
        };
        ApplyGate { stop, stats, dirs, thread: Some(thread) }
    }

    pub fn stats(&self) -> GateStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Close the gates (waiting applies go on at once) and return what was seen.
    pub fn close(mut self) -> GateStats {
        self.shut();
        self.stats()
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Drop for ApplyGate {
    fn drop(&mut self) {
        self.shut();
    }
}

fn watch(nodes: Vec<(String, PathBuf)>, hold: Duration, stop: Arc<AtomicBool>, stats: Arc<Mutex<GateStats>>) {
    let mut seen: BTreeMap<PathBuf, (String, Instant)> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        let mut now_waiting = BTreeSet::new();
        for (name, dir) in &nodes {
            for flag in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = flag.path();
                now_waiting.insert(name.clone());
                let first = seen.entry(path.clone()).or_insert_with(|| {
                    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                    *s.applies.entry(name.clone()).or_default() += 1;
                    (name.clone(), Instant::now())
                });
                if first.1.elapsed() >= hold {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        seen.retain(|p, _| p.exists());
        {
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.max_concurrent = s.max_concurrent.max(now_waiting.len());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two "agents" wait at the same time; the gate sees both and releases both.
    #[test]
    fn counts_overlapping_waits_and_releases_them() {
        let base = std::env::temp_dir().join(format!("bpfleet-gate-{}", crate::util::random_suffix()));
        let nodes: Vec<(String, PathBuf)> = (0..3).map(|i| (format!("n{i}"), base.join(format!("n{i}")))).collect();
        let gate = ApplyGate::open(nodes.clone(), Duration::from_millis(200));
        let waiters: Vec<_> = nodes[..2]
            .iter()
            .map(|(_, dir)| {
                let flag = dir.join("after-attach.owner");
                std::fs::write(&flag, b"").unwrap();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    while flag.exists() {
                        assert!(t.elapsed() < Duration::from_secs(10), "never released");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    t.elapsed()
                })
            })
            .collect();
        for w in waiters {
            assert!(w.join().unwrap() >= Duration::from_millis(150), "held for about the hold time");
        }
        let stats = gate.close();
        assert_eq!(stats.max_concurrent, 2);
        assert_eq!(stats.applies, BTreeMap::from([("n0".to_string(), 1), ("n1".to_string(), 1)]));
        let _ = std::fs::remove_dir_all(base);
    }
}
