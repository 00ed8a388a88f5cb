//! Runs helm on the chart and parses what it renders. The helm binary comes from
//! `$HELM` or `scripts/install-helm.sh` (which `scripts/test.sh` runs first).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

pub fn chart() -> PathBuf {
    repo().join("charts/bpfleet")
}

/// The helm binary, installed on demand.
pub fn helm() -> PathBuf {
    if let Some(h) = std::env::var_os("HELM") {
        return h.into();
    }
    let local = repo().join(".tools/helm/helm");
    if !local.exists() {
        let out = Command::new("bash").arg(repo().join("scripts/install-helm.sh")).output().expect("bash");
        assert!(out.status.success(), "cannot install helm: {}", String::from_utf8_lossy(&out.stderr));
    }
    local
}

/// `helm <args>`: (success, stdout, stderr).
pub fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm()).args(args).output().expect("run helm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Rendered documents of `helm template` with the given values files (and `--set`s).
pub fn render(values: &[&Path], extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    // No cluster here: helm-mode TLS must be told this output is for inspection only.
    let mut args: Vec<String> = vec![
        "template".into(),
        "bpfleet".into(),
        chart.display().to_string(),
        "-n".into(),
        "bpfleet-system".into(),
        "--set".into(),
        "tls.helm.renderOffline=true".into(),
    ];
    for v in values {
        args.push("-f".into());
        args.push(v.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = run_helm(&refs);
    assert!(ok, "helm template failed: {err}");
    parse_docs(&out)
}

/// The error of `helm template` with `extra` arguments, which must fail (a value the
/// schema or a template refuses).
pub fn render_err(extra: &[&str]) -> String {
    let chart = chart().display().to_string();
    let mut args = vec!["template", "x", &chart, "--set", "tls.helm.renderOffline=true"];
    args.extend(extra);
    let (ok, _, err) = run_helm(&args);
    assert!(!ok, "rendered with {extra:?}");
    err
}

pub fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("rendered YAML parses");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// Every container of a pod template, init containers included.
pub fn containers(workload: &Value) -> Vec<&Value> {
    let spec = &workload["spec"]["template"]["spec"];
    ["initContainers", "containers"].iter().flat_map(|k| spec[*k].as_array().into_iter().flatten()).collect()
}
