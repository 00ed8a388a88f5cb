//! Fault points for recovery and concurrency tests.
//!
//! The points: `after-attach` and `after-commit` (an apply: new revision attached but not
//! recorded; recorded but the old one not yet removed), `pods-after-attach` (an apply's
//! pods attached, not yet recorded), `remove-after-detach` and
//! `remove-after-unpin` (a removal: hooks gone, pins and record not; pins gone, record
//! not), `recovery-after-relink` (an owner's hooks pointed back at its recorded revision,
//! the owner not yet adopted), `recovery-before-sweep` (owners adopted, unclaimed pins
//! and filters not yet removed), `recovery-before-unpin` (the filters of what goes
//! removed, its pins not yet) and `node-file-read` (a read of a node file).
//!
//! - `pause_at(point, owner)` (in-process tests) holds an apply of that owner at the
//!   point until the returned guard is released, to observe what runs meanwhile.
//! - `BPFLEET_FAULT=<point>` in the environment makes the agent abort (like `kill -9`)
//!   when an apply reaches that point.
//! - `BPFLEET_PAUSE=<point>:<dir>` in the environment (process tests) does the same as
//!   `pause_at` for an agent process: at the point it creates `<dir>/<point>.<owner>` and
//!   waits until the test removes that file.
//!
//! The points exist only with the `test-support` feature (tests and benches); without it
//! they are empty. Even with it, the two environment variables act only in a process that
//! called [`arm_process_hooks`], which only the `bpfleet-agent-test` binary's `main` does:
//! the shipped `bpfleet-agent` ignores them whatever features a workspace build unified
//! into the library, and it does not even contain the code that reads them (nothing
//! reachable from its `main` refers to it, so the linker drops it; `scripts/images.sh`
//! checks). Each point costs a lookup per apply, nothing next to a program load.

/// Reached by the work on `owner` (a no-op without `test-support`).
#[cfg(not(feature = "test-support"))]
#[inline(always)]
pub fn point(_name: &str, _owner: &str) {}

/// Whether `BPFLEET_FAULT` / `BPFLEET_PAUSE` act in this process (never without
/// `test-support`).
#[cfg(not(feature = "test-support"))]
pub fn process_hooks_armed() -> bool {
    false
}

#[cfg(feature = "test-support")]
pub use enabled::*;

#[cfg(feature = "test-support")]
mod enabled {

    use std::sync::{Arc, Condvar, Mutex, OnceLock};

    type Gate = Arc<(Mutex<bool>, Condvar)>;

    static PAUSES: Mutex<Vec<(String, String, Gate)>> = Mutex::new(Vec::new());

    /// Set by [`arm_process_hooks`]; a function pointer rather than a flag, so that a
    /// binary that never arms the hooks has no reference to [`env_hooks`] at all.
    static PROCESS_HOOKS: OnceLock<fn(&str, &str)> = OnceLock::new();

    /// Let `BPFLEET_FAULT` and `BPFLEET_PAUSE` act in this process, from now on. Called by
    /// `bpfleet-agent-test`'s `main` only; never by a binary that ships.
    pub fn arm_process_hooks() {
        PROCESS_HOOKS.get_or_init(|| env_hooks as fn(&str, &str));
    }

    /// Whether [`arm_process_hooks`] was called in this process.
    pub fn process_hooks_armed() -> bool {
        PROCESS_HOOKS.get().is_some()
    }

    /// Reached by the work on `owner`.
    pub fn point(name: &str, owner: &str) {
        let gate = PAUSES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(p, o, _)| p == name && o == owner)
            .map(|(_, _, g)| g.clone());
        if let Some(gate) = gate {
            let (lock, cv) = &*gate;
            let mut released = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !*released {
                released = cv.wait(released).unwrap_or_else(|p| p.into_inner());
            }
        }
        if let Some(hooks) = PROCESS_HOOKS.get() {
            hooks(name, owner);
        }
    }

    /// `BPFLEET_PAUSE` and `BPFLEET_FAULT`, in an armed process only.
    fn env_hooks(name: &str, owner: &str) {
        if let Ok(v) = std::env::var("BPFLEET_PAUSE")
            && let Some((point, dir)) = v.split_once(':')
            && point == name
        {
            let flag = std::path::Path::new(dir).join(format!("{name}.{owner}"));
            if std::fs::write(&flag, b"").is_ok() {
                while flag.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        if std::env::var("BPFLEET_FAULT").is_ok_and(|v| v == name) {
            eprintln!("bpfleet-agent: BPFLEET_FAULT={name}: aborting");
            std::process::abort();
        }
    }

    /// Hold applies of `owner` at `point` until the guard is released or dropped.
    pub fn pause_at(point: &str, owner: &str) -> PauseGuard {
        let gate: Gate = Arc::default();
        PAUSES.lock().unwrap_or_else(|p| p.into_inner()).push((point.into(), owner.into(), gate.clone()));
        PauseGuard { gate }
    }

    pub struct PauseGuard {
        gate: Gate,
    }

    impl PauseGuard {
        pub fn release(&self) {
            let (lock, cv) = &*self.gate;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
            PAUSES.lock().unwrap_or_else(|p| p.into_inner()).retain(|(_, _, g)| !Arc::ptr_eq(g, &self.gate));
        }
    }

    impl Drop for PauseGuard {
        fn drop(&mut self) {
            self.release();
        }
    }
}
