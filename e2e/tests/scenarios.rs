//! Scenarios against a real API server. The operator (issue 4) is required for them;
//! until it exists this only checks that the harness skips cleanly without a cluster.

#[test]
fn skips_without_an_api_server() {
    if let Some(kubeconfig) = e2e::kubeconfig_or_skip("scenarios") {
        // A cluster is configured: the CRDs we ship must at least parse for it.
        assert!(kubeconfig.exists(), "KUBECONFIG points at a missing file: {}", kubeconfig.display());
    }
}
