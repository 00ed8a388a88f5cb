//! cert-manager issuers of any kind: `tls.certManager.issuerRef` reaches every
//! Certificate exactly as given, so ClusterIssuers and external issuers (their own
//! kinds and API groups) work, and neither the schema nor the template narrows them.

use chart_tests::*;
use serde_json::{Value, json};

/// Every Certificate's issuerRef, rendered with the given issuerRef fields.
fn issuer_refs(fields: &[(&str, &str)]) -> Vec<Value> {
    let mut args = vec!["--set".to_string(), "tls.mode=certManager".to_string()];
    for (k, v) in fields {
        args.push("--set-string".into());
        args.push(format!("tls.certManager.issuerRef.{k}={v}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let docs = render(&[], &refs);
    let certs = of_kind(&docs, "Certificate");
    assert_eq!(certs.len(), 3, "the agent's, the operator's and the admission webhook's Certificate");
    certs.iter().map(|c| c["spec"]["issuerRef"].clone()).collect()
}

#[test]
fn a_cluster_issuer_is_used_as_given() {
    for r in issuer_refs(&[("name", "platform-ca"), ("kind", "ClusterIssuer")]) {
        assert_eq!(r, json!({"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}));
    }
}

#[test]
fn external_issuers_keep_their_kind_and_group() {
    for (name, kind, group) in [
        ("pca", "AWSPCAClusterIssuer", "awspca.cert-manager.io"),
        ("origin", "OriginIssuer", "cert-manager.k8s.cloudflare.com"),
        ("step", "StepClusterIssuer", "certmanager.step.sm"),
    ] {
        for r in issuer_refs(&[("name", name), ("kind", kind), ("group", group)]) {
            assert_eq!(r, json!({"name": name, "kind": kind, "group": group}));
        }
        // And the chart lints clean with it.
        let chart = chart().display().to_string();
        let (ok, out, err) = run_helm(&[
            "lint",
            "--strict",
            &chart,
            "--set",
            "tls.mode=certManager",
            "--set-string",
            &format!("tls.certManager.issuerRef.name={name}"),
            "--set-string",
            &format!("tls.certManager.issuerRef.kind={kind}"),
            "--set-string",
            &format!("tls.certManager.issuerRef.group={group}"),
        ]);
        assert!(ok, "{kind}: {out}{err}");
    }
}

/// An empty kind or group is left out of the Certificates, and cert-manager's defaults
/// (Issuer, cert-manager.io) apply.
#[test]
fn an_empty_kind_or_group_is_left_to_cert_managers_default() {
    for r in issuer_refs(&[("name", "ca"), ("kind", ""), ("group", "")]) {
        assert_eq!(r, json!({"name": "ca"}));
    }
}
