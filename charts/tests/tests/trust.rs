//! The trust root (issue 21, point 3): ECDSA P-256 certificates with lifetimes in days, no
//! CA private key anywhere the chart renders, the operator reading only the Secrets it is
//! told about, and its default placement.

use std::path::{Path, PathBuf};
use std::process::Command;

use chart_tests::*;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

const LEAVES: [&str; 2] = ["bpfleet-agent-tls", "bpfleet-operator-tls"];
/// The admission webhook's serving certificate (helm mode, clusters without the policy API).
const WEBHOOK_LEAF: &str = "bpfleet-webhook-tls";

/// A directory of its own per test (tests run in parallel), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bpfleet-trust-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn secret_data(docs: &[Value], name: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let s: Secret = serde_json::from_value(named(docs, "Secret", name).clone()).unwrap();
    s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

/// `openssl <args>`: (success, stdout).
fn openssl(args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new("openssl").args(args).arg(file).output().expect("openssl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn text_of(cert: &Path) -> String {
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in"], cert);
    assert!(ok, "{} is not a certificate", cert.display());
    text
}

#[test]
fn helm_mode_issues_ecdsa_p256_leaves_that_live_the_configured_days() {
    for (days, extra) in [(90, vec![]), (7, vec!["--set", "tls.validityDays=7", "--set", "tls.helm.renewBeforeDays=2"])]
    {
        let docs = render(&[], &extra);
        let dir = Scratch::new(&format!("days-{days}"));
        for leaf in LEAVES {
            let data = secret_data(&docs, leaf);
            let key = String::from_utf8(data["tls.key"].clone()).unwrap();
            assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{leaf}: {key}");
            let crt = dir.write(&format!("{leaf}.crt"), &data["tls.crt"]);
            let ca = dir.write(&format!("{leaf}-ca.crt"), &data["ca.crt"]);
            for cert in [&crt, &ca] {
                let text = text_of(cert);
                assert!(text.contains("id-ecPublicKey") && text.contains("P-256"), "{leaf}: {text}");
                assert!(text.contains("ecdsa-with-SHA256"), "{leaf}: signed with ECDSA: {text}");
            }
            // Expires within `days` (and a minute of slack), not a day earlier.
            let secs = |d: i64| (d * 86400).to_string();
            let (survives, _) = openssl(&["x509", "-noout", "-checkend", &secs(days), "-in"], &crt);
            assert!(!survives, "{leaf} outlives {days} days");
            let (survives, _) = openssl(&["x509", "-noout", "-checkend", &secs(days - 1), "-in"], &crt);
            assert!(survives, "{leaf} ends more than a day before {days} days");
            // The annotation that decides renewal at `helm upgrade` is the certificate's end.
            let (_, end) = openssl(&["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"], &crt);
            let end = end.trim().trim_start_matches("notAfter=").replacen(' ', "T", 1);
            let annotated = &named(&docs, "Secret", leaf)["metadata"]["annotations"]["bpfleet.dev/not-after"];
            assert_eq!(annotated, &Value::from(end), "{leaf}");
            let (ok, out) = openssl(&["verify", "-CAfile", ca.to_str().unwrap()], &crt);
            assert!(ok, "{leaf} does not chain to its ca.crt: {out}");
        }
    }
}

/// The CA signs both leaves in the render and is dropped: the only private keys in the
/// output are the two leaves', each matching its own certificate, and no Secret holds
/// anything else that could sign.
#[test]
fn no_ca_private_key_is_rendered() {
    let docs = render(&[], &[]);
    let dir = Scratch::new("no-ca-key");
    let mut secrets: Vec<String> =
        of_kind(&docs, "Secret").iter().map(|s| s["metadata"]["name"].as_str().unwrap().to_string()).collect();
    secrets.sort();
    let mut want = LEAVES.map(String::from).to_vec();
    want.push(WEBHOOK_LEAF.into());
    assert_eq!(secrets, want, "helm mode renders the leaf Secrets only (mTLS, and the admission webhook's)");
    // The webhook's CA is another, also dropped: it can sign no agent or operator certificate.
    assert_ne!(secret_data(&docs, WEBHOOK_LEAF)["ca.crt"], secret_data(&docs, LEAVES[0])["ca.crt"]);
    let mut keys = 0;
    for doc in &docs {
        let name = &doc["metadata"]["name"];
        if doc["kind"] != "Secret" {
            assert!(!doc.to_string().contains("PRIVATE KEY"), "a private key in {} {name}", doc["kind"]);
            continue;
        }
        let mut entries: Vec<(String, Vec<u8>)> = secret_data(&docs, name.as_str().unwrap()).into_iter().collect();
        for (k, v) in doc["stringData"].as_object().into_iter().flatten() {
            entries.push((k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec()));
        }
        for (k, v) in entries {
            if String::from_utf8_lossy(&v).contains("PRIVATE KEY") {
                assert_eq!(k, "tls.key", "a private key under {k} of Secret {name}");
                keys += 1;
            }
        }
    }
    assert_eq!(keys, 3);
    let pubkey = |args: &[&str], file: &Path| {
        let (ok, out) = openssl(args, file);
        assert!(ok, "{}", file.display());
        out
    };
    let ca = dir.write("ca.crt", &secret_data(&docs, LEAVES[0])["ca.crt"]);
    let ca_key = pubkey(&["x509", "-noout", "-pubkey", "-in"], &ca);
    assert!(text_of(&ca).contains("CA:TRUE"));
    for leaf in LEAVES {
        let data = secret_data(&docs, leaf);
        assert_eq!(data["ca.crt"], std::fs::read(&ca).unwrap(), "both sides trust the same CA");
        let crt = dir.write(&format!("{leaf}.crt"), &data["tls.crt"]);
        let key = dir.write(&format!("{leaf}.key"), &data["tls.key"]);
        let of_key = pubkey(&["pkey", "-pubout", "-in"], &key);
        assert_eq!(of_key, pubkey(&["x509", "-noout", "-pubkey", "-in"], &crt), "{leaf}: key and certificate match");
        assert_ne!(of_key, ca_key, "{leaf}: its key is not the CA's");
        assert!(text_of(&crt).contains("CA:FALSE"), "{leaf} cannot sign certificates");
    }
}

#[test]
fn renewal_must_start_before_the_certificates_end() {
    let chart = chart().display().to_string();
    let (ok, _, err) = run_helm(&[
        "template",
        "x",
        &chart,
        "--set",
        "tls.helm.renderOffline=true",
        "--set",
        "tls.validityDays=30",
        "--set",
        "tls.helm.renewBeforeDays=30",
    ]);
    assert!(!ok && err.contains("tls.helm.renewBeforeDays (30) must be less than tls.validityDays (30)"), "{err}");
}

#[test]
fn cert_manager_issues_ecdsa_p256_keys_renewed_with_each_certificate() {
    let docs = render(&[], &["--set", "tls.mode=certManager", "--set", "tls.certManager.issuerRef.name=ca"]);
    let certs = of_kind(&docs, "Certificate");
    assert_eq!(certs.len(), 3, "agent, operator, admission webhook");
    for c in certs {
        assert_eq!(c["spec"]["privateKey"], json!({"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}));
        // 90 days, renewed 15 days before the end.
        assert_eq!((c["spec"]["duration"].as_str(), c["spec"]["renewBefore"].as_str()), (Some("2160h"), Some("360h")));
    }
    assert!(of_kind(&docs, "Secret").is_empty(), "cert-manager mode renders no key");
}

/// Every rule of every Role and ClusterRole that names Secrets.
fn secret_rules(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .filter(|rule| rule["resources"].as_array().is_some_and(|r| r.iter().any(|x| x == "secrets" || x == "*")))
        .collect()
}

#[test]
fn the_operator_reads_only_the_secrets_it_is_told_about() {
    // Nothing named: no rule at all, so neither the mTLS keys nor Helm's release records
    // (which hold every rendered Secret) are readable by the operator.
    assert_eq!(secret_rules(&render(&[], &[])), Vec::<Value>::new());
    let docs = render(
        &[],
        &[
            "--set",
            "operator.images.pullSecrets={regcred,team-a-registry,cosign-keys}",
            "--set",
            "operator.images.signatureKeysSecret=cosign-keys",
        ],
    );
    let rules = secret_rules(&docs);
    assert_eq!(
        rules,
        vec![
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["regcred", "team-a-registry", "cosign-keys"], "verbs": ["get"]})
        ]
    );
    let docs = render(&[], &["--set", "operator.images.signatureKeysSecret=cosign-keys"]);
    assert_eq!(secret_rules(&docs)[0]["resourceNames"], json!(["cosign-keys"]));
    // Only in the release namespace's Role, never cluster-wide.
    assert!(!named(&docs, "ClusterRole", "bpfleet-operator").to_string().contains("secrets"));
}

#[test]
fn the_operator_prefers_control_plane_nodes_without_requiring_them() {
    let docs = render(&[], &[]);
    let pod = &named(&docs, "Deployment", "bpfleet-operator")["spec"]["template"]["spec"];
    let node_affinity = &pod["affinity"]["nodeAffinity"];
    assert_eq!(
        node_affinity["preferredDuringSchedulingIgnoredDuringExecution"],
        json!([{"weight": 100, "preference": {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}}])
    );
    // A cluster without a schedulable control-plane node (the lab's single node, managed
    // clusters) still runs it.
    assert!(node_affinity["requiredDuringSchedulingIgnoredDuringExecution"].is_null());
    assert!(pod["nodeSelector"].is_null());
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}])
    );
    // The production variant from docs/install.md: a requirement instead.
    let required = "operator.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0]";
    let docs = render(
        &[],
        &[
            "--set",
            &format!("{required}.key=node-role.kubernetes.io/control-plane"),
            "--set",
            &format!("{required}.operator=Exists"),
        ],
    );
    let pod = &named(&docs, "Deployment", "bpfleet-operator")["spec"]["template"]["spec"];
    let terms = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    assert_eq!(terms[0]["matchExpressions"][0]["key"], "node-role.kubernetes.io/control-plane");
}
