//! Leader election: only the holder of the `coordination.k8s.io/v1` Lease reconciles
//! and writes status. Work starts when leadership is gained and is aborted the moment
//! it is lost, so two operator processes never write at once.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Run `work()` while `leader` reads true; abort it when it turns false; start it again
/// when it turns true again. Returns when the channel closes.
pub async fn run_while_leader<F, Fut>(mut leader: watch::Receiver<bool>, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut task: Option<JoinHandle<()>> = None;
    loop {
        let is_leader = *leader.borrow_and_update();
        match (is_leader, task.is_some()) {
            (true, false) => {
                tracing::info!("became leader: reconciling");
                task = Some(tokio::spawn(work()));
            }
            (false, true) => {
                tracing::warn!("lost leadership: stopping");
                if let Some(t) = task.take() {
                    t.abort();
                    let _ = t.await;
                }
            }
            _ => {}
        }
        if leader.changed().await.is_err() {
            break;
        }
    }
    if let Some(t) = task {
        t.abort();
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts running work units: increments on start, decrements when dropped
    /// (aborted).
    struct Running(Arc<AtomicUsize>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn works_only_while_leader_and_fails_over() {
        let (tx, rx) = watch::channel(false);
        let running = Arc::new(AtomicUsize::new(0));
        let starts = Arc::new(AtomicUsize::new(0));
        let (r, s) = (running.clone(), starts.clone());
        let driver = tokio::spawn(run_while_leader(rx, move || {
            let (r, s) = (r.clone(), s.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                s.fetch_add(1, Ordering::SeqCst);
                let _guard = Running(r);
                std::future::pending::<()>().await;
            }
        }));
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "a standby does nothing");
        tx.send(true).unwrap();
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
        tx.send(true).unwrap();
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 1, "still leader: no second copy");
        tx.send(false).unwrap();
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "lost the lease: work aborted");
        tx.send(true).unwrap();
        settle().await;
        assert_eq!((running.load(Ordering::SeqCst), starts.load(Ordering::SeqCst)), (1, 2));
        drop(tx);
        driver.await.unwrap();
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }

    /// Two processes share one lease: exactly one works at a time, and the standby
    /// takes over when the leader's lease moves to it.
    #[tokio::test]
    async fn two_processes_never_work_at_once() {
        let (tx_a, rx_a) = watch::channel(true);
        let (tx_b, rx_b) = watch::channel(false);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let spawn = |rx| {
            let (r, p) = (running.clone(), peak.clone());
            tokio::spawn(run_while_leader(rx, move || {
                let (r, p) = (r.clone(), p.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    let _guard = Running(r);
                    std::future::pending::<()>().await;
                }
            }))
        };
        let (a, b) = (spawn(rx_a), spawn(rx_b));
        settle().await;
        // Failover: the lease expires for A before B acquires it.
        tx_a.send(false).unwrap();
        settle().await;
        tx_b.send(true).unwrap();
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        drop((tx_a, tx_b));
        a.await.unwrap();
        b.await.unwrap();
    }
}
