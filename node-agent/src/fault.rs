//! Fault points for recovery and concurrency tests.
//!
//! The points: `after-attach` and `after-commit` (an apply: new revision attached but not
//! recorded; recorded but the old one not yet removed), `remove-after-detach` and
//! `remove-after-unpin` (a removal: hooks gone, pins and record not; pins gone, record
//! not), `recovery-after-relink` (an owner's hooks pointed back at its recorded revision,
//! the owner not yet adopted), `recovery-before-sweep` (owners adopted, unclaimed pins
//! and filters not yet removed) and `recovery-before-unpin` (the filters of what goes
//! removed, its pins not yet).
//!
//! - `BPFLEET_FAULT=<point>` in the environment makes the agent abort (like `kill -9`)
//!   when an apply reaches that point.
//! - `pause_at(point, owner)` (in-process tests) holds an apply of that owner at the
//!   point until the returned guard is released, to observe what runs meanwhile.
//! - `BPFLEET_PAUSE=<point>:<dir>` in the environment (process tests) does the same for
//!   an agent process: at the point it creates `<dir>/<point>.<owner>` and waits until
//!   the test removes that file.
//!
//! Both cost a lookup per apply, nothing next to a program load. They exist only with
//! the `test-support` feature (tests and benches); a release binary has empty points.

/// Reached by the work on `owner` (a no-op without `test-support`).
#[cfg(not(feature = "test-support"))]
#[inline(always)]
pub fn point(_name: &str, _owner: &str) {}

#[cfg(feature = "test-support")]
pub use enabled::*;

#[cfg(feature = "test-support")]
mod enabled {

    use std::sync::{Arc, Condvar, Mutex};

    type Gate = Arc<(Mutex<bool>, Condvar)>;

    static PAUSES: Mutex<Vec<(String, String, Gate)>> = Mutex::new(Vec::new());

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
