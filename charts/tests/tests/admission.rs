//! The admission objects: the policy where the cluster serves ValidatingAdmissionPolicy,
//! the operator's webhook (with its serving certificate and Service) where it does not,
//! and the grants from values in the one policy object both read.

use chart_tests::*;
use serde_json::json;

const VAP_V1: &str = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";
const VAP_V1BETA1: &str = "admissionregistration.k8s.io/v1beta1/ValidatingAdmissionPolicy";

#[test]
fn a_cluster_with_the_policy_api_gets_the_policy_and_no_webhook() {
    let docs = render(&[], &["--api-versions", VAP_V1]);
    let vap = named(&docs, "ValidatingAdmissionPolicy", "bpfleet-bpfprograms");
    assert_eq!(vap["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(vap["spec"]["failurePolicy"], "Fail");
    assert_eq!(vap["spec"]["paramKind"], json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfAdmissionPolicy"}));
    let generated: serde_json::Value = serde_yaml::from_str(&crds::crdgen::render_admission_policy().unwrap()).unwrap();
    assert_eq!(vap["spec"]["validations"], generated["validations"], "the policy carries the generated CEL");
    assert_eq!(vap["spec"]["variables"], generated["variables"]);
    let binding = named(&docs, "ValidatingAdmissionPolicyBinding", "bpfleet-bpfprograms");
    assert_eq!(binding["spec"]["paramRef"], json!({"name": "default", "parameterNotFoundAction": "Deny"}));
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert!(of_kind(&docs, "ValidatingWebhookConfiguration").is_empty());
    let op = named(&docs, "Deployment", "bpfleet-operator").to_string();
    assert!(!op.contains("--webhook-listen"), "no webhook served where the policy decides");

    // v1beta1 served (1.28, 1.29) does not mean enforced (a separate feature gate): auto
    // keeps the webhook there, and the beta policy is rendered only when asked for.
    let beta = render(&[], &["--api-versions", VAP_V1BETA1]);
    assert!(of_kind(&beta, "ValidatingAdmissionPolicy").is_empty());
    named(&beta, "ValidatingWebhookConfiguration", "bpfleet-bpfprograms");
    let beta = render(&[], &["--api-versions", VAP_V1BETA1, "--set", "admission.mode=policy-v1beta1"]);
    assert_eq!(
        named(&beta, "ValidatingAdmissionPolicy", "bpfleet-bpfprograms")["apiVersion"],
        "admissionregistration.k8s.io/v1beta1"
    );
}

#[test]
fn a_cluster_without_it_gets_the_operators_webhook() {
    let docs = render(&[], &[]);
    assert!(of_kind(&docs, "ValidatingAdmissionPolicy").is_empty());
    let hook = &named(&docs, "ValidatingWebhookConfiguration", "bpfleet-bpfprograms")["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["rules"][0]["resources"], json!(["bpfprograms"]), "not the status subresource");
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"name": "bpfleet-webhook", "namespace": "bpfleet-system", "path": "/validate-bpfprogram", "port": 443})
    );
    // helm mode: the caBundle is the CA of the Secret the operator serves, and no key of
    // that CA is kept anywhere.
    let secret = named(&docs, "Secret", "bpfleet-webhook-tls");
    assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    let keys: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    let op = named(&docs, "Deployment", "bpfleet-operator").to_string();
    assert!(op.contains("--webhook-listen=0.0.0.0:9443"), "{op}");
    assert!(op.contains("\"secretName\":\"bpfleet-webhook-tls\""));
    let svc = named(&docs, "Service", "bpfleet-webhook");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhook");
}

#[test]
fn cert_manager_injects_the_webhook_ca() {
    let docs = render(&[], &["--set", "tls.mode=certManager", "--set", "tls.certManager.issuerRef.name=ca"]);
    let vwc = named(&docs, "ValidatingWebhookConfiguration", "bpfleet-bpfprograms");
    assert_eq!(vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "bpfleet-system/bpfleet-webhook");
    let cert = named(&docs, "Certificate", "bpfleet-webhook");
    assert_eq!(cert["spec"]["dnsNames"], json!(["bpfleet-webhook.bpfleet-system.svc"]));
    assert_eq!(cert["spec"]["privateKey"]["algorithm"], "ECDSA");
}

#[test]
fn grants_reach_the_policy_object_and_only_admins_are_granted_by_default() {
    let docs = render(&[], &[]);
    let policy = named(&docs, "BpfAdmissionPolicy", "default");
    // Admins, and the operator for the BpfPrograms that run tenants' namespaced programs
    // (XDP and TC only: what a BpfNamespacedProgram may be).
    assert_eq!(
        policy["spec"]["grants"],
        json!([
            {"name": "cluster-admins", "groups": ["system:masters"], "programTypes": ["*"], "sources": ["*"], "allowControlPlane": true},
            {"name": "bpfleet-tenant-mirrors", "serviceAccounts": [{"namespace": "bpfleet-system", "name": "bpfleet-operator"}],
             "programTypes": ["XDP", "TC"], "sources": ["*"], "allowControlPlane": true}
        ])
    );
    let (ok, _, err) = run_helm(&[
        "template",
        "bpfleet",
        &chart().display().to_string(),
        "--set",
        "tls.helm.renderOffline=true",
        "--set",
        "admission.grants[0].name=x",
        "--set",
        "admission.grants[0].programTypes={Xdp}",
    ]);
    assert!(!ok && err.contains("/admission/grants/0/programTypes/0"), "a misspelt type is refused at render: {err}");
    let off = render(&[], &["--set", "admission.enabled=false"]);
    assert!(of_kind(&off, "BpfAdmissionPolicy").is_empty());
    assert!(of_kind(&off, "ValidatingWebhookConfiguration").is_empty());
}

#[test]
fn the_network_policy_lets_the_api_server_reach_the_webhook() {
    let docs = render(&[], &["--set", "networkPolicy.enabled=true"]);
    let np = named(&docs, "NetworkPolicy", "bpfleet-operator");
    let ports: Vec<serde_json::Value> = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter().map(|p| p["port"].clone()))
        .collect();
    assert_eq!(ports, [json!(8443), json!(9443)], "map reads and the webhook, both called by the API server");
    let with_policy =
        render(&[], &["--set", "networkPolicy.enabled=true", "--set", "maps.enabled=false", "--api-versions", VAP_V1]);
    let np = named(&with_policy, "NetworkPolicy", "bpfleet-operator");
    assert!(np["spec"]["ingress"].as_array().is_none_or(|r| r.is_empty()), "no webhook, no map reads, no port: {np}");
}
