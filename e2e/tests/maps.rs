//! Maps for people, end to end: a real API server, the operator, a process-mode node and
//! the real `kubectl bpfleet` binary. `maps` goes the way it goes in a cluster: a token
//! minted by the API server for the map-reader service account, the API server's service
//! proxy to the operator's map endpoint (a Service whose Endpoints name an address on a
//! veth of this machine), the agent's ReadMaps. What it prints is checked
//! against `bpftool map dump` of the same pins (bpftool formats with the same BTF).
//!
//! Run: see scenarios.rs. Without KUBECONFIG each scenario prints one SKIP line.

use std::path::Path;
use std::process::Command;

use e2e::env::{Env, map_pin};
use e2e::util::{binaries, sh};
use serde_json::Value;

/// The operator's map endpoint listens here: an address of this machine the API server
/// can be sent to (Endpoints refuse loopback).
const MAPS_IP: &str = "10.254.254.1";
const MAPS_LINK: &str = "bpfleet-maps";
const OBJECT: &str = "xdp_flows.o";

/// A veth pair of the root namespace, one end carrying [`MAPS_IP`] (this kernel has no
/// dummy interfaces), removed when dropped.
struct MapsAddress;

impl MapsAddress {
    fn add() -> Self {
        sh(&format!(
            "ip link del {MAPS_LINK} 2>/dev/null; ip link add {MAPS_LINK} type veth peer name {MAPS_LINK}p && \
             ip addr add {MAPS_IP}/32 dev {MAPS_LINK} && ip link set {MAPS_LINK} up && ip link set {MAPS_LINK}p up"
        ))
        .unwrap_or_else(|e| panic!("{e:#}"));
        MapsAddress
    }
}

impl Drop for MapsAddress {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {MAPS_LINK} 2>/dev/null"));
    }
}

/// Cluster-scoped RBAC of this run, deleted when dropped.
struct Rbac {
    run: String,
}

impl Drop for Rbac {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "kubectl delete clusterrole,clusterrolebinding -l e2e.bpfleet.dev/maps-run={} --ignore-not-found >/dev/null",
            self.run
        ));
    }
}

/// The Service and Endpoints of the map endpoint, the reader account with its right, and
/// an account without it.
fn install_reader(namespace: &str, run: &str, port: u16) -> Rbac {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: bpfleet-operator-maps, namespace: {namespace}}}
spec: {{ports: [{{name: maps, port: 8443, targetPort: {port}}}]}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: default, namespace: {namespace}}}
---
# The API server proxies only to pod addresses: a pod object (never run) whose status
# carries the operator's address stands in for the operator's pod.
apiVersion: v1
kind: Pod
metadata: {{name: operator-standin, namespace: {namespace}}}
spec: {{nodeName: no-such-node, automountServiceAccountToken: false, containers: [{{name: c, image: none}}]}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: bpfleet-map-reader, namespace: {namespace}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: stranger, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: e2e-{run}-map-reader, labels: {{e2e.bpfleet.dev/maps-run: "{run}"}}}}
rules: [{{apiGroups: [bpfleet.dev], resources: [bpfprograms/maps], verbs: [get]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: e2e-{run}-map-reader, labels: {{e2e.bpfleet.dev/maps-run: "{run}"}}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-{run}-map-reader}}
subjects: [{{kind: ServiceAccount, name: bpfleet-map-reader, namespace: {namespace}}}]
"#
    );
    let file = std::env::temp_dir().join(format!("bpfleet-e2e-maps-{run}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    sh(&format!("kubectl apply -f {} >/dev/null", file.display())).unwrap_or_else(|e| panic!("{e:#}"));
    let status = format!(r#"{{"status":{{"podIP":"{MAPS_IP}","podIPs":[{{"ip":"{MAPS_IP}"}}]}}}}"#);
    sh(&format!(
        "kubectl patch pod operator-standin -n {namespace} --subresource=status --type=merge -p '{status}' >/dev/null"
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let endpoints = format!(
        r#"
apiVersion: v1
kind: Endpoints
metadata: {{name: bpfleet-operator-maps, namespace: {namespace}}}
subsets:
  - addresses: [{{ip: {MAPS_IP}, targetRef: {{kind: Pod, name: operator-standin, namespace: {namespace}}}}}]
    ports: [{{name: maps, port: {port}}}]
"#
    );
    std::fs::write(&file, endpoints).unwrap();
    sh(&format!("kubectl apply -f {} >/dev/null", file.display())).unwrap_or_else(|e| panic!("{e:#}"));
    Rbac { run: run.to_string() }
}

/// One node running `xdp_flows` (with `metrics` as its spec.metrics), reachable through
/// the API server's service proxy as in a cluster.
struct MapsRun {
    env: Env,
    ns: String,
    node: usize,
    name: String,
    entry: crds::NodeProgramStatus,
    port: u16,
    _address: MapsAddress,
    _rbac: Rbac,
}

impl MapsRun {
    fn start(test: &str, kubeconfig: &Path, metrics: Option<Value>) -> MapsRun {
        let address = MapsAddress::add();
        let port = agent::testing::free_port();
        let mut env = Env::start_with(test, kubeconfig, |_| vec!["--maps-listen".into(), format!("{MAPS_IP}:{port}")]);
        let ns = env.cluster.namespace.clone();
        let rbac = install_reader(&ns, &env.cluster.run.clone(), port);
        let node = env.add_node(&[("e2e.bpfleet.dev/role", "flows")]);
        let cm = env.bytecode_configmap("flows", &[OBJECT]);
        let selector = env.selector(&[("e2e.bpfleet.dev/role", "flows")]);
        let mut spec = env.xdp_spec(selector, env.configmap_bytecode(&cm, OBJECT), "count_flows", &["eth0"]);
        if let Some(m) = metrics {
            spec["metrics"] = m;
        }
        let name = env.create_program("flows", spec);
        env.wait_ready(&name, 1);
        let uid = env.uid(&name);
        let revision = env.program(&name).status.unwrap().rollout.unwrap().update_revision.unwrap();
        let entry = env.wait_node_runs(node, &uid, &revision);
        eprintln!("{test}: Ready, and its BpfNode reports it");
        MapsRun { env, ns, node, name, entry, port, _address: address, _rbac: rbac }
    }
}

/// `kubectl bpfleet maps ARGS…` as (exit success, stdout, stderr).
fn plugin(namespace: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(&binaries().plugin)
        .arg("maps")
        .args(args)
        .args(["--namespace", namespace])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binaries().plugin.display()));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// bpftool's BTF-formatted dump of the map at `pin`: (key, value) pairs, per-CPU values
/// as a list.
fn bpftool_formatted(pin: &Path) -> Vec<(Value, Value)> {
    let out = sh(&format!("bpftool -j map dump pinned {}", pin.display())).unwrap_or_else(|e| panic!("{e:#}"));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = &e["formatted"];
            let value = match f.get("values") {
                Some(per_cpu) => Value::Array(per_cpu.as_array().unwrap().iter().map(|c| c["value"].clone()).collect()),
                None => f["value"].clone(),
            };
            (f["key"].clone(), value)
        })
        .collect()
}

/// The plugin's entries of one map: (key, value or per-CPU values).
fn printed(answer: &Value, map: &str) -> Vec<(Value, Value)> {
    let m = answer[0]["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == map)
        .unwrap_or_else(|| panic!("no {map} in {answer}"));
    m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["key"].clone(), e.get("value").cloned().unwrap_or_else(|| e["values"].clone())))
        .collect()
}

fn sorted(mut v: Vec<(Value, Value)>) -> Vec<(Value, Value)> {
    v.sort_by_key(|(k, _)| k.to_string());
    v
}

/// Every number of `earlier` is at most its counterpart in `later` (same shape).
fn not_above(earlier: &Value, later: &Value) -> bool {
    match (earlier, later) {
        (Value::Number(a), Value::Number(b)) => a.as_u64() <= b.as_u64(),
        (Value::Object(a), Value::Object(b)) => a.iter().all(|(k, v)| b.get(k).is_some_and(|w| not_above(v, w))),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(v, w)| not_above(v, w)),
        (a, b) => a == b,
    }
}

/// The plugin's entries against bpftool's, read after it: the same keys, decoded alike,
/// and values that only grew since (the operator's own gRPC traffic to the agent crosses
/// the interface the program counts); entries of `quiet` keys, which nothing sent to
/// since, exactly equal.
fn same_as_kernel(
    name: &str,
    printed: Vec<(Value, Value)>,
    kernel: Vec<(Value, Value)>,
    quiet: impl Fn(&Value) -> bool,
) {
    let (printed, kernel) = (sorted(printed), sorted(kernel));
    let keys = |v: &[(Value, Value)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&printed), keys(&kernel), "{name}: the keys bpftool decodes");
    for ((key, ours), (_, theirs)) in printed.iter().zip(&kernel) {
        if quiet(key) {
            assert_eq!(ours, theirs, "{name}[{key}]");
        } else {
            assert!(not_above(ours, theirs), "{name}[{key}]: printed {ours}, bpftool later {theirs}");
        }
    }
}

/// `kubectl bpfleet maps` prints a struct-keyed hash map and a per-CPU array keyed by an
/// enum as bpftool formats them from the kernel (fields and enumerators by name, values per
/// CPU or summed); the packets counted are the pings sent. Every refusal says what to fix:
/// an account without `get bpfprograms/maps`, a token for another audience, a node that
/// does not run the program, a map the program does not have.
#[test]
fn kubectl_bpfleet_maps_prints_what_bpftool_reads_and_refuses_with_reasons() {
    const TEST: &str = "kubectl_bpfleet_maps_prints_what_bpftool_reads_and_refuses_with_reasons";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let MapsRun { env, ns, node, name, entry, port, _address, _rbac } = MapsRun::start(TEST, &kubeconfig, None);
    env.node(node).ping(25);
    let reader = format!("{ns}/bpfleet-map-reader");

    // JSON, per CPU: the same entries bpftool formats from the kernel.
    let (ok, out, err) = plugin(&ns, &[&name, "--service-account", &reader, "-o", "json"]);
    assert!(ok, "{err}\n{out}");
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    assert_eq!(answer[0]["node"], env.node(node).name.as_str(), "{answer}");
    let flows = printed(&answer, "flows");
    same_as_kernel("flows", flows.clone(), bpftool_formatted(&map_pin(&entry, "flows")), |k| k["proto"] == 1);
    let icmp = flows.iter().find(|(k, _)| k["proto"] == 1).unwrap_or_else(|| panic!("no ICMP flow: {flows:?}"));
    assert_eq!(
        icmp.0["daddr"],
        u32::from_ne_bytes(env.node(node).ip.octets()),
        "the destination is the node: {icmp:?}"
    );
    assert!(icmp.1["packets"].as_u64().unwrap() >= 25, "25 pings counted: {icmp:?}");
    let by_kind = printed(&answer, "by_kind");
    let kernel_by_kind = bpftool_formatted(&map_pin(&entry, "by_kind"));
    same_as_kernel("by_kind", by_kind.clone(), kernel_by_kind, |k| k == "KIND_ICMP");
    let kinds: Vec<&Value> = by_kind.iter().map(|(k, _)| k).collect();
    assert!(kinds.iter().any(|k| *k == "KIND_ICMP"), "enum keys by name: {kinds:?}");

    // Summed: one value per key, the sum over CPUs.
    let (ok, out, err) = plugin(&ns, &[&name, "by_kind", "--sum", "--service-account", &reader, "-o", "json"]);
    assert!(ok, "{err}");
    let summed: Value = serde_json::from_str(&out).unwrap();
    let icmp_sum = printed(&summed, "by_kind").into_iter().find(|(k, _)| k == "KIND_ICMP").unwrap().1;
    let per_cpu = by_kind.iter().find(|(k, _)| k == "KIND_ICMP").unwrap().1.as_array().unwrap().clone();
    let total: u64 = per_cpu.iter().map(|v| v["packets"].as_u64().unwrap()).sum();
    assert!(icmp_sum["packets"].as_u64().unwrap() >= total && total >= 25, "{icmp_sum} vs {per_cpu:?}");
    assert_eq!(summed[0]["maps"].as_array().unwrap().len(), 1, "one map asked, one map read");

    // The table names types and fields.
    let (ok, table, err) = plugin(&ns, &[&name, "--service-account", &reader]);
    assert!(ok, "{err}");
    eprintln!("{TEST}: the table:\n{table}");
    assert!(table.contains("MAP flows (Hash, key struct flow_key, value struct flow_stats"), "{table}");
    assert!(table.contains("KIND_ICMP") && table.contains("\"packets\":"), "{table}");

    // Refusals.
    let (ok, _, err) = plugin(&ns, &[&name, "--service-account", &format!("{ns}/stranger")]);
    assert!(!ok);
    assert!(
        err.contains(&format!("may not read the maps of BpfProgram {name}: grant it get on bpfprograms/maps")),
        "{err}"
    );
    let (ok, _, err) = plugin(&ns, &[&name, "--node", "elsewhere", "--service-account", &reader]);
    assert!(!ok);
    assert!(err.contains(&format!("does not run on node elsewhere (it runs on: {})", env.node(node).name)), "{err}");
    let (ok, out, err) = plugin(&ns, &[&name, "nope", "--service-account", &reader, "-o", "json"]);
    assert!(!ok && err.contains("1 of 1 nodes could not be read"), "{err}");
    assert!(out.contains(r#"has no map \"nope\" (its maps: "#) && out.contains("flows"), "{out}");
    // A token for the API server's own audience is not one for map reads.
    let token = sh(&format!("kubectl create token bpfleet-map-reader -n {ns}")).unwrap_or_else(|e| panic!("{e:#}"));
    let refused = sh(&format!(
        "curl -sk -w ' %{{http_code}}' -H 'x-bpfleet-token: {}' 'https://{MAPS_IP}:{port}/v1/maps?program={name}'",
        token.trim()
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(refused.ends_with(" 401") && refused.contains("not accepted for audience bpfleet.dev/maps"), "{refused}");
}

/// `query` percent-encoded for a URL's query string.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The value of an instant query's one result, from Prometheus's HTTP API.
fn prometheus_value(prometheus: &e2e::prometheus::Prometheus, query: &str) -> Result<f64, String> {
    let addr = prometheus.url().trim_start_matches("http://").parse().unwrap();
    let body =
        e2e::util::http_get(addr, &format!("/api/v1/query?query={}", encode(query))).map_err(|e| format!("{e:#}"))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
    let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
    match results.as_slice() {
        [one] => one["value"][1].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| body.clone()),
        _ => Err(format!("{} results: {body}", results.len())),
    }
}

/// `spec.metrics` reach a real Prometheus (Debian's) scraping the agent: the pings sent
/// through the node's veth are the counter the spec names, labelled by the flow's key
/// fields, equal to what bpftool reads of the map; the per-CPU kinds are summed and
/// labelled by enumerator name.
#[test]
fn spec_metrics_reach_a_real_prometheus_labelled_by_key_fields() {
    const TEST: &str = "spec_metrics_reach_a_real_prometheus_labelled_by_key_fields";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    if !e2e::prometheus::Prometheus::installed() {
        eprintln!("SKIP e2e {TEST}: prometheus is not installed (apt-get install prometheus)");
        return;
    }
    let mut env = Env::start(TEST, &kubeconfig);
    let node = env.add_node(&[("e2e.bpfleet.dev/role", "metrics")]);
    let cm = env.bytecode_configmap("flows", &[OBJECT]);
    let mut spec = env.xdp_spec(
        env.selector(&[("e2e.bpfleet.dev/role", "metrics")]),
        env.configmap_bytecode(&cm, OBJECT),
        "count_flows",
        &["eth0"],
    );
    spec["metrics"] = serde_json::json!([
        {"name": "xdp_flow_packets_total", "help": "Packets per IPv4 flow.", "type": "Counter", "map": "flows",
         "labels": [{"name": "proto", "field": "proto"}, {"name": "src", "field": "saddr"}, {"name": "dst", "field": "daddr"}],
         "value": "packets"},
        {"name": "xdp_kind_bytes", "help": "Bytes per kind of traffic.", "type": "Gauge", "map": "by_kind",
         "labels": [{"name": "kind"}], "value": "bytes"},
    ]);
    let name = env.create_program("exported", spec);
    env.wait_ready(&name, 1);
    let uid = env.uid(&name);
    let revision = env.program(&name).status.unwrap().rollout.unwrap().update_revision.unwrap();
    let entry = env.wait_node_runs(node, &uid, &revision);
    env.node(node).ping(30);
    let prometheus = e2e::prometheus::Prometheus::start_on(
        &env.workdir,
        &[env.node(node).metrics_addr()],
        agent::testing::free_port(),
    );
    let dst = u32::from_ne_bytes(env.node(node).ip.octets());
    let query = format!("xdp_flow_packets_total{{program=\"{name}\",proto=\"1\",dst=\"{dst}\"}}");
    let kernel = bpftool_formatted(&map_pin(&entry, "flows"))
        .into_iter()
        .find(|(k, _)| k["proto"] == 1)
        .map(|(_, v)| v["packets"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no ICMP flow in the kernel's map"));
    assert!(kernel >= 30, "bpftool counts {kernel} ICMP packets");
    let seen = e2e::util::wait_for(std::time::Duration::from_secs(30), "Prometheus has the ICMP flow", || {
        prometheus_value(&prometheus, &query)
            .and_then(|v| if v as u64 == kernel { Ok(v) } else { Err(format!("{v} != {kernel}")) })
    });
    eprintln!("{TEST}: {query} = {seen} (bpftool: {kernel})");
    let bytes = e2e::util::wait_for(std::time::Duration::from_secs(30), "Prometheus has the ICMP bytes", || {
        prometheus_value(&prometheus, &format!("xdp_kind_bytes{{program=\"{name}\",kind=\"KIND_ICMP\"}}"))
    });
    assert!(bytes >= 30.0 * 98.0, "30 pings of 98 bytes: {bytes}");
    let limited = env.wait_node_runs(node, &uid, &revision).metrics_limited;
    assert!(limited.is_empty(), "{limited:?}");
}

/// `spec.maps[].from` through the operator: the reader's node runs the writer's kernel map
/// (bpftool: the writer's map id among the reader program's maps); deleting the writer
/// waits while the reader uses its maps, with `MapsInUse` naming it, and the writer's
/// programs keep running; once the reader is deleted, the writer goes.
#[test]
fn an_owner_whose_maps_are_used_is_deleted_only_after_its_users() {
    const TEST: &str = "an_owner_whose_maps_are_used_is_deleted_only_after_its_users";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let mut env = Env::start(TEST, &kubeconfig);
    let node = env.add_node(&[("e2e.bpfleet.dev/role", "share")]);
    let cm = env.bytecode_configmap("share", &["share_writer.o", "share_reader.o"]);
    let selector = env.selector(&[("e2e.bpfleet.dev/role", "share")]);
    let tracepoint = |object: &str, function: &str| {
        env.tracepoint_spec(
            selector.clone(),
            env.configmap_bytecode(&cm, object),
            function,
            "syscalls/sys_enter_getppid",
        )
    };
    let writer = env.create_program("writer", tracepoint("share_writer.o", "write_shared"));
    env.wait_ready(&writer, 1);
    let mut reader_spec = tracepoint("share_reader.o", "read_shared");
    reader_spec["maps"] = serde_json::json!([{"name": "shared", "from": {"program": writer, "map": "shared"}}]);
    let reader = env.create_program("reader", reader_spec);
    env.wait_ready(&reader, 1);
    let revision_of = |name: &str| env.program(name).status.unwrap().rollout.unwrap().update_revision.unwrap();
    let w = env.wait_node_runs(node, &env.uid(&writer), &revision_of(&writer));
    let r = env.wait_node_runs(node, &env.uid(&reader), &revision_of(&reader));
    let pin = map_pin(&w, "shared");
    assert_eq!(map_pin(&r, "shared"), pin, "the reader's node entry names the writer's pin");
    let shown: Value =
        serde_json::from_str(&sh(&format!("bpftool -j map show pinned {}", pin.display())).unwrap()).unwrap();
    let map_id = shown["id"].as_u64().unwrap();
    let prog: Value =
        serde_json::from_str(&sh(&format!("bpftool -j prog show id {}", r.attached[0].program_id)).unwrap()).unwrap();
    assert!(prog["map_ids"].as_array().unwrap().iter().any(|m| m.as_u64() == Some(map_id)), "{prog}");

    // The writer's deletion waits for the reader, saying so.
    sh(&format!("kubectl delete bpfprogram {writer} --wait=false")).unwrap();
    let held = e2e::util::wait_for(std::time::Duration::from_secs(30), "MapsInUse on the writer", || {
        let p = env.program(&writer);
        let ready = p.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        match ready {
            Some(c) if c.reason == "MapsInUse" => Ok(c.message),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(held.contains(&format!("waiting for BpfProgram(s) {reader} that use its maps")), "{held}");
    assert!(pin.exists(), "the writer's map stays pinned");
    assert_eq!(env.node(node).pins().iter().filter(|p| p.ends_with("maps/shared")).count(), 1);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(env.cluster.program(&writer).unwrap().is_some(), "still there while the reader is");

    sh(&format!("kubectl delete bpfprogram {reader} --wait=false")).unwrap();
    env.wait_program_gone(&reader);
    env.wait_program_gone(&writer);
    assert!(!pin.exists(), "the writer's map went with it");
}

/// Median of `runs` timings of `f`, in milliseconds, with what the last run returned.
fn median_ms<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let started = std::time::Instant::now();
        last = Some(f());
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.unwrap())
}

/// Entries `range` of `flows` written with one `bpftool batch`: source address `i`,
/// destination 10.11.12.13, UDP, `i` packets.
fn fill_flows(pin: &Path, range: std::ops::Range<u32>, dir: &Path) {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    let mut batch = String::new();
    for i in range {
        let mut key = i.to_le_bytes().to_vec();
        key.extend([10, 11, 12, 13, 17, 0, 0, 0]);
        let mut value = u64::from(i).to_le_bytes().to_vec();
        value.extend((u64::from(i) * 64).to_le_bytes());
        batch.push_str(&format!(
            "map update pinned {} key hex {} value hex {}\n",
            pin.display(),
            hex(&key),
            hex(&value)
        ));
    }
    let file = dir.join("fill.batch");
    std::fs::write(&file, batch).unwrap();
    sh(&format!("bpftool batch file {} >/dev/null", file.display())).unwrap_or_else(|e| panic!("{e:#}"));
}

/// The numbers of docs/maps.md and docs/benchmarks.md ("Maps"): the exporter's scrape with
/// 1,000 series against the same agent's scrape without them, and a 10,000-entry hash map
/// read and decoded through the plugin (API server, operator, agent) against bpftool's
/// BTF-formatted dump of the same pin on the node, side by side in one run. Not a test of
/// speed: it asserts only what it counts.
#[test]
#[ignore = "a benchmark: cargo test --release -p e2e --test maps bench_maps -- --ignored --nocapture"]
fn bench_maps() {
    const TEST: &str = "bench_maps";
    let Some(kubeconfig) = e2e::kubeconfig_or_skip(TEST) else { return };
    let metrics = serde_json::json!([{
        "name": "bench_flow_packets_total", "type": "Counter", "map": "flows", "value": "packets",
        "labels": [{"name": "proto", "field": "proto"}, {"name": "src", "field": "saddr"}, {"name": "dst", "field": "daddr"}],
    }]);
    let run = MapsRun::start(TEST, &kubeconfig, Some(metrics));
    let pin = map_pin(&run.entry, "flows");
    let addr = run.env.node(run.node).metrics_addr();
    // curl's own time from connect to the last byte: the scrape, not the process start.
    let scrape = || {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..21 {
            let out =
                sh(&format!("curl -s -o /dev/null -w '%{{size_download}} %{{time_total}}' http://{addr}/metrics"))
                    .unwrap();
            let (b, t) = out.trim().split_once(' ').unwrap();
            bytes = b.parse::<u64>().unwrap();
            times.push(t.parse::<f64>().unwrap() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        (times[10], bytes)
    };
    let (base_ms, base_bytes) = scrape();
    fill_flows(&pin, 0..1000, &run.env.workdir);
    let (full_ms, full_bytes) = scrape();
    let body = sh(&format!("curl -s http://{addr}/metrics")).unwrap();
    let series = body.lines().filter(|l| l.starts_with("bench_flow_packets_total{")).count();
    assert_eq!(series, 1000, "the bound: 1,000 series");
    let (dump1k_ms, _) =
        median_ms(21, || sh(&format!("bpftool -j map dump pinned {} >/dev/null", pin.display())).unwrap());

    fill_flows(&pin, 1000..10_000, &run.env.workdir);
    let reader = format!("{}/bpfleet-map-reader", run.ns);
    let (plugin_ms, out) = median_ms(5, || {
        let (ok, out, err) = plugin(
            &run.ns,
            &[&run.name, "flows", "--max-entries", "20000", "--service-account", &reader, "-o", "json"],
        );
        assert!(ok, "{err}");
        out
    });
    let answer: Value = serde_json::from_str(&out).unwrap();
    let entries = answer[0]["maps"][0]["entries"].as_array().unwrap().len();
    assert!(entries >= 10_000, "{entries} entries read");
    let token =
        sh(&format!("kubectl create token bpfleet-map-reader -n {} --audience bpfleet.dev/maps", run.ns)).unwrap();
    let url = format!("https://{MAPS_IP}:{}/v1/maps?program={}&map=flows&maxEntries=20000", run.port, run.name);
    let (_, answer) = median_ms(5, || {
        let out = sh(&format!(
            "curl -sk -o /dev/null -w '%{{size_download}} %{{time_total}}' -H 'x-bpfleet-token: {}' '{url}'",
            token.trim()
        ))
        .unwrap();
        let (b, t) = out.trim().split_once(' ').map(|(b, t)| (b.to_string(), t.to_string())).unwrap();
        (b.parse::<u64>().unwrap(), t.parse::<f64>().unwrap() * 1000.0)
    });
    let (answer_bytes, answer_ms) = answer;
    let (dump_ms, dump_bytes) = median_ms(5, || {
        sh(&format!("bpftool -j map dump pinned {} | wc -c", pin.display())).unwrap().trim().parse::<u64>().unwrap()
    });
    let (table_ms, table) = median_ms(5, || {
        plugin(&run.ns, &[&run.name, "flows", "--max-entries", "20000", "--service-account", &reader]).1
    });
    println!("| what | median | bytes |");
    println!("|---|---:|---:|");
    println!("| agent /metrics, nothing exported (21 scrapes) | {base_ms:.1} ms | {base_bytes} |");
    println!("| agent /metrics with 1,000 exported series (21 scrapes) | {full_ms:.1} ms | {full_bytes} |");
    println!("| bpftool -j map dump of those 1,000 entries, on the node | {dump1k_ms:.1} ms | |");
    println!("| kubectl bpfleet maps -o json, {entries} entries (5 runs) | {plugin_ms:.0} ms | {} |", out.len());
    println!("| kubectl bpfleet maps (table), same map | {table_ms:.0} ms | {} |", table.len());
    println!("| the operator's answer alone (curl with a token, 5 runs) | {answer_ms:.0} ms | {answer_bytes} |");
    println!("| bpftool -j map dump (BTF formatted), same pin, on the node | {dump_ms:.0} ms | {dump_bytes} |");
}
