//! The operator's NetworkPolicy (opt-in): who may reach it and where it may go.

use chart_tests::{named, of_kind, render};
use serde_json::{Value, json};

#[test]
fn off_by_default() {
    assert!(of_kind(&render(&[], &[]), "NetworkPolicy").is_empty());
}

#[test]
fn the_operator_reaches_dns_agents_the_api_and_registries_only() {
    let docs = render(
        &[],
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "networkPolicy.apiServerPort=6443",
            "--set",
            "networkPolicy.registryPorts={443,5000}",
            "--set",
            "networkPolicy.metricsFrom[0].matchLabels.team=monitoring",
            "--set",
            "operator.metrics.expose=true",
        ],
    );
    let np = named(&docs, "NetworkPolicy", "bpfleet-operator");
    assert_eq!(np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "bpfleet-operator");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ports: Vec<Value> = np["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().unwrap().iter().map(|p| p["port"].clone()))
        .collect();
    assert_eq!(ports, [json!(53), json!(53), json!(50051), json!(6443), json!(443), json!(5000)]);
    // Every egress rule is by port: no rule opens everything.
    assert!(np["spec"]["egress"].as_array().unwrap().iter().all(|r| r["ports"].is_array()));
    let ingress = &np["spec"]["ingress"][0];
    assert_eq!(ingress["from"][0]["namespaceSelector"]["matchLabels"]["team"], "monitoring");
    assert_eq!(ingress["ports"][0]["port"], 8080);
}

#[test]
fn without_scrapers_only_map_reads_may_connect_to_the_operator() {
    // Where the API server enforces admission itself (no webhook to call).
    let vap = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";
    let docs = render(&[], &["--set", "networkPolicy.enabled=true", "--api-versions", vap]);
    let np = named(&docs, "NetworkPolicy", "bpfleet-operator");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "{np}");
    assert_eq!(ingress[0]["ports"], serde_json::json!([{"port": 8443, "protocol": "TCP"}]), "map reads only: {np}");
    let docs =
        render(&[], &["--set", "networkPolicy.enabled=true", "--set", "maps.enabled=false", "--api-versions", vap]);
    let np = named(&docs, "NetworkPolicy", "bpfleet-operator");
    assert!(np["spec"]["ingress"].is_null() || np["spec"]["ingress"].as_array().unwrap().is_empty());
}

#[test]
fn prometheus_gates_may_query_only_the_listed_addresses_and_reach_their_ports() {
    let docs = render(
        &[],
        &[
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "rollout.prometheusAddresses={http://prometheus.monitoring:9090,https://prom.example}",
        ],
    );
    let op = named(&docs, "Deployment", "bpfleet-operator");
    let args: Vec<&str> = op["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| a.starts_with("--prometheus-address"))
        .collect();
    assert_eq!(
        args,
        ["--prometheus-address=http://prometheus.monitoring:9090", "--prometheus-address=https://prom.example"]
    );
    let np = named(&docs, "NetworkPolicy", "bpfleet-operator");
    let ports: Vec<Value> =
        np["spec"]["egress"][1]["ports"].as_array().unwrap().iter().map(|p| p["port"].clone()).collect();
    assert_eq!(ports, [json!(50051), json!(443), json!(9090)], "https's 443 is a registry port already");
    // None by default: no flag, no port.
    let docs = render(&[], &["--set", "networkPolicy.enabled=true"]);
    let op = named(&docs, "Deployment", "bpfleet-operator");
    assert!(!op.to_string().contains("--prometheus-address"));
}
