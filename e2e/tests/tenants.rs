//! A tenant's BpfNamespacedProgram against a real API server: the operator runs it as a
//! cluster-scoped mirror BpfProgram it writes and labels, reading bytecode from a
//! ConfigMap of the tenant's own namespace (which is not opted in as a bytecode source),
//! and shows the mirror's status as the tenant's; a BpfProgram that only claims to be a
//! mirror reads nothing there; a spec outside the kind's rules, or a mirror name already
//! taken, is reported and changes nothing; deleting it takes the mirror with it. Without
//! KUBECONFIG it prints one SKIP line.

use std::path::Path;
use std::time::Duration;

use e2e::env::Env;
use e2e::util::{self, wait_for};
use serde_json::{Value, json};

const TEST: &str = "a_namespaced_program_runs_through_its_mirror_and_goes_with_it";

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    e2e::installed::kubectl(kubeconfig, args, stdin)
}

fn get(kubeconfig: &Path, args: &[&str]) -> Option<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend(["-o", "json"]);
    kubectl(kubeconfig, &a, None).ok().and_then(|s| serde_json::from_str(&s).ok())
}

fn condition(obj: &Value, type_: &str) -> (String, String) {
    let c = obj["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == type_);
    c.map(|c| (c["status"].as_str().unwrap_or("").into(), c["reason"].as_str().unwrap_or("").into()))
        .unwrap_or_default()
}

/// Removes the tenant's namespace and anything left of the scenario.
struct Cleanup<'a>(&'a Path, Vec<(String, String)>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for (kind, name) in &self.1 {
            let _ = kubectl(self.0, &["delete", kind, name, "--ignore-not-found", "--wait=false"], None);
        }
    }
}

#[test]
fn a_namespaced_program_runs_through_its_mirror_and_goes_with_it() {
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let env = Env::start(TEST, &kubeconfig);
    let k = kubeconfig.as_path();
    let ns = env.name("tenant");
    let _cleanup = Cleanup(k, vec![("namespace".into(), ns.clone())]);
    kubectl(k, &["create", "namespace", &ns], None).unwrap();
    let object = util::repo_root().join("examples/bpf/build/xdp_pod_counter.o");
    kubectl(k, &["-n", &ns, "create", "configmap", "own", &format!("--from-file={}", object.display())], None).unwrap();

    let tenant = |name: &str, pods_namespace: &str| {
        json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNamespacedProgram",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "bytecode": {"configMap": {"name": "own", "namespace": ns, "key": "xdp_pod_counter.o"}},
                "programs": [{"name": "count_by_pod", "type": "XDP",
                              "xdp": {"pods": {"namespace": pods_namespace, "selector": {"matchLabels": {"app": "web"}}}}}]
            }
        })
        .to_string()
    };
    kubectl(k, &["apply", "-f", "-"], Some(&tenant("web", &ns))).unwrap();

    // The mirror: named after it, labelled with its namespace and uid, its spec the tenant's.
    let mirror = format!("{ns}.web");
    let uid = get(k, &["-n", &ns, "bpfnamespacedprogram", "web"]).unwrap()["metadata"]["uid"].clone();
    wait_for(Duration::from_secs(30), "the mirror BpfProgram", || {
        let m = get(k, &["bpfprogram", &mirror]).ok_or("absent")?;
        (m["metadata"]["labels"]["bpfleet.dev/tenant-uid"] == uid
            && m["metadata"]["labels"]["bpfleet.dev/tenant-namespace"] == ns.as_str())
        .then_some(())
        .ok_or(format!("labels {}", m["metadata"]["labels"]))
    });
    // Its bytecode read from the tenant's own namespace (not opted in): Ready, and the
    // tenant's status is the mirror's, in the tenant's generation.
    wait_for(Duration::from_secs(60), "the tenant's status is its mirror's, current", || {
        let t = get(k, &["-n", &ns, "bpfnamespacedprogram", "web"]).ok_or("absent")?;
        let m = get(k, &["bpfprogram", &mirror]).ok_or("no mirror")?;
        let current = t["status"]["observedGeneration"] == t["metadata"]["generation"];
        let same =
            condition(&t, "Ready") == condition(&m, "Ready") && t["status"]["revision"] == m["status"]["revision"];
        (current && same && condition(&m, "Ready").0 == "True" && t["status"]["revision"].is_string())
            .then_some(())
            .ok_or(format!("tenant {} / mirror {}", t["status"], m["status"]))
    });
    let revision = get(k, &["bpfprogram", &mirror]).unwrap()["status"]["revision"].clone();
    // Settled: the mirror is not written again and again.
    let generation = get(k, &["bpfprogram", &mirror]).unwrap()["metadata"]["generation"].clone();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        get(k, &["bpfprogram", &mirror]).unwrap()["metadata"]["generation"],
        generation,
        "the mirror keeps being rewritten"
    );
    // Someone edits the mirror (to read another key of the tenant's namespace): put back.
    let edit =
        json!({"spec": {"bytecode": {"configMap": {"name": "own", "namespace": ns, "key": "other.o"}}}}).to_string();
    kubectl(k, &["patch", "bpfprogram", &mirror, "--type=merge", "-p", &edit], None).unwrap();
    wait_for(Duration::from_secs(30), "the edited mirror put back", || {
        let m = get(k, &["bpfprogram", &mirror]).ok_or("absent")?;
        let key = m["spec"]["bytecode"]["configMap"]["key"].clone();
        (key == "xdp_pod_counter.o").then_some(()).ok_or(format!("key {key}"))
    });

    // A BpfProgram that only says it is that tenant's mirror reads nothing of its namespace.
    let forged = env.name("forged");
    let forged_doc = json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
        "metadata": {"name": forged, "labels": {"bpfleet.dev/tenant-namespace": ns, "bpfleet.dev/tenant-uid": uid, env_label(&env).0: env_label(&env).1},
                     "annotations": {"bpfleet.dev/tenant": format!("{ns}/web")}},
        "spec": {"nodeSelector": {}, "bytecode": {"configMap": {"name": "own", "namespace": ns, "key": "xdp_pod_counter.o"}},
                 "programs": [{"name": "count_by_pod", "type": "XDP", "xdp": {"pods": {"namespace": ns}}}]}
    });
    kubectl(k, &["apply", "-f", "-"], Some(&forged_doc.to_string())).unwrap();
    wait_for(Duration::from_secs(30), "the forged mirror refused its bytecode", || {
        let p = get(k, &["bpfprogram", &forged]).ok_or("absent")?;
        (condition(&p, "Ready") == ("False".into(), "BytecodeSourceNotAllowed".into()))
            .then_some(())
            .ok_or(format!("{}", p["status"]))
    });
    kubectl(k, &["delete", "bpfprogram", &forged, "--wait=true", "--timeout=60s"], None).unwrap();

    // Outside the kind's rules (another namespace's pods): reported, the mirror unchanged.
    kubectl(k, &["apply", "-f", "-"], Some(&tenant("web", "kube-system"))).unwrap();
    wait_for(Duration::from_secs(30), "the tenant refused as InvalidSpec", || {
        let t = get(k, &["-n", &ns, "bpfnamespacedprogram", "web"]).ok_or("absent")?;
        let msg = t["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["message"].clone());
        (condition(&t, "Ready") == ("False".into(), "InvalidSpec".into())
            && condition(&t, "Stalled").0 == "True"
            && msg
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|m| m.contains("xdp.pods.namespace is \"kube-system\"")))
        .then_some(())
        .ok_or(format!("{}", t["status"]))
    });
    let m = get(k, &["bpfprogram", &mirror]).unwrap();
    assert_eq!(m["spec"]["programs"][0]["xdp"]["pods"]["namespace"], ns.as_str(), "the mirror kept the last good spec");
    assert_eq!(m["status"]["revision"], revision);

    // A mirror name already taken by someone else's BpfProgram: never taken over.
    let taken = format!("{ns}.taken");
    let theirs = json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
        "metadata": {"name": taken, "labels": {env_label(&env).0: env_label(&env).1}},
        "spec": {"nodeSelector": {"matchLabels": {"nothing": "here"}}, "bytecode": {"inline": "AA=="},
                 "programs": [{"name": "p", "type": "Tracepoint", "tracepoint": {"names": ["syscalls/sys_enter_openat"]}}]}
    });
    kubectl(k, &["apply", "-f", "-"], Some(&theirs.to_string())).unwrap();
    kubectl(k, &["apply", "-f", "-"], Some(&tenant("taken", &ns))).unwrap();
    wait_for(Duration::from_secs(30), "MirrorNameTaken", || {
        let t = get(k, &["-n", &ns, "bpfnamespacedprogram", "taken"]).ok_or("absent")?;
        (condition(&t, "Ready") == ("False".into(), "MirrorNameTaken".into()))
            .then_some(())
            .ok_or(format!("{}", t["status"]))
    });
    let still = get(k, &["bpfprogram", &taken]).unwrap();
    assert!(
        still["metadata"]["labels"].get("bpfleet.dev/tenant-uid").is_none(),
        "someone else's BpfProgram was taken over"
    );
    assert_eq!(still["spec"]["programs"][0]["type"], "Tracepoint");
    kubectl(k, &["-n", &ns, "delete", "bpfnamespacedprogram", "taken", "--wait=true", "--timeout=60s"], None).unwrap();
    assert!(get(k, &["bpfprogram", &taken]).is_some(), "deleting the tenant removed someone else's BpfProgram");
    kubectl(k, &["delete", "bpfprogram", &taken, "--wait=true", "--timeout=60s"], None).unwrap();

    // Deleted: the mirror goes first, then the tenant's program.
    kubectl(k, &["-n", &ns, "delete", "bpfnamespacedprogram", "web", "--wait=true", "--timeout=60s"], None).unwrap();
    assert!(get(k, &["bpfprogram", &mirror]).is_none(), "the mirror outlived its program");
    eprintln!(
        "{TEST}: mirror run, status copied, forged mirror refused, bad spec and taken name reported, deletion clean"
    );
}

/// The run's label, which the scenario's cleanup follows.
fn env_label(env: &Env) -> (String, String) {
    (e2e::cluster::RUN_LABEL.to_string(), env.run().to_string())
}
