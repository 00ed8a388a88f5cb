//! The chart as a parent chart's dependency: Helm passes it `global` and, through a
//! dependency condition, `enabled`; the values schema must admit both (and still refuse
//! every other unknown key), or the parent cannot install at all.

use std::path::PathBuf;

use chart_tests::*;
use serde_json::Value;

fn subchart_values() -> PathBuf {
    repo().join("charts/tests/values-subchart.yaml")
}

#[test]
fn global_and_enabled_pass_lint_and_render() {
    let chart = chart().display().to_string();
    let values = subchart_values().display().to_string();
    let (ok, out, err) = run_helm(&["lint", "--strict", &chart, "-f", &values, "--set", "tls.helm.renderOffline=true"]);
    assert!(ok, "{out}{err}");
    let docs = render(&[&subchart_values()], &[]);
    named(&docs, "Deployment", "bpfleet-operator");
    named(&docs, "DaemonSet", "bpfleet-agent");
}

#[test]
fn global_and_enabled_keep_their_types_and_other_keys_stay_refused() {
    let chart = chart().display().to_string();
    for (set, names) in [("enabled=yes", "/enabled"), ("global=1", "/global"), ("globals.foo=bar", "globals")] {
        let (ok, _, err) = run_helm(&["template", "x", &chart, "--set", "tls.helm.renderOffline=true", "--set", set]);
        assert!(!ok, "--set {set} was accepted");
        assert!(err.contains(names), "--set {set}: error does not name {names}: {err}");
    }
}

/// A parent chart in a scratch directory with bpfleet (as `helm package` makes it, the
/// form a parent pulls from a registry) under charts/, switched by `bpfleet.enabled`.
struct Parent(PathBuf);

impl Parent {
    fn new(name: &str) -> Parent {
        let dir = std::env::temp_dir().join(format!("bpfleet-parent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("charts")).unwrap();
        // An empty templates/: `helm lint --strict` fails a chart without one.
        std::fs::create_dir_all(dir.join("templates")).unwrap();
        let (ok, out, err) =
            run_helm(&["package", &chart().display().to_string(), "-d", &dir.join("charts").display().to_string()]);
        assert!(ok, "{out}{err}");
        let version = chart_version();
        std::fs::write(
            dir.join("Chart.yaml"),
            format!(
                "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: bpfleet\n    version: \"{version}\"\n    condition: bpfleet.enabled\n"
            ),
        )
        .unwrap();
        // The GitOps-safe TLS mode, so the parent renders without a cluster.
        std::fs::write(
            dir.join("values.yaml"),
            "global: {imageRegistry: registry.example.com}\nbpfleet:\n  enabled: true\n  tls: {mode: certManager, certManager: {issuerRef: {name: platform-ca, kind: ClusterIssuer}}}\n",
        )
        .unwrap();
        Parent(dir)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chart_version() -> String {
    let text = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let meta: Value = serde_yaml::from_str(&text).unwrap();
    meta["version"].as_str().expect("Chart.yaml version").to_string()
}

fn template(parent: &Parent, extra: &[&str]) -> Vec<Value> {
    let path = parent.path();
    let mut args = vec!["template", "platform", path.as_str(), "-n", "platform"];
    args.extend_from_slice(extra);
    let (ok, out, err) = run_helm(&args);
    assert!(ok, "helm template of the parent failed: {err}");
    parse_docs(&out)
}

#[test]
fn a_parent_chart_installs_bpfleet_when_enabled_and_nothing_of_it_when_not() {
    let parent = Parent::new("enabled");
    let (ok, out, err) = run_helm(&["lint", "--strict", &parent.path()]);
    assert!(ok, "{out}{err}");

    let docs = template(&parent, &[]);
    // Named after the parent's release, with the values given under `bpfleet:`.
    let operator = named(&docs, "Deployment", "platform-operator");
    assert_eq!(operator["metadata"]["namespace"], "platform");
    named(&docs, "DaemonSet", "platform-agent");
    let certs = of_kind(&docs, "Certificate");
    assert_eq!(certs.len(), 3, "agent, operator, admission webhook");
    assert!(certs.iter().all(|c| c["spec"]["issuerRef"]["kind"] == "ClusterIssuer"));

    let docs = template(&parent, &["--set", "bpfleet.enabled=false"]);
    assert!(docs.is_empty(), "bpfleet disabled, yet rendered: {docs:?}");
}

/// The subchart's schema applies to what the parent passes: without `global` and
/// `enabled` in it, the parent above would fail the same way.
#[test]
fn a_parent_cannot_pass_bpfleet_an_unknown_key() {
    let parent = Parent::new("refused");
    let (ok, _, err) = run_helm(&["template", "platform", &parent.path(), "--set", "bpfleet.operatr.replicas=2"]);
    assert!(!ok, "an unknown key under bpfleet: was accepted");
    assert!(err.contains("operatr"), "{err}");
}
