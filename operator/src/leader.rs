//! Leader election over a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! Only the holder of the Lease reconciles, talks to agents and writes status. Three
//! rules keep two operators from ever acting at once:
//!
//! - **Local deadline.** The leader renews every `renew_every`; if no renewal has
//!   succeeded for `renew_deadline` (measured from the moment the last successful
//!   renewal was *sent*), it demotes itself without hearing from the API server. A
//!   standby acquires only after it has seen the Lease unchanged for `lease_duration`,
//!   which is longer: the old leader has stopped before the new one starts, even when
//!   the old one is cut off from the API server.
//! - **One unit of work.** Everything a leader does runs inside one future
//!   ([`run_while_leader`]); losing the Lease drops that future and with it every watch,
//!   resync and dispatch it started. Nothing is spawned detached.
//! - **Epochs.** Every acquisition takes a new leadership epoch, carried by every Apply
//!   and Remove; agents refuse a request from an epoch older than the newest they have
//!   seen, so a deposed leader's late request cannot undo its successor's work. The
//!   epoch is kept in the Lease (annotation [`EPOCH_ANNOTATION`]) and a new one is
//!   `max(previous + 1, now in milliseconds)`: it grows with every acquisition while the
//!   Lease exists, and stays ahead of every epoch agents have seen when the Lease is
//!   deleted and created again (a reinstall), as long as clocks do not run backwards by
//!   more than the time since. Whoever may edit the Lease could write any epoch there:
//!   one more than [`MAX_EPOCH_AHEAD_MS`] ahead of the clock (`u64::MAX`, years ahead)
//!   is not believed, so it can neither overflow nor push every later epoch to the end
//!   of the range, where agents would be stuck refusing or accepting everything.
//!
//! On shutdown the leader stops its work and then releases the Lease (empty holder),
//! so a standby takes over at its next poll instead of after the Lease expires.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// Timing of the election. The defaults are client-go's proportions, scaled down.
#[derive(Clone, Debug)]
pub struct LeaseTiming {
    /// How long a Lease holds without renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// The leader demotes itself when it has not renewed for this long (< lease_duration).
    pub renew_deadline: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a standby reads the Lease.
    pub poll_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            poll_every: Duration::from_secs(1),
        }
    }
}

impl LeaseTiming {
    /// The timing must let a leader stop before anyone else may start.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.renew_every >= self.renew_deadline {
            return Err(format!(
                "renewals ({:?}) must come more often than the renew deadline ({:?})",
                self.renew_every, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// Where the Lease keeps the leadership epoch of its holder.
pub const EPOCH_ANNOTATION: &str = "bpfleet.dev/leader-epoch";

/// The parts of a Lease the election reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub transitions: u64,
    pub epoch: u64,
    pub renew_time: Option<String>,
    pub duration_seconds: Option<i32>,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let epoch = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EPOCH_ANNOTATION))
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            transitions: spec.lease_transitions.map(|t| t.max(0) as u64).unwrap_or(0),
            epoch,
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            duration_seconds: spec.lease_duration_seconds,
        }
    }
}

/// The epoch of a new term: after the Lease's last one, and after every epoch an earlier
/// Lease of the same name may have handed out (those were times in milliseconds too).
pub fn next_epoch(previous: u64, now_ms: u64) -> u64 {
    if !epoch_believable(previous, now_ms) {
        return now_ms;
    }
    previous.saturating_add(1).max(now_ms)
}

/// How far ahead of this replica's clock a Lease's epoch may be and still be taken as
/// an earlier term's (clock skew between replicas, plus one per fast takeover).
pub const MAX_EPOCH_AHEAD_MS: u64 = 60 * 60 * 1000;

/// Whether the Lease's epoch can be an earlier term's rather than a hostile edit.
pub fn epoch_believable(previous: u64, now_ms: u64) -> bool {
    previous <= now_ms.saturating_add(MAX_EPOCH_AHEAD_MS)
}

/// What a standby does with the Lease it just read. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandbyStep {
    /// Take it: nobody holds it, or the holder has not renewed for a whole duration.
    Acquire,
    /// Someone else holds it; look again later.
    Wait,
}

/// `unchanged_for`: how long this process has seen the record unchanged (local clock
/// only: no comparison of timestamps written by another machine).
pub fn standby_step(record: &LeaseRecord, unchanged_for: Duration, timing: &LeaseTiming) -> StandbyStep {
    let duration = record
        .duration_seconds
        .filter(|d| *d > 0)
        .map(|d| Duration::from_secs(d as u64))
        .unwrap_or(timing.lease_duration);
    match &record.holder {
        None => StandbyStep::Acquire,
        Some(_) if unchanged_for >= duration => StandbyStep::Acquire,
        Some(_) => StandbyStep::Wait,
    }
}

/// Whether a leader that last renewed successfully at `last_renewed` (when that request
/// was sent) must stop now. Pure.
pub fn must_demote(last_renewed: Instant, now: Instant, timing: &LeaseTiming) -> bool {
    now.saturating_duration_since(last_renewed) >= timing.renew_deadline
}

/// The leadership state other parts read: `Some(epoch)` while leading.
pub type Leadership = watch::Receiver<Option<u64>>;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    state: watch::Sender<Option<u64>>,
    /// Whether the Lease has been read once (this process reaches the API server).
    lease_seen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        let (state, _) = watch::channel(None);
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            state,
            lease_seen: Default::default(),
        }
    }

    /// Follow leadership: `Some(epoch)` while this process leads.
    pub fn subscribe(&self) -> Leadership {
        self.state.subscribe()
    }

    /// Turns true once the Lease has been read (or found missing) for the first time.
    pub fn lease_seen(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.lease_seen.clone()
    }

    /// One API call, bounded so a hung connection cannot outlive the renew deadline.
    async fn bounded<T>(&self, f: impl Future<Output = kube::Result<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.timing.renew_every.max(Duration::from_secs(1)), f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the API server did not answer in time".into()),
        }
    }

    /// Campaign and lead forever (until the future is dropped). Never returns.
    pub async fn run(&self) {
        let mut seen: Option<(LeaseRecord, Instant)> = None;
        loop {
            match self.bounded(self.api.get_opt(&self.name)).await {
                Err(e) => tracing::warn!(error = %e, lease = %self.name, "cannot read the leader Lease"),
                Ok(current) => {
                    self.lease_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    let record = current.as_ref().map(LeaseRecord::of);
                    let unchanged_for = match (&seen, &record) {
                        (Some((old, since)), Some(new)) if old == new => since.elapsed(),
                        _ => Duration::ZERO,
                    };
                    if let Some(r) = &record
                        && unchanged_for == Duration::ZERO
                    {
                        seen = Some((r.clone(), Instant::now()));
                    }
                    let acquire = match &record {
                        None => true,
                        Some(r) => standby_step(r, unchanged_for, &self.timing) == StandbyStep::Acquire,
                    };
                    if acquire {
                        match self.acquire(current).await {
                            Ok((lease, epoch, sent)) => {
                                self.lead(lease, epoch, sent).await;
                                seen = None;
                                continue;
                            }
                            Err(e) => tracing::info!(error = %e, "could not acquire the leader Lease"),
                        }
                    }
                }
            }
            tokio::time::sleep(self.timing.poll_every).await;
        }
    }

    /// Take the Lease (create it, or replace it at the resourceVersion just read, so
    /// two standbys cannot both win). Returns the new Lease, its epoch and when the
    /// request was sent.
    async fn acquire(&self, current: Option<Lease>) -> Result<(Lease, u64, Instant), String> {
        let sent = Instant::now();
        let now = now_micro();
        let record = current.as_ref().map(LeaseRecord::of);
        let transitions = record.as_ref().map(|r| r.transitions).unwrap_or(0) + 1;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let previous = record.as_ref().map(|r| r.epoch).unwrap_or(0);
        if !epoch_believable(previous, now_ms) {
            tracing::warn!(
                lease_epoch = previous,
                now_ms,
                "the Lease's epoch is far ahead of the clock (edited by hand or by someone hostile); \
                 starting again from the clock"
            );
        }
        let epoch = next_epoch(previous, now_ms);
        let annotate = |meta: &mut ObjectMeta| {
            meta.annotations.get_or_insert_with(Default::default).insert(EPOCH_ANNOTATION.into(), epoch.to_string());
        };
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions.min(i32::MAX as u64) as i32),
            ..Default::default()
        };
        let lease = match current {
            None => {
                let mut lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(spec),
                };
                annotate(&mut lease.metadata);
                self.bounded(self.api.create(&PostParams::default(), &lease)).await?
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                lease.metadata.managed_fields = None;
                annotate(&mut lease.metadata);
                self.bounded(self.api.replace(&self.name, &PostParams::default(), &lease)).await?
            }
        };
        Ok((lease, epoch, sent))
    }

    /// Hold the Lease: publish the epoch, renew, and demote at the local deadline or
    /// when the Lease is found with someone else.
    async fn lead(&self, mut lease: Lease, epoch: u64, mut last_renewed: Instant) {
        tracing::info!(identity = %self.identity, epoch, "acquired the leader Lease");
        self.state.send_replace(Some(epoch));
        let why = loop {
            let wake = (last_renewed + self.timing.renew_every).max(Instant::now());
            tokio::time::sleep_until(wake.into()).await;
            if must_demote(last_renewed, Instant::now(), &self.timing) {
                break format!("no renewal succeeded for {:?}", self.timing.renew_deadline);
            }
            let sent = Instant::now();
            let mut renewed = lease.clone();
            if let Some(spec) = renewed.spec.as_mut() {
                spec.renew_time = Some(now_micro());
            }
            renewed.metadata.managed_fields = None;
            // The remaining time to the deadline bounds this call too.
            let left = self.timing.renew_deadline.saturating_sub(sent - last_renewed);
            let pp = PostParams::default();
            let call = self.api.replace(&self.name, &pp, &renewed);
            match tokio::time::timeout(left, call).await {
                Ok(Ok(l)) => {
                    lease = l;
                    last_renewed = sent;
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                    // Someone wrote the Lease: ours only if it still names us.
                    match self.bounded(self.api.get_opt(&self.name)).await {
                        Ok(Some(l))
                            if LeaseRecord::of(&l).holder.as_deref() == Some(self.identity.as_str())
                                && LeaseRecord::of(&l).epoch == epoch =>
                        {
                            lease = l;
                        }
                        Ok(other) => {
                            let holder = other.as_ref().and_then(|l| LeaseRecord::of(l).holder);
                            break format!("the Lease is now held by {}", holder.as_deref().unwrap_or("nobody"));
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the leader Lease after a conflict"),
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
                Err(_) => tracing::warn!("renewing the leader Lease timed out"),
            }
        };
        tracing::warn!(epoch, %why, "lost leadership: stopping all leader work");
        self.state.send_replace(None);
    }

    /// Give the Lease up if this process holds it: empty holder, so a standby takes
    /// over at its next poll. Called after the leader's work has stopped.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.bounded(self.api.get_opt(&self.name)).await else { return };
        if LeaseRecord::of(&lease).holder.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now_micro());
        }
        lease.metadata.managed_fields = None;
        match self.bounded(self.api.replace(&self.name, &PostParams::default(), &lease)).await {
            Ok(_) => tracing::info!(lease = %self.name, "released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease; it expires by itself"),
        }
    }
}

/// Run `work(epoch)` while `leadership` reads `Some(epoch)`; drop it (cancelling
/// everything inside it) the moment leadership is lost or changes epoch. Returns when
/// the work ends by itself (an error: leader work runs forever) or the channel closes.
pub async fn run_while_leader<F, Fut>(mut leadership: Leadership, work: F) -> Result<(), String>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let epoch = loop {
            if let Some(e) = *leadership.borrow_and_update() {
                break e;
            }
            if leadership.changed().await.is_err() {
                return Ok(());
            }
        };
        tracing::info!(epoch, "leading: reconciling");
        let unit = work(epoch);
        tokio::pin!(unit);
        loop {
            tokio::select! {
                _ = &mut unit => return Err("the leader's work stopped by itself".into()),
                changed = leadership.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if *leadership.borrow() != Some(epoch) {
                        break;
                    }
                }
            }
        }
        tracing::warn!(epoch, "stopped leading: all leader work cancelled");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts running work units: increments on start, decrements when dropped.
    struct Running(Arc<AtomicUsize>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[test]
    fn epochs_grow_with_each_term_and_outrun_a_recreated_lease() {
        let now = 1_800_000_000_000;
        assert_eq!(next_epoch(0, now), now, "a new Lease starts at the clock");
        assert_eq!(next_epoch(now, now), now + 1, "a fast takeover still moves forward");
        assert_eq!(next_epoch(now + 500, now), now + 501, "a standby whose clock is behind");
        // Deleted and created again (annotation gone): still after every earlier epoch.
        assert!(next_epoch(0, now + 60_000) > now + 501);
    }

    #[test]
    fn a_hostile_lease_epoch_neither_overflows_nor_jumps() {
        let now = 1_800_000_000_000;
        assert_eq!(next_epoch(u64::MAX, now), now, "u64::MAX: no overflow, not believed");
        assert_eq!(next_epoch(u64::MAX - 1, now), now);
        assert_eq!(next_epoch(now + 10 * 365 * 24 * 3_600_000, now), now, "years ahead: not believed");
        assert_eq!(next_epoch(now + MAX_EPOCH_AHEAD_MS, now), now + MAX_EPOCH_AHEAD_MS + 1, "skew is tolerated");
        assert_eq!(next_epoch(now + MAX_EPOCH_AHEAD_MS + 1, now), now);
        assert_eq!(next_epoch(5, u64::MAX), u64::MAX, "a clock at the end does not overflow either");
        // The epoch fits the i64 gauge whatever the Lease says.
        assert!(i64::try_from(next_epoch(u64::MAX, now)).is_ok());
    }

    fn record(holder: Option<&str>) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_string),
            transitions: 3,
            epoch: 3,
            renew_time: Some("2026-11-30T00:00:00Z".into()),
            duration_seconds: Some(15),
        }
    }

    #[test]
    fn standby_takes_a_free_or_expired_lease_only() {
        let t = LeaseTiming::default();
        assert_eq!(standby_step(&record(None), Duration::ZERO, &t), StandbyStep::Acquire);
        assert_eq!(standby_step(&record(Some("a")), Duration::from_secs(14), &t), StandbyStep::Wait);
        assert_eq!(standby_step(&record(Some("a")), Duration::from_secs(15), &t), StandbyStep::Acquire);
        // A released Lease says 1 s: it is taken after that.
        let mut released = record(Some("a"));
        released.duration_seconds = Some(1);
        assert_eq!(standby_step(&released, Duration::from_secs(1), &t), StandbyStep::Acquire);
    }

    #[test]
    fn a_leader_demotes_before_a_standby_may_acquire() {
        let t = LeaseTiming::default();
        t.check().unwrap();
        let renewed = Instant::now();
        assert!(!must_demote(renewed, renewed + Duration::from_secs(9), &t));
        assert!(must_demote(renewed, renewed + t.renew_deadline, &t));
        // The standby's clock starts no earlier than the renewal was sent, and it waits a
        // whole lease duration: the leader is already stopped by then.
        let standby_may_acquire_at = renewed + t.lease_duration;
        assert!(must_demote(renewed, standby_may_acquire_at - Duration::from_millis(1), &t));
        let bad = LeaseTiming { renew_deadline: Duration::from_secs(20), ..LeaseTiming::default() };
        assert!(bad.check().is_err());
    }

    #[tokio::test]
    async fn work_runs_only_while_leading_and_stops_with_everything_inside() {
        let (tx, rx) = watch::channel(None);
        let running = Arc::new(AtomicUsize::new(0));
        let children = Arc::new(AtomicUsize::new(0));
        let epochs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, c, e) = (running.clone(), children.clone(), epochs.clone());
        let driver = tokio::spawn(run_while_leader(rx, move |epoch| {
            let (r, c, e) = (r.clone(), c.clone(), e.clone());
            async move {
                e.lock().unwrap().push(epoch);
                r.fetch_add(1, Ordering::SeqCst);
                let _guard = Running(r);
                // A "child task" (a watch, a resync loop) joined into the unit.
                let child = async {
                    c.fetch_add(1, Ordering::SeqCst);
                    let _g = Running(c.clone());
                    std::future::pending::<()>().await
                };
                futures::join!(child, std::future::pending::<()>());
            }
        }));
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "a standby does nothing");
        tx.send(Some(4)).unwrap();
        settle().await;
        assert_eq!((running.load(Ordering::SeqCst), children.load(Ordering::SeqCst)), (1, 1));
        tx.send(Some(4)).unwrap();
        settle().await;
        assert_eq!(epochs.lock().unwrap().len(), 1, "still leader: no second copy");
        tx.send(None).unwrap();
        settle().await;
        assert_eq!(
            (running.load(Ordering::SeqCst), children.load(Ordering::SeqCst)),
            (0, 0),
            "lost the lease: the work and everything it started are gone"
        );
        tx.send(Some(6)).unwrap();
        settle().await;
        // A new epoch straight after another (no None between) restarts the work too.
        tx.send(Some(7)).unwrap();
        settle().await;
        assert_eq!(*epochs.lock().unwrap(), vec![4, 6, 7]);
        assert_eq!(running.load(Ordering::SeqCst), 1);
        drop(tx);
        assert_eq!(driver.await.unwrap(), Ok(()));
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn work_that_ends_by_itself_is_an_error() {
        let (_tx, rx) = watch::channel(Some(1));
        let r = run_while_leader(rx, |_| async {}).await;
        assert!(r.is_err());
    }
}
