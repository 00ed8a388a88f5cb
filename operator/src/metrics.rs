//! Operator metrics and the `/metrics`, `/healthz`, `/readyz` endpoints (the probes also
//! on a listener of their own, see [`probe_routes`]). `/metrics` is OpenMetrics text,
//! served as such ([`OPENMETRICS_CONTENT_TYPE`]). Label values come from bounded sets
//! (reasons, answers, repair actions) or from BpfProgram names; no series is per node, so
//! the series count does not grow with the fleet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crds::BpfProgramStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Why a reconcile failed ([`crate::controller::Error::metric_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// What a drift repair did: `remove_unknown` or `reconcile`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

/// How an agent answered a resync's List: `full` or `unchanged`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ReasonLabel, Counter>,
    reconcile_seconds: Histogram,
    /// One for the fleet: per node it would be ~300 B and 15 series per node.
    dispatch_seconds: Histogram,
    targets: Family<ProgramLabel, Gauge>,
    ready: Family<ProgramLabel, Gauge>,
    failed: Family<ProgramLabel, Gauge>,
    repairs: Family<ActionLabel, Counter>,
    resyncs: Counter,
    resync_lists: Family<AnswerLabel, Counter>,
    bpfnode_writes: Counter,
    /// Caches synced: the process can serve (leader or standby).
    pub ready_flag: AtomicBool,
    /// This process holds the Lease.
    pub leader: Gauge,
    /// The leadership epoch of the current (or last) term.
    pub epoch: Gauge,
    /// 1 once the leader's caches synced and every agent was listed.
    pub caches_synced: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn buckets() -> [f64; 12] {
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bpfleet_operator");
        let reconciles = Counter::default();
        let errors = Family::<ReasonLabel, Counter>::default();
        let reconcile_seconds = Histogram::new(buckets());
        let dispatch_seconds = Histogram::new(buckets());
        let targets = Family::<ProgramLabel, Gauge>::default();
        let ready = Family::<ProgramLabel, Gauge>::default();
        let failed = Family::<ProgramLabel, Gauge>::default();
        let repairs = Family::<ActionLabel, Counter>::default();
        let resyncs = Counter::default();
        let resync_lists = Family::<AnswerLabel, Counter>::default();
        let bpfnode_writes = Counter::default();
        let leader = Gauge::default();
        let epoch = Gauge::default();
        let caches_synced = Gauge::default();
        registry.register("reconciles", "BpfProgram reconciliations", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciliations by reason", errors.clone());
        registry.register("reconcile_duration_seconds", "Time per reconciliation", reconcile_seconds.clone());
        registry.register(
            "dispatch_duration_seconds",
            "Time of one agent call (Apply or Remove) of a dispatch",
            dispatch_seconds.clone(),
        );
        registry.register("target_nodes", "Nodes each BpfProgram selects", targets.clone());
        registry.register("ready_nodes", "Nodes running each BpfProgram's current revision", ready.clone());
        registry.register("failed_nodes", "Nodes failing each BpfProgram", failed.clone());
        registry.register("drift_repairs", "Drift repairs by action (remove_unknown, reconcile)", repairs.clone());
        registry.register("resync_passes", "Completed resyncs (a List of every agent)", resyncs.clone());
        registry.register(
            "resync_lists",
            "Agent Lists of resyncs, by answer: full (every owner) or unchanged (digest matched)",
            resync_lists.clone(),
        );
        registry.register("bpfnode_writes", "BpfNode status writes (only changes are written)", bpfnode_writes.clone());
        registry.register("leader", "1 while this process holds the leader Lease", leader.clone());
        registry.register("leader_epoch", "Leadership epoch of the current or last term", epoch.clone());
        registry.register(
            "caches_synced",
            "1 once the leader synced its caches and listed every agent",
            caches_synced.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            reconcile_seconds,
            dispatch_seconds,
            targets,
            ready,
            failed,
            repairs,
            resyncs,
            resync_lists,
            bpfnode_writes,
            ready_flag: AtomicBool::new(false),
            leader,
            epoch,
            caches_synced,
        }
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn resynced(&self) {
        self.resyncs.inc();
    }

    /// One agent answered a resync's List, in full or "unchanged".
    pub fn resync_listed(&self, unchanged: bool) {
        let answer = if unchanged { "unchanged" } else { "full" };
        self.resync_lists.get_or_create(&AnswerLabel { answer }).inc();
    }

    pub fn bpfnode_written(&self) {
        self.bpfnode_writes.inc();
    }

    /// One agent call of a dispatch took `took`.
    pub fn dispatched(&self, took: Duration) {
        self.dispatch_seconds.observe(took.as_secs_f64());
    }

    pub fn program_counts(&self, program: &str, s: &BpfProgramStatus) {
        let l = ProgramLabel { program: program.into() };
        self.targets.get_or_create(&l).set(s.target_nodes.into());
        self.ready.get_or_create(&l).set(s.ready_nodes.into());
        self.failed.get_or_create(&l).set(s.failed_nodes.into());
    }

    pub fn forget_program(&self, program: &str) {
        let l = ProgramLabel { program: program.into() };
        self.targets.remove(&l);
        self.ready.remove(&l);
        self.failed.remove(&l);
    }

    /// A drift repair: `remove_unknown` or `reconcile`.
    pub fn repaired(&self, action: &'static str) {
        self.repairs.get_or_create(&ActionLabel { action }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What prometheus-client's text encoder writes: OpenMetrics 1.0 (`_total` counters,
/// `# EOF`), not Prometheus text 0.0.4.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/readyz` says: a leader is ready once its caches have synced and it has listed
/// every agent (before that it decides nothing); a standby once it has read the Lease (it
/// reaches the API server and can take over).
pub fn readiness(leader: bool, caches_synced: bool, lease_seen: bool) -> bool {
    if leader { caches_synced } else { lease_seen }
}

/// The probes: `/healthz` (the process runs) and `/readyz` (see [`readiness`]). Served
/// on --metrics-listen with `/metrics`, and alone on --health-listen, so that /metrics can
/// stay on loopback while the kubelet still probes.
pub fn probe_routes(metrics: Arc<Metrics>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/readyz",
        get(move || async move {
            if metrics.ready_flag.load(Ordering::Relaxed) {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
            }
        }),
    )
}

/// What --metrics-listen serves: `/metrics` and the [`probe_routes`].
pub fn metrics_routes(metrics: Arc<Metrics>) -> axum::Router {
    let m = metrics.clone();
    probe_routes(metrics).route(
        "/metrics",
        axum::routing::get(move || async move {
            ([(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], m.render())
        }),
    )
}

/// Bind the address of `flag` (e.g. `--health-listen`), saying which flag failed.
pub async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {flag} {addr}: {e}"))
}

/// Serve `app` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> anyhow::Result<()> {
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod listener_tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;

    /// Status and body of GET `path` on `addr`, over plain HTTP/1.1.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let (code, _, body) = get_with_head(addr, path).await;
        (code, body)
    }

    /// Status, response head and body of GET `path` on `addr`.
    async fn get_with_head(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            (head.split_whitespace().nth(1).unwrap().parse().unwrap(), head.to_string(), body.to_string())
        })
        .await
        .unwrap()
    }

    async fn start(app: axum::Router) -> SocketAddr {
        let listener = bind("--test-listen", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, app));
        addr
    }

    #[tokio::test]
    async fn health_listener_serves_probes_but_not_metrics() {
        let m = Arc::new(Metrics::new());
        m.ready_flag.store(true, Ordering::Relaxed);
        let health = start(probe_routes(m.clone())).await;
        let metrics = start(metrics_routes(m)).await;

        assert_eq!(get(health, "/metrics").await.0, 404, "/metrics must not be served on --health-listen");
        assert_eq!(get(health, "/healthz").await, (200, "ok".into()));
        assert_eq!(get(health, "/readyz").await, (200, "ready".into()));

        let (code, head, body) = get_with_head(metrics, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("# TYPE") && body.ends_with("# EOF\n"), "no OpenMetrics in {body:?}");
        let content_type = head.lines().find_map(|l| l.strip_prefix("content-type: "));
        assert_eq!(content_type, Some(OPENMETRICS_CONTENT_TYPE), "{head}");
        assert_eq!(get(metrics, "/healthz").await, (200, "ok".into()), "/healthz stays on --metrics-listen");
        assert_eq!(get(metrics, "/readyz").await, (200, "ready".into()));
    }

    #[tokio::test]
    async fn both_listeners_report_the_same_readiness() {
        let m = Arc::new(Metrics::new());
        let health = start(probe_routes(m.clone())).await;
        let metrics = start(metrics_routes(m.clone())).await;
        assert_eq!(get(health, "/readyz").await.0, 503);
        assert_eq!(get(metrics, "/readyz").await.0, 503);
        m.ready_flag.store(true, Ordering::Relaxed);
        assert_eq!(get(health, "/readyz").await.0, 200);
        assert_eq!(get(metrics, "/readyz").await.0, 200);
    }

    #[tokio::test]
    async fn a_bad_address_names_its_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind("--health-listen", taken.local_addr().unwrap()).await.unwrap_err();
        assert!(err.to_string().starts_with("cannot listen on --health-listen 127.0.0.1:"), "{err}");
    }
}

#[cfg(test)]
mod series_tests {
    use std::time::Duration;

    use super::Metrics;

    /// Every labelled sample says what its label is, and a dispatch to any number of nodes
    /// is one histogram: 15 series, not 15 per node.
    #[test]
    fn labels_name_what_they_hold_and_no_series_is_per_node() {
        let m = Metrics::new();
        m.reconcile_error("kube");
        m.repaired("remove_unknown");
        m.resync_listed(true);
        m.resync_listed(false);
        for _ in 0..500 {
            m.dispatched(Duration::from_millis(3));
        }
        let text = m.render();
        for line in [
            r#"bpfleet_operator_reconcile_errors_total{reason="kube"} 1"#,
            r#"bpfleet_operator_drift_repairs_total{action="remove_unknown"} 1"#,
            r#"bpfleet_operator_resync_lists_total{answer="unchanged"} 1"#,
            r#"bpfleet_operator_resync_lists_total{answer="full"} 1"#,
            "bpfleet_operator_dispatch_duration_seconds_count 500",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(!text.contains("label=") && !text.contains("node="), "{text}");
        let dispatch = text.lines().filter(|l| l.starts_with("bpfleet_operator_dispatch_duration_seconds")).count();
        assert_eq!(dispatch, 12 + 1 + 2, "buckets, +Inf, sum and count: {text}");
    }
}

#[cfg(test)]
mod readiness_tests {
    #[test]
    fn ready_only_once_there_is_something_true_to_say() {
        // (leader, caches synced, lease seen) -> ready
        for (leader, synced, seen, want) in [
            (false, false, false, false), // has not reached the API server yet
            (false, false, true, true),   // a standby that read the Lease
            (true, false, true, false),   // a new leader whose caches are not in yet
            (true, true, true, true),
        ] {
            assert_eq!(super::readiness(leader, synced, seen), want, "leader {leader}, synced {synced}, seen {seen}");
        }
    }
}
