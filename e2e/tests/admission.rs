//! Who may load what, decided by a real API server at `kubectl apply`: the chart's
//! admission objects, rendered with helm, enforce a BpfAdmissionPolicy — through the
//! ValidatingAdmissionPolicy where the server serves `admissionregistration.k8s.io/v1`
//! (Kubernetes >= 1.30), else through the operator's webhook (here a standby operator
//! process, since every replica serves it). Requesters are impersonated (`--as`,
//! `--as-group`) and have RBAC write on BpfPrograms: only the policy stands between
//! them and the fleet.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use e2e::env::{DELETE_TIMEOUT, Env};
use e2e::util::{self, wait_for};
use serde_json::{Value, json};

const VALUES: &str = r#"
tls: {mode: secret, existingSecrets: {agent: agent-tls, operator: operator-tls, webhook: webhook-tls}}
admission:
  webhook: {caBundle: placeholder}
  grants:
    - {name: cluster-admins, groups: ["system:masters"], programTypes: ["*"], sources: ["*"], allowControlPlane: true}
    - name: net-team
      groups: [e2e-net]
      programTypes: [XDP, TC]
      sources: [configMap]
      hooks: {interfaces: [eth]}
      requireNodeSelector: true
"#;

/// `kubectl` as (succeeded, what it printed or the refusal).
fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    match e2e::installed::kubectl(kubeconfig, args, stdin) {
        Ok(out) => (true, out),
        Err(e) => (false, format!("{e:#}")),
    }
}

/// The chart's admission documents for `mode`, as JSON objects.
fn render(mode: &str, namespace: &str, workdir: &Path) -> Vec<Value> {
    let values = workdir.join("admission-values.yaml");
    std::fs::write(&values, VALUES).unwrap();
    let out = Command::new(e2e::installed::helm_binary().unwrap())
        .args(["template", "e2e", "charts/bpfleet", "-n", namespace, "-f"])
        .arg(&values)
        .args(["--set", &format!("admission.mode={mode}"), "--show-only", "templates/admission.yaml"])
        .current_dir(util::repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .filter_map(|d| {
            let v: Value = serde_yaml::with::singleton_map_recursive::deserialize(d).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// Deletes what the test installed, also when it fails: a webhook left pointing at a
/// stopped operator would refuse every later BpfProgram write on this API server.
struct Installed {
    kubeconfig: PathBuf,
    objects: Vec<(String, String)>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        for (kind, name) in self.objects.iter().rev() {
            let _ = kubectl(&self.kubeconfig, &["delete", kind, name, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

fn program(name: &str, run_label: &(String, String), spec: Value) -> String {
    let doc = json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "BpfProgram",
        "metadata": {"name": name, "labels": {run_label.0.as_str(): run_label.1}},
        "spec": spec,
    });
    serde_json::to_string(&doc).unwrap()
}

fn xdp(selector: Value, source: Value, interface: &str) -> Value {
    json!({
        "nodeSelector": selector,
        "bytecode": source,
        "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": [interface]}}],
    })
}

#[test]
fn tenants_outside_their_grants_are_refused_at_kubectl_apply() {
    let Some(kubeconfig) = e2e::kubeconfig_or_skip("admission") else { return };
    let (_, resources) =
        kubectl(&kubeconfig, &["api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name"], None);
    let vap = resources.lines().any(|l| l.trim() == "validatingadmissionpolicies.admissionregistration.k8s.io");
    let (_, versions) = kubectl(&kubeconfig, &["api-versions"], None);
    let vap = vap && versions.lines().any(|l| l.trim() == "admissionregistration.k8s.io/v1");
    let mode = if vap { "policy" } else { "webhook" };
    eprintln!(
        "e2e admission: the API server {} ValidatingAdmissionPolicy: testing mode {mode}",
        if vap { "serves" } else { "lacks" }
    );

    let env = Env::start("admission", &kubeconfig);
    let run = env.run().to_owned();
    let run_label = env.cluster.run_label();
    let ns = env.cluster.namespace.clone();
    let mut installed = Installed { kubeconfig: kubeconfig.clone(), objects: Vec::new() };

    // Requesters with RBAC write on BpfPrograms, so only admission can stop them.
    let rbac = format!(
        r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{{"name":"e2e-bpf-writer-{run}"}},
"rules":[{{"apiGroups":["bpfleet.dev"],"resources":["bpfprograms"],"verbs":["*"]}}]}}"#
    );
    let binding = format!(
        r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{{"name":"e2e-bpf-writers-{run}"}},
"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"e2e-bpf-writer-{run}"}},
"subjects":[{{"kind":"User","name":"mallory","apiGroup":"rbac.authorization.k8s.io"}},{{"kind":"Group","name":"e2e-net","apiGroup":"rbac.authorization.k8s.io"}}]}}"#
    );
    for (doc, kind, name) in [
        (rbac, "clusterrole", format!("e2e-bpf-writer-{run}")),
        (binding, "clusterrolebinding", format!("e2e-bpf-writers-{run}")),
    ] {
        installed.objects.push((kind.into(), name));
        let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&doc));
        assert!(ok, "{out}");
    }

    // The webhook: a second operator process (a standby) serving it on loopback.
    let webhook_port = agent::testing::free_port();
    let _webhook_operator = (mode == "webhook").then(|| {
        let mut cfg = env.operator_config("webhook");
        cfg.extra_args = vec![
            format!("--webhook-listen=127.0.0.1:{webhook_port}"),
            format!("--webhook-tls-cert={}", env.pki.server_cert.display()),
            format!("--webhook-tls-key={}", env.pki.server_key.display()),
        ];
        e2e::operator::Operator::start_standby(cfg).unwrap_or_else(|e| panic!("{e:#}"))
    });

    // The chart's documents; the webhook's Service and Secret belong to a cluster and are
    // replaced by a URL on loopback and the test CA.
    for mut doc in render(mode, &ns, &env.workdir) {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        match kind.as_str() {
            "Secret" | "Service" | "Certificate" => continue,
            "ValidatingWebhookConfiguration" => {
                let ca = std::fs::read(&env.pki.ca_cert).unwrap();
                for hook in doc["webhooks"].as_array_mut().unwrap() {
                    hook["clientConfig"] = json!({
                        "url": format!("https://127.0.0.1:{webhook_port}/validate-bpfprogram"),
                        "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca),
                    });
                }
            }
            _ => {}
        }
        installed.objects.push((kind.to_lowercase(), name));
        let (ok, out) = kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&doc.to_string()));
        assert!(ok, "applying the chart's {kind}: {out}");
    }

    let configmap = json!({"configMap": {"name": "b", "namespace": ns, "key": "x.o"}});
    let image = json!({"image": {"url": "registry.example/xdp:1"}});
    let no_cp = json!({"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}], "matchLabels": {"pool": "edge"}});
    let as_net = ["--as=ann", "--as-group=e2e-net"];
    let name = env.name("adm");
    let attempt = |who: &[&str], spec: Value| {
        let mut args = vec!["create", "-f", "-"];
        args.extend_from_slice(who);
        kubectl(&kubeconfig, &args, Some(&program(&name, &run_label, spec)))
    };
    let refusals: [(&str, &[&str], Value, &str); 6] = [
        (
            "a stranger",
            &["--as=mallory"],
            xdp(no_cp.clone(), configmap.clone(), "eth0"),
            "mallory is named by no grant of BpfAdmissionPolicy default",
        ),
        (
            "an image source",
            &as_net,
            xdp(no_cp.clone(), image.clone(), "eth0"),
            "bytecode source image is not allowed for ann (grants: net-team; sources)",
        ),
        (
            "every node",
            &as_net,
            xdp(json!({}), configmap.clone(), "eth0"),
            "nodeSelector is empty, which selects every node",
        ),
        (
            "control-plane nodes",
            &as_net,
            xdp(json!({"matchLabels": {"pool": "edge"}}), configmap.clone(), "eth0"),
            "nodeSelector must exclude control-plane nodes",
        ),
        (
            "an interface outside eth*",
            &as_net,
            xdp(no_cp.clone(), configmap.clone(), "lo"),
            "program count_packets attaches to a hook outside the prefixes",
        ),
        (
            "a tracepoint",
            &as_net,
            json!({"nodeSelector": no_cp, "bytecode": configmap, "programs": [{"name": "count_openat", "type": "Tracepoint", "tracepoint": {"names": ["syscalls/sys_enter_openat"]}}]}),
            "program count_openat has type Tracepoint, which no grant of ann allows",
        ),
    ];
    for (what, who, spec, want) in refusals {
        // Admission objects take a moment to reach the API server's admission chain.
        wait_for(Duration::from_secs(30), format!("{what} refused with {want:?}"), || {
            let (ok, out) = attempt(who, spec.clone());
            if ok {
                let _ = kubectl(&kubeconfig, &["delete", "bpfprogram", &name, "--wait=false"], None);
                return Err(format!("admitted: {out}"));
            }
            if out.contains(want) { Ok(()) } else { Err(out) }
        });
        assert!(env.cluster.program(&name).unwrap().is_none(), "{what}: a refused program exists");
        eprintln!("e2e admission: {what}: refused");
    }

    // Inside the grant: created; the operator's finalizer write (a metadata-only update)
    // passes; a spec change out of the grant is refused; deletion completes.
    let (ok, out) = attempt(&as_net, xdp(no_cp.clone(), configmap.clone(), "eth0"));
    assert!(ok, "a program inside the grant was refused: {out}");
    wait_for(Duration::from_secs(30), "the operator's finalizer on the admitted program", || {
        let p = env.cluster.program(&name).map_err(|e| e.to_string())?.ok_or("gone")?;
        if p.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty()) {
            Ok(())
        } else {
            Err("no finalizer".to_owned())
        }
    });
    let patch = r#"{"spec":{"programs":[{"name":"count_packets","type":"XDP","xdp":{"interfaces":["lo"]}}]}}"#;
    let (ok, out) = kubectl(
        &kubeconfig,
        &["patch", "bpfprogram", &name, "--type=merge", "-p", patch, "--as=ann", "--as-group=e2e-net"],
        None,
    );
    assert!(!ok && out.contains("attaches to a hook outside"), "a spec change outside the grant: {out}");
    let (ok, out) =
        kubectl(&kubeconfig, &["delete", "bpfprogram", &name, "--as=ann", "--as-group=e2e-net", "--wait=false"], None);
    assert!(ok, "{out}");
    env.wait_program_gone(&name);

    // Without the policy object nobody may write, cluster admins included.
    let (ok, out) = kubectl(&kubeconfig, &["delete", "bpfadmissionpolicy", "default"], None);
    assert!(ok, "{out}");
    wait_for(DELETE_TIMEOUT, "an admin's write refused without a policy", || {
        let (ok, out) = attempt(&[], xdp(no_cp.clone(), configmap.clone(), "eth0"));
        if ok {
            let _ = kubectl(&kubeconfig, &["delete", "bpfprogram", &name, "--wait=false"], None);
            return Err(format!("admitted: {out}"));
        }
        Ok(out)
    });
    eprintln!("e2e admission: mode {mode}: 6 refusals, 1 admission, a refused spec change, no policy = no writes");
}
