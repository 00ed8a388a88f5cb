//! What `helm install` would create, checked without a cluster: lint, render with
//! default and non-default values, and assert on the objects.

use std::path::Path;

use chart_tests::*;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn custom() -> std::path::PathBuf {
    repo().join("charts/tests/values-custom.yaml")
}

#[test]
fn lint_passes_with_default_and_custom_values() {
    let chart = chart().display().to_string();
    let offline = "tls.helm.renderOffline=true";
    let (ok, out, err) = run_helm(&["lint", "--strict", &chart, "--set", offline]);
    assert!(ok, "{out}{err}");
    let custom = custom().display().to_string();
    let (ok, out, err) = run_helm(&["lint", "--strict", &chart, "-f", &custom]);
    assert!(ok, "{out}{err}");
}

/// Without cluster access (Argo CD renders this way) `lookup` finds nothing, and helm
/// mode would make a new CA at every sync: the chart refuses and says what to use.
#[test]
fn helm_mode_tls_refuses_to_render_without_the_cluster() {
    let chart = chart().display().to_string();
    let (ok, _, err) = run_helm(&["template", "bpfleet", &chart, "-n", "bpfleet-system"]);
    assert!(!ok, "a render without cluster access must fail in helm mode");
    for want in ["new CA", "tls.mode=certManager", "tls.mode=secret", "renderOffline"] {
        assert!(err.contains(want), "the refusal must mention {want}: {err}");
    }
    // The GitOps-safe modes render without a cluster.
    let (ok, _, err) = run_helm(&[
        "template",
        "bpfleet",
        &chart,
        "--set",
        "tls.mode=certManager",
        "--set",
        "tls.certManager.issuerRef.name=ca",
    ]);
    assert!(ok, "{err}");
}

/// Each rendered document deserializes into its typed Kubernetes API object.
fn check_typed(doc: &Value) {
    let kind = doc["kind"].as_str().expect("every document has a kind");
    assert!(doc["apiVersion"].is_string(), "{kind} without apiVersion");
    assert!(doc["metadata"]["name"].is_string(), "{kind} without metadata.name");
    let v = doc.clone();
    let parsed = match kind {
        "Deployment" => serde_json::from_value::<Deployment>(v).map(|_| ()),
        "DaemonSet" => serde_json::from_value::<DaemonSet>(v).map(|_| ()),
        "Service" => serde_json::from_value::<Service>(v).map(|_| ()),
        "ServiceAccount" => serde_json::from_value::<ServiceAccount>(v).map(|_| ()),
        "Secret" => serde_json::from_value::<Secret>(v).map(|_| ()),
        "ClusterRole" => serde_json::from_value::<ClusterRole>(v).map(|_| ()),
        "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(v).map(|_| ()),
        "Role" => serde_json::from_value::<Role>(v).map(|_| ()),
        "RoleBinding" => serde_json::from_value::<RoleBinding>(v).map(|_| ()),
        "PodDisruptionBudget" => serde_json::from_value::<PodDisruptionBudget>(v).map(|_| ()),
        "Job" => serde_json::from_value::<Job>(v).map(|_| ()),
        "CustomResourceDefinition" => serde_json::from_value::<CustomResourceDefinition>(v).map(|_| ()),
        "ValidatingWebhookConfiguration" => serde_json::from_value::<ValidatingWebhookConfiguration>(v).map(|_| ()),
        "ValidatingAdmissionPolicy" => serde_json::from_value::<ValidatingAdmissionPolicy>(v).map(|_| ()),
        "ValidatingAdmissionPolicyBinding" => serde_json::from_value::<ValidatingAdmissionPolicyBinding>(v).map(|_| ()),
        "BpfAdmissionPolicy" => serde_json::from_value::<crds::BpfAdmissionPolicy>(v).map(|_| ()),
        // Third-party kinds: structure only.
        "ServiceMonitor" | "Certificate" => {
            assert!(doc["spec"].is_object(), "{kind} without spec");
            Ok(())
        }
        other => panic!("unexpected kind {other} rendered"),
    };
    parsed.unwrap_or_else(|e| panic!("{kind} {} is not a valid object: {e}", doc["metadata"]["name"]));
}

#[test]
fn every_rendered_manifest_is_a_valid_kubernetes_object() {
    for values in [vec![], vec![custom()]] {
        let refs: Vec<&Path> = values.iter().map(|p| p.as_path()).collect();
        let docs = render(&refs, &["--include-crds"]);
        assert!(docs.len() >= 14, "only {} documents", docs.len());
        docs.iter().for_each(check_typed);
    }
}

#[test]
fn the_chart_ships_exactly_the_generated_crds() {
    let docs = render(&[], &["--include-crds"]);
    let rendered: Vec<&Value> = of_kind(&docs, "CustomResourceDefinition");
    let generated = crds::crdgen::render_all().unwrap();
    assert_eq!(rendered.len(), generated.len());
    for (file, yaml) in generated {
        let on_disk = std::fs::read_to_string(chart().join("crds").join(&file)).unwrap();
        assert_eq!(on_disk, yaml, "charts/bpfleet/crds/{file} is stale: run `cargo run -p crds --bin crdgen`");
        let want: Value = serde_yaml::from_str(&yaml).unwrap();
        assert!(rendered.contains(&&want), "helm does not install {file} as generated");
    }
}

#[test]
fn operator_rbac_is_least_privilege() {
    let docs = render(&[], &[]);
    for kind in ["ClusterRole", "Role"] {
        for role in of_kind(&docs, kind) {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs"] {
                    let values = rule[field].as_array().map(|a| a.to_vec()).unwrap_or_default();
                    assert!(
                        !values.contains(&Value::from("*")),
                        "{kind} {} has a wildcard {field}",
                        role["metadata"]["name"]
                    );
                }
                assert!(rule["nonResourceURLs"].is_null());
            }
        }
    }
    let role = named(&docs, "ClusterRole", "bpfleet-operator");
    let text = role.to_string();
    for needed in ["bpfprograms/status", "bpfprograms/finalizers", "bpfnodes", "nodes", "configmaps", "events"] {
        assert!(text.contains(needed), "operator cannot reach {needed}");
    }
    // Secrets are never readable by the operator.
    assert!(!text.contains("secrets"));
    // Which namespaces opted in as bytecode sources: read only, nothing else.
    let namespaces = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"] == serde_json::json!(["namespaces"]))
        .expect("the operator reads namespace labels (bytecode sources)");
    assert_eq!(namespaces["verbs"], serde_json::json!(["get", "list", "watch"]));
    let lease = named(&docs, "Role", "bpfleet-operator-lease");
    // Rules found by resource, so a new rule does not shift what is checked.
    let rule = |resource: &str| -> &Value {
        lease["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resources"][0] == resource)
            .unwrap_or_else(|| panic!("the operator's namespaced Role has no rule for {resource}"))
    };
    rule("leases");
    // Revision history, in the release namespace only; never cluster-wide.
    rule("controllerrevisions");
    assert!(!text.contains("controllerrevisions"));
    // No Secret is readable unless named in the values (tests/trust.rs).
    assert!(!lease.to_string().contains("secrets"), "the operator reads no Secret by default");
    // Where agents run: their pods, read only, in the release namespace only.
    assert_eq!(rule("pods")["verbs"], serde_json::json!(["get", "list", "watch"]));
    assert!(!text.contains("\"pods\""), "pods are never readable cluster-wide");
}

/// `operator.bpfnodeHeartbeatSeconds` reaches the operator (0: heartbeats only with other
/// writes); a negative one is refused by the values schema.
#[test]
fn the_bpfnode_heartbeat_is_a_value() {
    let docs = render(&[], &["--set", "operator.bpfnodeHeartbeatSeconds=0"]);
    let args =
        named(&docs, "Deployment", "bpfleet-operator")["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--bpfnode-heartbeat-seconds=0"), "{args}");
    let err = render_err(&["--set", "operator.bpfnodeHeartbeatSeconds=-1"]);
    assert!(err.contains("bpfnodeHeartbeatSeconds"), "{err}");
}

#[test]
fn the_operator_is_told_where_agents_run_and_the_agent_sees_the_node_root() {
    let docs = render(&[], &[]);
    let deploy = named(&docs, "Deployment", "bpfleet-operator");
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--agent-pod-selector=app.kubernetes.io/name=bpfleet-agent,app.kubernetes.io/instance=bpfleet"),
        "{args}"
    );
    assert!(args.contains("--agent-unreachable-grace-seconds=60"), "{args}");
    assert!(args.contains("--bpfnode-heartbeat-seconds=600"), "{args}");
    let ds = named(&docs, "DaemonSet", "bpfleet-agent");
    let spec = &ds["spec"]["template"]["spec"];
    // The selector the operator uses matches the agent pods' labels.
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], "bpfleet-agent");
    assert_eq!(labels["app.kubernetes.io/instance"], "bpfleet");
    let agent = &spec["containers"][0];
    assert!(agent["args"].to_string().contains("--host-root=/host"));
    let mount = agent["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "host-root").unwrap();
    assert_eq!((mount["mountPath"].as_str(), mount["readOnly"].as_bool()), (Some("/host"), Some(true)));
    assert_eq!(mount["mountPropagation"], "HostToContainer", "the node's later mounts are seen, unmounts let go");
    let vol = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "host-root").unwrap();
    assert_eq!(vol["hostPath"]["path"], "/");
    // The host's PID namespace only when asked (uprobe.pid needs it).
    assert_eq!(spec["hostPID"], false);
    assert!(agent["args"].to_string().contains("--host-pid=false"));
    let docs = render(&[], &["--set", "agent.hostPID=true"]);
    let ds = named(&docs, "DaemonSet", "bpfleet-agent");
    assert_eq!(ds["spec"]["template"]["spec"]["hostPID"], true);
    assert!(ds["spec"]["template"]["spec"]["containers"][0]["args"].to_string().contains("--host-pid=true"));
    // No shell in the image: the init container is the agent's own subcommand.
    let init = &spec["initContainers"][0];
    assert_eq!(init["args"], serde_json::json!(["mount-bpffs", "/sys/fs/bpf"]));
    assert!(init["command"].is_null());
}

/// Issue 21: node paths limited to the allowed prefixes when set, tracefs read-only.
#[test]
fn node_paths_are_limited_to_the_allowed_prefixes_and_tracefs_is_read_only() {
    let agent_of =
        |docs: &[Value]| named(docs, "DaemonSet", "bpfleet-agent")["spec"]["template"]["spec"]["containers"][0].clone();
    let prefixes = |agent: &Value| -> Vec<String> {
        agent["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str()?.strip_prefix("--allowed-path-prefix=").map(str::to_string))
            .collect()
    };
    let agent = agent_of(&render(&[], &[]));
    assert!(prefixes(&agent).is_empty(), "no prefix by default: {}", agent["args"]);
    let tracefs = agent["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "tracefs").unwrap().clone();
    assert_eq!(tracefs["mountPath"], "/sys/kernel/tracing");
    assert_eq!(tracefs["readOnly"], true, "the agent only reads tracefs");
    let docs = render(&[], &["--set", "agent.allowedPathPrefixes={/opt/bpf,/usr/lib/x86_64-linux-gnu}"]);
    assert_eq!(prefixes(&agent_of(&docs)), ["/opt/bpf", "/usr/lib/x86_64-linux-gnu"]);
    // Privileged mode changes neither.
    let agent = agent_of(&render(&[&custom()], &["--set", "agent.allowedPathPrefixes={/opt/bpf}"]));
    assert_eq!(prefixes(&agent), ["/opt/bpf"]);
    assert!(
        agent["volumeMounts"]
            .to_string()
            .contains(r#""mountPath":"/sys/kernel/tracing","name":"tracefs","readOnly":true"#)
    );
}

#[test]
fn the_agent_has_no_rbac_and_no_token() {
    let docs = render(&[], &[]);
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        for b in of_kind(&docs, kind) {
            for s in b["subjects"].as_array().unwrap() {
                assert_ne!(s["name"], "bpfleet-agent", "{kind} {} binds the agent", b["metadata"]["name"]);
            }
        }
    }
    assert_eq!(named(&docs, "ServiceAccount", "bpfleet-agent")["automountServiceAccountToken"], false);
    let ds = named(&docs, "DaemonSet", "bpfleet-agent");
    assert_eq!(ds["spec"]["template"]["spec"]["automountServiceAccountToken"], false);
    assert_eq!(ds["spec"]["template"]["spec"]["serviceAccountName"], "bpfleet-agent");
}

#[test]
fn the_agent_mounts_bpffs_with_propagation_and_runs_everywhere() {
    let docs = render(&[], &[]);
    let ds = named(&docs, "DaemonSet", "bpfleet-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["tolerations"][0]["operator"], "Exists", "runs on tainted nodes by default");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "bpffs").unwrap();
    assert_eq!(volume["hostPath"]["path"], "/sys/fs/bpf");
    let mount = |c: &Value| -> Value {
        c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "bpffs").cloned().expect("bpffs mounted")
    };
    let init = &pod["initContainers"][0];
    assert_eq!(mount(init)["mountPropagation"], "Bidirectional");
    assert_eq!(init["securityContext"]["privileged"], true, "Bidirectional propagation needs privilege");
    let agent = &pod["containers"][0];
    assert_eq!(mount(agent)["mountPath"], "/sys/fs/bpf");
    assert_eq!(mount(agent)["mountPropagation"], "HostToContainer");
    assert_eq!(agent["securityContext"]["privileged"], false);
    let caps: Vec<&str> = agent["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(caps, ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"]);
    assert_eq!(agent["securityContext"]["capabilities"]["drop"][0], "ALL");
    let args = agent["args"].to_string();
    for flag in [
        "--tls-cert=",
        "--tls-key=",
        "--tls-client-ca=",
        "--tls-client-name=bpfleet-operator",
        "--listen=$(POD_IP):50051",
    ] {
        assert!(args.contains(flag), "agent args lack {flag}: {args}");
    }
    for m in ["tracefs", "cgroup", "state"] {
        assert!(agent["volumeMounts"].to_string().contains(m), "no {m} mount");
    }

    // Opt-in privilege moves bidirectional propagation into the agent itself.
    let docs = render(&[&custom()], &[]);
    let ds = named(&docs, "DaemonSet", "bpfleet-agent");
    let agent = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(agent["securityContext"]["privileged"], true);
    assert!(agent["volumeMounts"].to_string().contains("Bidirectional"));
    assert!(ds["spec"]["template"]["spec"]["initContainers"].is_null(), "mountBpffs: false");
    assert!(agent["args"].to_string().contains("--listen=$(POD_IP):60051"));
}

#[test]
fn every_container_has_resources_and_a_security_context() {
    for values in [vec![], vec![custom()]] {
        let refs: Vec<&Path> = values.iter().map(|p| p.as_path()).collect();
        let docs = render(&refs, &[]);
        for kind in ["Deployment", "DaemonSet", "Job"] {
            for w in of_kind(&docs, kind) {
                for c in containers(w) {
                    let name = format!("{kind}/{} container {}", w["metadata"]["name"], c["name"]);
                    assert!(c["resources"]["requests"]["memory"].is_string(), "{name}: no memory request");
                    assert!(c["resources"]["limits"]["memory"].is_string(), "{name}: no memory limit");
                    assert!(c["securityContext"].is_object(), "{name}: no securityContext");
                }
            }
        }
    }
}

#[test]
fn the_operator_is_non_root_read_only_and_probed() {
    let docs = render(&[], &[]);
    let d = named(&docs, "Deployment", "bpfleet-operator");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(
        (sc["readOnlyRootFilesystem"].clone(), sc["privileged"].clone()),
        (Value::from(true), Value::from(false))
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(named(&docs, "PodDisruptionBudget", "bpfleet-operator")["spec"]["minAvailable"], 1);
    let args = c["args"].to_string();
    assert!(args.contains("--namespace=bpfleet-system") && args.contains("--tls-ca="), "{args}");
}

#[test]
fn generated_certificates_chain_to_the_ca_and_name_each_side() {
    let docs = render(&[], &[]);
    let dir = std::env::temp_dir().join(format!("bpfleet-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let decode = |secret: &str, key: &str| -> std::path::PathBuf {
        let s: Secret = serde_json::from_value(named(&docs, "Secret", secret).clone()).unwrap();
        let bytes = s.data.unwrap().remove(key).unwrap().0;
        let path = dir.join(format!("{secret}-{key}"));
        std::fs::write(&path, bytes).unwrap();
        path
    };
    // No CA Secret: the CA's key is dropped once it has signed (tests/trust.rs).
    let ca = decode("bpfleet-agent-tls", "ca.crt");
    for (secret, name) in [("bpfleet-agent-tls", "bpfleet-agent"), ("bpfleet-operator-tls", "bpfleet-operator")] {
        let crt = decode(secret, "tls.crt");
        assert_eq!(std::fs::read(decode(secret, "ca.crt")).unwrap(), std::fs::read(&ca).unwrap());
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&crt)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{secret}: {}", String::from_utf8_lossy(&out.stderr));
        let text =
            std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&crt).output().unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains(&format!("DNS:{name}")), "{secret} lacks DNS:{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cert_manager_and_own_secrets_replace_generated_material() {
    let docs = render(&[&custom()], &[]);
    // The agent's, the operator's and the admission webhook's serving certificate.
    assert_eq!(of_kind(&docs, "Certificate").len(), 3);
    assert!(of_kind(&docs, "Secret").is_empty());
    assert_eq!(of_kind(&docs, "ServiceMonitor").len(), 2);
    let docs = render(
        &[],
        &[
            "--set",
            "tls.mode=secret",
            "--set",
            "tls.existingSecrets.agent=a",
            "--set",
            "tls.existingSecrets.operator=o",
            "--set",
            "tls.existingSecrets.webhook=w",
            "--set",
            "admission.webhook.caBundle=Q0E=",
        ],
    );
    assert!(of_kind(&docs, "Secret").is_empty());
    let ds = named(&docs, "DaemonSet", "bpfleet-agent");
    assert!(ds.to_string().contains("\"secretName\":\"a\""));
}

#[test]
fn bad_values_are_rejected_with_a_message_naming_them() {
    let chart = chart().display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "agent.port=fifty"], "/agent/port"),
        (&["--set", "operatr.replicas=2"], "operatr"),
        (&["--set", "tls.mode=plaintext"], "/tls/mode"),
        (&["--set", "agent.tcBackend=fast"], "/agent/tcBackend"),
        (&["--set", "agent.bpffsRoot=/tmp/x"], "/agent/bpffsRoot"),
        (&["--set", "agent.allowedPathPrefixes={opt/bpf}"], "/agent/allowedPathPrefixes/0"),
        (&["--set", "agent.allowedPathPrefixes={/opt/bpf,/opt/../etc}"], "/agent/allowedPathPrefixes/1"),
        (&["--set", "operator.replicas=0"], "/operator/replicas"),
        (&["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (&["--set", "tls.mode=secret"], "tls.existingSecrets.agent is required"),
        (&["--set", "tls.mode=certManager"], "tls.certManager.issuerRef.name is required"),
    ];
    for (args, names) in cases {
        let mut all = vec!["template", "x", chart.as_str(), "--set", "tls.helm.renderOffline=true"];
        all.extend_from_slice(args);
        let (ok, _, err) = run_helm(&all);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(names), "{args:?}: error does not name {names}: {err}");
    }
}

#[test]
fn uninstall_removes_programs_before_the_operator_goes() {
    let docs = render(&[], &[]);
    let job = named(&docs, "Job", "bpfleet-uninstall");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["args"][0], "uninstall");
    assert!(c["image"].as_str().unwrap().contains("bpfleet-operator"));
    // The hook's RBAC is as narrow as the rest, and binds only its own account.
    let role = named(&docs, "ClusterRole", "bpfleet-uninstall");
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "list", "delete"]));
    let docs = render(&[], &["--set", "uninstall.force=true"]);
    assert!(named(&docs, "Job", "bpfleet-uninstall")["spec"]["template"].to_string().contains("--force"));
    let docs = render(&[], &["--set", "uninstall.enabled=false"]);
    assert!(of_kind(&docs, "Job").is_empty());
}

#[test]
fn pods_are_readable_only_where_a_cluster_admin_allows_programs_inside_pods() {
    let role = |docs: &[Value], kind: &str| -> Vec<String> {
        of_kind(docs, kind)
            .into_iter()
            .filter(|r| r["metadata"]["name"] == "bpfleet-operator-pods")
            .map(|r| r["metadata"]["namespace"].as_str().unwrap_or("*").to_string())
            .collect()
    };
    let none = render(&[], &[]);
    assert!(role(&none, "Role").is_empty() && role(&none, "ClusterRole").is_empty(), "none by default");
    let some = render(&[], &["--set", "podTargets.namespaces={shop,web}"]);
    assert_eq!(role(&some, "Role"), ["shop", "web"]);
    assert_eq!(role(&some, "RoleBinding"), ["shop", "web"]);
    for r in of_kind(&some, "Role").into_iter().filter(|r| r["metadata"]["name"] == "bpfleet-operator-pods") {
        assert_eq!(
            r["rules"],
            serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
        );
    }
    let all = render(&[], &["--set", "podTargets.allNamespaces=true"]);
    assert_eq!(role(&all, "ClusterRole"), ["*"]);
    assert!(role(&all, "Role").is_empty());
}

#[test]
fn the_agent_sees_the_runtime_socket_and_pod_namespaces_only_when_programs_may_attach_in_pods() {
    let agent = |docs: &[Value]| named(docs, "DaemonSet", "bpfleet-agent").clone();
    let none = agent(&render(&[], &[]));
    assert!(!none.to_string().contains("/run/containerd"), "nothing of the runtime by default");
    let with = agent(&render(&[], &["--set", "podTargets.namespaces={shop}"]));
    let c = &with["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--cri-socket=/run/containerd/containerd.sock"), "{args:?}");
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "cri-runtime").unwrap();
    assert_eq!(mount["mountPath"], "/run/containerd");
    assert_eq!(
        (mount["readOnly"].as_bool(), mount["mountPropagation"].as_str()),
        (Some(true), Some("HostToContainer"))
    );
}
