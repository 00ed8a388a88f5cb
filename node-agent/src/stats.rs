//! The kernel's program run counting (`run_cnt`, `run_time_ns` of each program), which
//! only rises while counting is on, and the agent's one owner of turning it on.
//!
//! Two switches exist. `BPF_ENABLE_STATS` (kernel >= 5.8) counts for as long as a file
//! descriptor lives: the agent holds one for its whole life, for `/metrics`. The sysctl
//! `kernel.bpf_stats_enabled` (>= 5.1) is what people and other tools see and set: a
//! Probe's stats lease (see `probe`) turns it on until the lease ends, when the found
//! value goes back. The sysctl is not reference-counted, so the agent only ever writes
//! back a value it found itself: found on, it is never touched. While the agent holds the
//! sysctl it keeps a marker file in its state directory naming the value to restore, so a
//! restarted agent puts it back after a crash ([`RunCounting::start`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the kernel keeps the switch.
pub const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The marker in the state directory: present while this agent holds the sysctl on; its
/// content is the value to write back (`0`).
pub const MARKER: &str = "bpf-stats-lease";

/// Who turned run counting on, and until when. One per agent process; every Probe's lease
/// goes through it, so concurrent probes never race the restore.
pub struct RunCounting {
    sysctl: PathBuf,
    marker: PathBuf,
    /// The agent's `BPF_ENABLE_STATS` descriptor: counting is on while it lives.
    held: Option<OwnedFd>,
    lease: Mutex<Lease>,
}

#[derive(Debug, Default)]
struct Lease {
    /// The newest end asked for; None: no lease.
    until: Option<Instant>,
    /// The sysctl's value when this agent switched it on; None: this agent did not.
    found: Option<u8>,
    /// A task waits for `until`.
    timer: bool,
}

impl RunCounting {
    /// At agent start: put back the sysctl a previous agent process left on (its marker is
    /// in `state_dir`), then hold `BPF_ENABLE_STATS` for the agent's life.
    pub fn start(state_dir: &Path) -> Self {
        let held = crate::metrics::enable_bpf_stats();
        Self::at(Path::new(SYSCTL), state_dir, held)
    }

    /// Counting through the sysctl file `sysctl` (tests give a plain file), with the marker
    /// in `state_dir`; `held` is a `BPF_ENABLE_STATS` descriptor, if any. Restores what a
    /// marker left there records.
    pub fn at(sysctl: &Path, state_dir: &Path, held: Option<OwnedFd>) -> Self {
        let this = Self { sysctl: sysctl.to_path_buf(), marker: state_dir.join(MARKER), held, lease: Mutex::default() };
        this.restore_after_crash();
        this
    }

    /// Whether the kernel counts runs now: the agent's descriptor, or the sysctl on.
    pub fn enabled(&self) -> bool {
        self.held.is_some() || read_switch(&self.sysctl).is_ok_and(|v| v != 0)
    }

    /// Keep the sysctl on until at least `now + length` (a later lease already asked for
    /// stays). Switches it on (marker first) when it is off; a value this agent did not
    /// write is left alone. Blocking file I/O: call it off the async workers. Must run
    /// inside a tokio runtime, which runs the expiry.
    pub fn lease(self: &Arc<Self>, length: Duration) {
        let mut lease = self.lock();
        let until = Instant::now() + length;
        lease.until = Some(lease.until.map_or(until, |u| u.max(until)));
        if lease.found.is_none() {
            lease.found = self.switch_on();
        }
        if !lease.timer {
            lease.timer = true;
            let this = Arc::clone(self);
            tokio::runtime::Handle::current().spawn(this.expire());
        }
    }

    /// Give the sysctl back now, whatever lease is left (the agent is stopping).
    pub fn release(&self) {
        let mut lease = self.lock();
        lease.until = None;
        self.give_back(&mut lease);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turn the sysctl on if it is off; the value found, when this agent switched it.
    fn switch_on(&self) -> Option<u8> {
        let found = match read_switch(&self.sysctl) {
            Ok(0) => 0,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(sysctl = %self.sysctl.display(), error = %e, "cannot read kernel.bpf_stats_enabled; run counts rise only while something else counts");
                return None;
            }
        };
        // The marker goes first: an agent killed right after the write still knows to restore.
        if let Err(e) = write_atomically(&self.marker, &format!("{found}\n")) {
            tracing::warn!(marker = %self.marker.display(), error = %e, "cannot record the stats lease in the state directory; kernel.bpf_stats_enabled stays as it is");
            return None;
        }
        if let Err(e) = std::fs::write(&self.sysctl, "1\n") {
            tracing::warn!(sysctl = %self.sysctl.display(), error = %e, "cannot switch kernel.bpf_stats_enabled on");
            let _ = std::fs::remove_file(&self.marker);
            return None;
        }
        tracing::info!("kernel.bpf_stats_enabled switched on for a Probe's stats lease (it was {found})");
        Some(found)
    }

    /// Write the found value back and drop the marker, if this agent switched the sysctl.
    fn give_back(&self, lease: &mut Lease) {
        let Some(found) = lease.found.take() else { return };
        match std::fs::write(&self.sysctl, format!("{found}\n")) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.marker);
                tracing::info!("kernel.bpf_stats_enabled set back to {found}: no stats lease is left");
            }
            // The marker stays: the next start tries again.
            Err(e) => {
                tracing::warn!(sysctl = %self.sysctl.display(), error = %e, "cannot set kernel.bpf_stats_enabled back to {found}")
            }
        }
    }

    /// Wait for the lease's end (moved by later leases), then give the sysctl back.
    async fn expire(self: Arc<Self>) {
        loop {
            let this = Arc::clone(&self);
            let next = tokio::task::spawn_blocking(move || this.expire_if_due(Instant::now())).await;
            match next {
                Ok(Some(at)) => tokio::time::sleep_until(at.into()).await,
                // Given back, or the runtime is stopping.
                _ => return,
            }
        }
    }

    /// The lease's end while it is ahead of `now`; otherwise the sysctl is given back
    /// (under the same lock a new lease takes, so none slips in between) and None.
    fn expire_if_due(&self, now: Instant) -> Option<Instant> {
        let mut lease = self.lock();
        match lease.until {
            Some(until) if until > now => Some(until),
            _ => {
                lease.until = None;
                lease.timer = false;
                self.give_back(&mut lease);
                None
            }
        }
    }

    /// A marker means an agent process of this state directory switched the sysctl on and
    /// stopped before its lease ended: put the recorded value back.
    fn restore_after_crash(&self) {
        let text = match std::fs::read_to_string(&self.marker) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(marker = %self.marker.display(), error = %e, "cannot read the stats lease marker; kernel.bpf_stats_enabled left as it is");
                return;
            }
        };
        // Only an off sysctl is ever switched, so a damaged marker still means "was 0".
        let found = parse_switch(&text).unwrap_or_else(|| {
            tracing::warn!(marker = %self.marker.display(), content = %text.trim(), "the stats lease marker is not 0 or 1; restoring 0");
            0
        });
        let mut lease = self.lock();
        lease.found = Some(found);
        self.give_back(&mut lease);
    }
}

/// The sysctl's text as 0 or 1.
fn parse_switch(text: &str) -> Option<u8> {
    match text.trim() {
        "0" => Some(0),
        "1" => Some(1),
        _ => None,
    }
}

fn read_switch(path: &Path) -> std::io::Result<u8> {
    let text = std::fs::read_to_string(path)?;
    parse_switch(&text)
        .ok_or_else(|| std::io::Error::other(format!("{} reads {:?}, not 0 or 1", path.display(), text.trim())))
}

/// Replace `path`'s content atomically (temporary file, fsync, rename).
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory and a plain file standing for the sysctl.
    fn setup(value: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sysctl = dir.path().join("bpf_stats_enabled");
        std::fs::write(&sysctl, value).unwrap();
        (dir, sysctl)
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    /// Poll until the sysctl file reads `want`; how long that took.
    async fn until_reads(p: &Path, want: &str) -> Duration {
        let started = Instant::now();
        while read(p) != want {
            assert!(started.elapsed() < Duration::from_secs(5), "{} never read {want}", p.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn a_lease_switches_an_off_sysctl_on_and_back_when_the_last_lease_ends() {
        let (dir, sysctl) = setup("0\n");
        let counting = Arc::new(RunCounting::at(&sysctl, dir.path(), None));
        assert!(!counting.enabled());
        let marker = dir.path().join(MARKER);
        counting.lease(Duration::from_millis(600));
        assert_eq!(read(&sysctl), "1");
        assert_eq!(read(&marker), "0", "the marker names the value to restore");
        assert!(counting.enabled());
        // A shorter lease does not cut the longer one; a later one extends it.
        counting.lease(Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(300)).await;
        counting.lease(Duration::from_millis(900));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(read(&sysctl), "1", "still within the extended lease");
        assert!(until_reads(&sysctl, "0").await >= Duration::from_millis(300));
        assert!(!marker.exists());
        assert!(!counting.enabled());
        // Another lease later switches it on again, with a new timer.
        counting.lease(Duration::from_millis(50));
        assert_eq!(read(&sysctl), "1");
        until_reads(&sysctl, "0").await;
    }

    #[tokio::test]
    async fn a_sysctl_found_on_is_never_touched() {
        let (dir, sysctl) = setup("1\n");
        let counting = Arc::new(RunCounting::at(&sysctl, dir.path(), None));
        counting.lease(Duration::from_millis(50));
        assert!(!dir.path().join(MARKER).exists());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!counting.lock().timer, "the lease ended");
        assert_eq!(read(&sysctl), "1");
        // Someone turns it off during a lease: the next probe switches it on, and owns it.
        counting.lease(Duration::from_secs(60));
        std::fs::write(&sysctl, "0\n").unwrap();
        counting.lease(Duration::from_millis(50));
        assert_eq!(read(&sysctl), "1");
        assert_eq!(read(&dir.path().join(MARKER)), "0");
        // The agent stopping gives it back at once, lease or not.
        counting.release();
        assert_eq!(read(&sysctl), "0");
        assert!(!dir.path().join(MARKER).exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_leases_restore_once_and_at_the_end() {
        let (dir, sysctl) = setup("0\n");
        let counting = Arc::new(RunCounting::at(&sysctl, dir.path(), None));
        let started = Instant::now();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let c = Arc::clone(&counting);
                tokio::task::spawn_blocking(move || c.lease(Duration::from_millis(200 + i * 10)))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(read(&sysctl), "1");
        assert!(counting.lock().timer, "one timer runs");
        until_reads(&sysctl, "0").await;
        assert!(started.elapsed() >= Duration::from_millis(830), "the longest lease ended first");
        assert!(!dir.path().join(MARKER).exists());
        let lease = counting.lock();
        assert!(!lease.timer && lease.until.is_none() && lease.found.is_none(), "{lease:?}");
    }

    #[test]
    fn a_marker_left_by_a_dead_agent_is_restored_at_start() {
        let (dir, sysctl) = setup("1\n");
        std::fs::write(dir.path().join(MARKER), "0\n").unwrap();
        let _counting = RunCounting::at(&sysctl, dir.path(), None);
        assert_eq!(read(&sysctl), "0");
        assert!(!dir.path().join(MARKER).exists());
        // A damaged marker still means the agent switched an off sysctl on.
        std::fs::write(&sysctl, "1\n").unwrap();
        std::fs::write(dir.path().join(MARKER), "garbage").unwrap();
        let _counting = RunCounting::at(&sysctl, dir.path(), None);
        assert_eq!(read(&sysctl), "0");
        // No marker: nothing is touched.
        std::fs::write(&sysctl, "1\n").unwrap();
        let _counting = RunCounting::at(&sysctl, dir.path(), None);
        assert_eq!(read(&sysctl), "1");
    }

    #[test]
    fn an_unreadable_sysctl_is_left_alone_and_leaves_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let sysctl = dir.path().join("not-a-file");
        std::fs::create_dir(&sysctl).unwrap();
        let counting = Arc::new(RunCounting::at(&sysctl, dir.path(), None));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { counting.lease(Duration::from_millis(10)) });
        assert!(!dir.path().join(MARKER).exists());
        assert!(!counting.enabled());
        assert_eq!(parse_switch(" 1\n"), Some(1));
        assert_eq!(parse_switch("2"), None);
    }
}
