//! Prometheus metrics and the `/metrics` + `/healthz` endpoints (the probe also on a
//! listener of its own, see [`probe_routes`]). Per-program kernel run statistics are read
//! from the kernel at scrape time (they need `kernel.bpf_stats_enabled`, which the agent
//! turns on while it runs). `/metrics` is OpenMetrics text, served as such
//! ([`OPENMETRICS_CONTENT_TYPE`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::programs::ProgramInfo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Reason;
use crate::store::OwnerRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    owner: String,
    program: String,
    r#type: String,
}

pub struct Metrics {
    registry: Registry,
    owners: Gauge,
    programs: Gauge,
    links: Gauge,
    apply_seconds: Histogram,
    apply_errors: Family<ReasonLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    run_count: Family<ProgramLabels, Counter<u64, AtomicU64>>,
    run_time: Family<ProgramLabels, Counter<f64, AtomicU64>>,
    /// Held while a scrape refills the run statistics and encodes them: two scrapes at once
    /// would otherwise add the kernel's totals twice.
    scrape: Mutex<()>,
    heap_in_use: Gauge,
    heap_retained_free: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bpfleet_agent");
        let owners = Gauge::default();
        let programs = Gauge::default();
        let links = Gauge::default();
        // 1 ms .. ~16 s: loads are dominated by the verifier.
        let apply_seconds =
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 16.0]);
        let apply_errors = Family::<ReasonLabel, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let run_count = Family::<ProgramLabels, Counter<u64, AtomicU64>>::default();
        let run_time = Family::<ProgramLabels, Counter<f64, AtomicU64>>::default();
        registry.register("owners_managed", "BpfPrograms this agent runs", owners.clone());
        registry.register("programs_managed", "Kernel programs this agent has loaded and pinned", programs.clone());
        registry.register(
            "links_managed",
            "Attachments (links, clsact filters) this agent holds, on the node and inside pods",
            links.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time to apply one revision (load, verify, attach, pin)",
            apply_seconds.clone(),
        );
        registry.register("apply_errors", "Failed applies by reason", apply_errors.clone());
        registry.register(
            "grpc_requests",
            "Mutating gRPC requests by method and outcome (ok, refused, failed)",
            requests.clone(),
        );
        // Counters (`..._total`): the kernel's totals only grow while a program is loaded,
        // and start again at 0 for a new one, which `rate()` reads as a counter reset.
        registry.register("program_run_count", "Times the kernel ran each program (BPF stats)", run_count.clone());
        registry.register(
            "program_run_time_seconds",
            "Time the kernel spent in each program (BPF stats)",
            run_time.clone(),
        );
        let heap_in_use = Gauge::default();
        let heap_retained_free = Gauge::default();
        registry.register(
            "heap_in_use_bytes",
            "Bytes the agent has allocated and not freed (malloc's own count; RSS minus this is code, stacks and what malloc keeps)",
            heap_in_use.clone(),
        );
        registry.register(
            "heap_free_retained_bytes",
            "Bytes freed by the agent that malloc keeps for reuse instead of returning them to the kernel",
            heap_retained_free.clone(),
        );
        // Every reason is present from the start, so dashboards show zeros, not gaps.
        for r in Reason::ALL {
            let _ = apply_errors.get_or_create(&ReasonLabel { reason: r.as_str().into() });
        }
        Self {
            registry,
            owners,
            programs,
            links,
            apply_seconds,
            apply_errors,
            requests,
            run_count,
            run_time,
            scrape: Mutex::new(()),
            heap_in_use,
            heap_retained_free,
        }
    }

    /// One Apply or Remove answered: `ok`, `refused` (stale leadership epoch) or `failed`.
    pub fn request(&self, method: &str, outcome: &str) {
        self.requests.get_or_create(&RequestLabels { method: method.into(), outcome: outcome.into() }).inc();
    }

    pub fn observe_apply(&self, took: Duration, error: Option<Reason>) {
        self.apply_seconds.observe(took.as_secs_f64());
        if let Some(r) = error {
            self.apply_errors.get_or_create(&ReasonLabel { reason: r.as_str().into() }).inc();
        }
    }

    pub fn set_managed(&self, records: &[&OwnerRecord]) {
        self.owners.set(records.len() as i64);
        self.programs.set(records.iter().map(|r| r.programs.len() as i64).sum());
        let on_node: usize = records.iter().flat_map(|r| &r.programs).map(|p| p.links.len()).sum();
        let in_pods: usize = records.iter().flat_map(|r| &r.pods).map(|p| p.links.len()).sum();
        self.links.set((on_node + in_pods) as i64);
    }

    /// OpenMetrics text exposition, with fresh kernel run statistics.
    pub fn render(&self, records: &[OwnerRecord]) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        // Counters hold the kernel's totals: each scrape starts them from 0 (a program
        // gone since the last scrape leaves no series behind) and adds what the kernel says.
        self.run_count.clear();
        self.run_time.clear();
        for r in records {
            for p in &r.programs {
                let Ok(info) = ProgramInfo::from_pin(&p.pin) else { continue };
                let labels = ProgramLabels {
                    owner: r.name.clone(),
                    program: p.name.clone(),
                    r#type: p.program_type.as_str().into(),
                };
                self.run_count.get_or_create(&labels).inc_by(info.run_count());
                self.run_time.get_or_create(&labels).inc_by(info.run_time().as_secs_f64());
            }
        }
        if let Some((in_use, free)) = heap() {
            self.heap_in_use.set(in_use as i64);
            self.heap_retained_free.set(free as i64);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// glibc malloc's bytes in use (small and mmapped chunks) and free bytes it keeps.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Option<(u64, u64)> {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    Some(((info.uordblks + info.hblkhd) as u64, info.fordblks as u64))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> Option<(u64, u64)> {
    None
}

/// Turn on the kernel's per-program run statistics for as long as the returned handle
/// lives. Without it run counts stay 0 (not an error: some kernels forbid it).
pub fn enable_bpf_stats() -> Option<std::os::fd::OwnedFd> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(error = %e, "cannot enable BPF run statistics; program_run_* metrics will read 0");
            None
        }
    }
}

/// What prometheus-client's text encoder writes: OpenMetrics 1.0 (`_total` counters,
/// `# EOF`), not Prometheus text 0.0.4, whose parser reads a `_total` sample under a
/// `counter` TYPE line of another name as untyped.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the HTTP routes read of the agent (`Manager` implements it): the routes take this
/// rather than the manager, so the manager, which counts into `Metrics`, is not imported back.
pub trait Scraped: Send + Sync + 'static {
    /// The bpffs root the probe checks.
    fn bpffs_root(&self) -> &std::path::Path;
    fn metrics(&self) -> &Metrics;
    /// Records of everything running, rendered per program.
    fn records(&self) -> Vec<OwnerRecord>;
    /// The families `spec.metrics` of `records` export (OpenMetrics lines, no `# EOF`).
    fn export(&self, records: &[OwnerRecord]) -> String;
}

/// The probe: `/healthz`, which fails while the bpffs root is missing. Served on
/// --metrics-listen with `/metrics`, and alone on --health-listen, so that /metrics can stay
/// on loopback (the agent uses the node's network) while the kubelet still probes.
pub fn probe_routes<A: Scraped>(agent: Arc<A>) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let ok = agent.bpffs_root().is_dir();
            async move { if ok { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "bpffs root missing") } }
        }),
    )
}

/// What --metrics-listen serves: `/metrics` and the [`probe_routes`].
pub fn metrics_routes<A: Scraped>(agent: Arc<A>) -> axum::Router {
    let m = Arc::clone(&agent);
    probe_routes(agent).route(
        "/metrics",
        axum::routing::get(move || {
            let m = Arc::clone(&m);
            async move {
                let body = tokio::task::spawn_blocking(move || {
                    let records = m.records();
                    with_exported(m.metrics().render(&records), &m.export(&records))
                })
                .await
                .unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body)
            }
        }),
    )
}

/// The agent's own families with the exported ones before the closing `# EOF`.
fn with_exported(mut own: String, exported: &str) -> String {
    if exported.is_empty() {
        return own;
    }
    let end = own.rfind("# EOF").unwrap_or(own.len());
    own.truncate(end);
    own.push_str(exported);
    own.push_str("# EOF\n");
    own
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
