//! End-to-end harness: a real API server from `KUBECONFIG`, agents as local processes
//! in network namespaces ("process-mode nodes"). Without `KUBECONFIG` every scenario
//! skips with one line.

/// The kubeconfig to use, or `None` (and one printed line) when there is none.
pub fn kubeconfig_or_skip(test: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => Some(p.into()),
        _ => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP e2e {test}: KUBECONFIG is not set (no API server)");
            None
        }
    }
}
