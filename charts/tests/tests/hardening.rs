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

/// Map volumes (csi.enabled): off by default; on, one privileged `csi` container whose only
/// Bidirectional mount is the kubelet's pods directory, bpffs and the agent's records
/// read-only, the allowed namespaces passed, and the CSIDriver for ephemeral volumes.
#[test]
fn map_volumes_are_opt_in_and_their_driver_reaches_only_what_it_needs() {
    let off = render(&[], &[]);
    let agent = named(&off, "DaemonSet", "bpfleet-agent");
    assert!(containers(agent).iter().all(|c| c["name"] != "csi"));
    assert!(of_kind(&off, "CSIDriver").is_empty());
    let on = render(&[], &["--set", "csi.enabled=true", "--set", "csi.namespaces={team-a,team-b}"]);
    let agent = named(&on, "DaemonSet", "bpfleet-agent");
    let csi = *containers(agent).iter().find(|c| c["name"] == "csi").expect("the csi container");
    assert_eq!(csi["securityContext"]["privileged"], true);
    let args: Vec<&str> = csi["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"csi") && args.contains(&"--csi-namespaces=team-a,team-b"), "{args:?}");
    let mounts = csi["volumeMounts"].as_array().unwrap();
    let bidirectional: Vec<&Value> = mounts.iter().filter(|m| m["mountPropagation"] == "Bidirectional").collect();
    assert_eq!(bidirectional.len(), 1, "{mounts:?}");
    assert_eq!(bidirectional[0]["mountPath"], "/var/lib/kubelet/pods");
    for read_only in ["bpffs", "state"] {
        let m = mounts.iter().find(|m| m["name"] == read_only).unwrap();
        assert_eq!(m["readOnly"], true, "{m}");
    }
    let driver = named(&on, "CSIDriver", "csi.bpfleet.dev");
    assert_eq!(driver["spec"]["volumeLifecycleModes"], serde_json::json!(["Ephemeral"]));
    assert_eq!(
        (driver["spec"]["attachRequired"].clone(), driver["spec"]["podInfoOnMount"].clone()),
        (Value::Bool(false), Value::Bool(true))
    );
}
