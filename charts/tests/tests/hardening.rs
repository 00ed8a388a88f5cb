//! Chart values of issue 21 (points 5 and 7): registry address ranges, metrics
//! listeners, hostPID, the NetworkPolicy.

use chart_tests::*;
use serde_json::Value;

fn operator_args(docs: &[Value]) -> Vec<String> {
    let d = named(docs, "Deployment", "bpfleet-operator");
    containers(d).iter().find(|c| c["name"] == "operator").expect("operator container")["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn private_ranges_for_registries_are_opt_in() {
    let args = operator_args(&render(&[], &[]));
    assert!(!args.iter().any(|a| a.starts_with("--registry-allow-private-ranges")), "{args:?}");
    assert!(args.contains(&"--image-deadline-seconds=120".to_string()), "{args:?}");
    let args = operator_args(&render(&[], &["--set", "operator.images.allowPrivateRanges={10.20.0.0/16,fd00::/8}"]));
    assert!(args.contains(&"--registry-allow-private-ranges=10.20.0.0/16,fd00::/8".to_string()), "{args:?}");
    let chart = chart().display().to_string();
    let (ok, _, err) = run_helm(&[
        "template",
        "x",
        &chart,
        "--set",
        "tls.helm.renderOffline=true",
        "--set",
        "operator.images.allowPrivateRanges={not a range}",
    ]);
    assert!(!ok && err.contains("allowPrivateRanges"), "{err}");
}
