//! Where /metrics and the probes listen: /metrics on loopback unless
//! `<component>.metrics.expose` (the agent uses the node's network), the probes on a
//! health port that serves nothing else; Services, ServiceMonitors and the NetworkPolicy
//! follow `expose`.

use chart_tests::*;
use serde_json::{Value, json};

fn container<'a>(docs: &'a [Value], kind: &str, name: &str, container: &str) -> &'a Value {
    containers(named(docs, kind, name))
        .into_iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container} in {kind} {name}"))
}

fn operator(docs: &[Value]) -> &Value {
    container(docs, "Deployment", "bpfleet-operator", "operator")
}

fn agent(docs: &[Value]) -> &Value {
    container(docs, "DaemonSet", "bpfleet-agent", "agent")
}

fn arg(c: &Value, flag: &str) -> String {
    let prefix = format!("{flag}=");
    let args = c["args"].as_array().unwrap();
    let found = args.iter().filter_map(Value::as_str).find(|a| a.starts_with(&prefix));
    found.unwrap_or_else(|| panic!("no {flag} in {args:?}"))[prefix.len()..].to_string()
}

/// Named container ports: (name, port).
fn ports(c: &Value) -> Vec<(String, i64)> {
    let ports = c["ports"].as_array().unwrap().iter();
    ports.map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap())).collect()
}

fn probe_ports(c: &Value) -> Vec<Value> {
    ["livenessProbe", "readinessProbe"].iter().map(|p| c[*p]["httpGet"]["port"].clone()).collect()
}

fn rendered(docs: &[Value], kind: &str, name: &str) -> bool {
    docs.iter().any(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

#[test]
fn metrics_listen_on_loopback_and_probes_on_the_health_port_by_default() {
    let docs = render(&[], &[]);
    let (op, ag) = (operator(&docs), agent(&docs));
    assert_eq!(arg(op, "--metrics-listen"), "127.0.0.1:8080");
    assert_eq!(arg(op, "--health-listen"), "0.0.0.0:8081");
    assert_eq!(arg(ag, "--metrics-listen"), "127.0.0.1:9464");
    // Host network: the node's address, as the gRPC port, not every interface.
    assert_eq!(arg(ag, "--health-listen"), "$(POD_IP):9465");
    // A loopback port is not declared as a container port, and nothing probes it.
    for c in [op, ag] {
        assert!(!ports(c).iter().any(|(name, _)| name == "metrics"), "{:?}", ports(c));
    }
    assert!(ports(op).contains(&("health".to_string(), 8081)));
    assert!(ports(ag).contains(&("health".to_string(), 9465)));
    assert_eq!(probe_ports(op), [json!("health"), json!("health")]);
    assert_eq!(probe_ports(ag), [json!("health"), json!("health")]);
    assert_eq!(op["readinessProbe"]["httpGet"]["path"], "/readyz");
    // Nothing to scrape, so no metrics Services.
    assert!(!rendered(&docs, "Service", "bpfleet-operator-metrics"));
    assert!(!rendered(&docs, "Service", "bpfleet-agent-metrics"));
}

#[test]
fn expose_serves_metrics_beyond_the_pod_with_services_and_service_monitors() {
    let docs = render(
        &[],
        &[
            "--set",
            "operator.metrics.expose=true",
            "--set",
            "agent.metrics.expose=true",
            "--set",
            "serviceMonitor.enabled=true",
        ],
    );
    let (op, ag) = (operator(&docs), agent(&docs));
    assert_eq!(arg(op, "--metrics-listen"), "0.0.0.0:8080");
    assert_eq!(arg(ag, "--metrics-listen"), "$(POD_IP):9464");
    // Probes stay on the health port.
    assert_eq!(arg(op, "--health-listen"), "0.0.0.0:8081");
    assert_eq!(probe_ports(op), [json!("health"), json!("health")]);
    assert_eq!(probe_ports(ag), [json!("health"), json!("health")]);
    assert!(ports(op).contains(&("metrics".to_string(), 8080)));
    assert!(ports(ag).contains(&("metrics".to_string(), 9464)));
    for name in ["bpfleet-operator-metrics", "bpfleet-agent-metrics"] {
        assert_eq!(named(&docs, "Service", name)["spec"]["ports"][0]["targetPort"], "metrics");
    }
    let monitors: Vec<_> = of_kind(&docs, "ServiceMonitor").iter().map(|m| m["metadata"]["name"].clone()).collect();
    assert_eq!(monitors, [json!("bpfleet-operator"), json!("bpfleet-agent")]);
}

#[test]
fn service_monitors_only_for_exposed_components_and_none_exposed_is_refused() {
    let docs = render(&[], &["--set", "serviceMonitor.enabled=true", "--set", "operator.metrics.expose=true"]);
    let monitors: Vec<_> = of_kind(&docs, "ServiceMonitor").iter().map(|m| m["metadata"]["name"].clone()).collect();
    assert_eq!(monitors, [json!("bpfleet-operator")]);
    assert!(!rendered(&docs, "Service", "bpfleet-agent-metrics"));

    let err = render_err(&["--set", "serviceMonitor.enabled=true"]);
    assert!(err.contains("Set operator.metrics.expose=true and/or agent.metrics.expose=true"), "{err}");
}

#[test]
fn scrapers_in_the_network_policy_need_exposed_operator_metrics() {
    let err = render_err(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.metricsFrom[0].matchLabels.team=monitoring",
    ]);
    assert!(err.contains("Set operator.metrics.expose=true"), "{err}");
}

#[test]
fn the_health_port_is_its_own() {
    let err = render_err(&["--set", "operator.healthPort=8080"]);
    assert!(err.contains("operator.healthPort and operator.metricsPort must differ"), "{err}");
    let err = render_err(&["--set", "agent.healthPort=50051"]);
    assert!(err.contains("agent.healthPort must differ"), "{err}");
    let err = render_err(&["--set", "agent.metrics.exposed=true"]);
    assert!(err.contains("exposed"), "{err}");
}
