//! The bad-input catalogue, manifest side (docs/reliability.md, "Bad input catalogue"):
//! specs that the Rust validation refuses with the field to fix. The operator runs this
//! validation before it sends anything to a node (a refused spec becomes an InvalidSpec
//! condition and no Apply), and the standalone agent runs it on manifests that never saw
//! an API server, so it must hold on its own, for inputs far beyond the schema's limits
//! too. Every case runs before the test fails, so one run lists every mismatch.

use std::time::{Duration, Instant};

use crds::BpfProgramSpec;
use crds::validate::validate_spec;
use serde_json::{Value, json};

fn xdp(interfaces: Value) -> Value {
    json!({"name": "count_packets", "type": "XDP", "xdp": {"interfaces": interfaces}})
}

fn spec(programs: Value) -> Value {
    json!({"bytecode": {"path": "/opt/x.o"}, "programs": programs})
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

fn tp(names: Value) -> Value {
    json!({"name": "count_openat", "type": "Tracepoint", "tracepoint": {"names": names}})
}

/// (id, spec, words the error must contain).
fn cases() -> Vec<(&'static str, Value, Vec<String>)> {
    let many = |n: usize, f: &dyn Fn(usize) -> Value| Value::Array((0..n).map(f).collect());
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            "spec/interface-listed-twice",
            spec(json!([xdp(json!(["eth0", "eth0"]))])),
            words(&["programs[0].xdp.interfaces[1]", "interface \"eth0\" is listed twice"]),
        ),
        (
            "spec/huge-interface-list",
            spec(json!([xdp(many(100_000, &|i| json!(format!("e{i}"))))])),
            words(&["programs[0].xdp.interfaces", "must list 1-32 entries, got 100000"]),
        ),
        ("spec/empty-interface-list", spec(json!([xdp(json!([]))])), words(&["must list 1-32 entries, got 0"])),
        (
            "spec/huge-program-list",
            spec(many(
                10_000,
                &|i| json!({"name": format!("p{i}"), "type": "Tracepoint", "tracepoint": {"names": ["syscalls/sys_enter_openat"]}}),
            )),
            words(&["at most 64 programs are allowed, got 10000"]),
        ),
        (
            "spec/huge-tracepoint-list",
            spec(json!([tp(many(33, &|i| json!(format!("syscalls/sys_enter_x{i}"))))])),
            words(&["programs[0].tracepoint.names", "must list 1-32 entries, got 33"]),
        ),
        (
            "spec/tracepoint-without-category",
            spec(json!([tp(json!(["sys_enter_openat"]))])),
            words(&["must be category/name, e.g. syscalls/sys_enter_openat"]),
        ),
        (
            "spec/huge-global-data",
            with(
                spec(json!([xdp(json!(["eth0"]))])),
                "globalData",
                Value::Object((0..1000).map(|i| (format!("G{i}"), json!("AQ=="))).collect()),
            ),
            words(&["globalData", "at most 64 variables may be set"]),
        ),
        (
            "spec/global-value-too-large",
            with(spec(json!([xdp(json!(["eth0"]))])), "globalData", json!({"BIG": "A".repeat(8192)})),
            words(&["globalData.BIG", "must be 1-4096 bytes"]),
        ),
        (
            "spec/global-value-not-base64",
            with(spec(json!([xdp(json!(["eth0"]))])), "globalData", json!({"RATE": "%%%"})),
            words(&["globalData.RATE", "not valid base64"]),
        ),
        (
            "spec/inline-bytecode-not-base64",
            with(spec(json!([xdp(json!(["eth0"]))])), "bytecode", json!({"inline": "not base64!"})),
            words(&["bytecode.inline", "not valid base64"]),
        ),
        (
            "spec/configmap-name-invalid",
            with(
                spec(json!([xdp(json!(["eth0"]))])),
                "bytecode",
                json!({"configMap": {"name": "Bad_Name", "namespace": "ns", "key": "x.o"}}),
            ),
            words(&["bytecode.configMap.name", "must be a DNS subdomain"]),
        ),
        (
            "spec/configmap-key-invalid",
            with(
                spec(json!([xdp(json!(["eth0"]))])),
                "bytecode",
                json!({"configMap": {"name": "cm", "namespace": "ns", "key": "a/b.o"}}),
            ),
            words(&["bytecode.configMap.key", "letters, digits"]),
        ),
        (
            "spec/image-url-invalid",
            with(spec(json!([xdp(json!(["eth0"]))])), "bytecode", json!({"image": {"url": "not an image ref"}})),
            words(&["bytecode.image.url", "must be an image reference"]),
        ),
        (
            "spec/image-digest-invalid",
            with(
                spec(json!([xdp(json!(["eth0"]))])),
                "bytecode",
                json!({"image": {"url": "registry.example/repo:v1", "digest": "sha256:abc"}}),
            ),
            words(&["bytecode.image.digest", "sha256: followed by 64"]),
        ),
        (
            "spec/path-digest-invalid",
            with(spec(json!([xdp(json!(["eth0"]))])), "bytecode", json!({"path": "/opt/x.o", "digest": "md5:00"})),
            words(&["bytecode.digest", "sha256sum FILE"]),
        ),
        (
            "spec/inline-digest-mismatch",
            with(
                spec(json!([xdp(json!(["eth0"]))])),
                "bytecode",
                json!({"inline": "f0VMRg==", "digest": format!("sha256:{}", "0".repeat(64))}),
            ),
            words(&["bytecode.digest", "bytecode.inline has digest sha256:", "correct whichever"]),
        ),
        (
            "spec/configmap-digest-invalid",
            with(
                spec(json!([xdp(json!(["eth0"]))])),
                "bytecode",
                json!({"configMap": {"name": "cm", "namespace": "ns", "key": "x.o"}, "digest": "sha256:xyz"}),
            ),
            words(&["bytecode.digest", "sha256: followed by 64"]),
        ),
        (
            "spec/image-with-bytecode-digest",
            with(
                spec(json!([xdp(json!(["eth0"]))])),
                "bytecode",
                json!({"image": {"url": "registry.example/repo:v1"}, "digest": format!("sha256:{}", "0".repeat(64))}),
            ),
            words(&["bytecode.digest", "does not apply to image bytecode", "bytecode.image.digest"]),
        ),
        (
            "spec/tc-priority-zero",
            spec(
                json!([{"name": "count_tc", "type": "TC", "tc": {"interfaces": ["eth0"], "direction": "Ingress", "priority": 0}}]),
            ),
            words(&["programs[0].tc.priority", "must be 1-1000, got 0"]),
        ),
        (
            "spec/uprobe-relative-target",
            spec(json!([{"name": "f", "type": "Uprobe", "uprobe": {"target": "bin/app", "symbol": "main"}}])),
            words(&["uprobe.target", "absolute path"]),
        ),
        (
            "spec/uprobe-negative-pid",
            spec(
                json!([{"name": "f", "type": "Uprobe", "uprobe": {"target": "/bin/app", "symbol": "main", "pid": -4}}]),
            ),
            words(&["uprobe.pid", "must be a positive process id, got -4"]),
        ),
        (
            "spec/kretprobe-with-offset",
            spec(json!([{"name": "f", "type": "Kretprobe", "kretprobe": {"function": "do_sys_openat2", "offset": 8}}])),
            words(&["kretprobe.offset", "offset must be 0"]),
        ),
        (
            "spec/fentry-bad-function-name",
            spec(json!([{"name": "f", "type": "Fentry", "fentry": {"function": "do sys; rm"}}])),
            words(&["fentry.function", "is not a kernel function name"]),
        ),
        (
            "spec/rollout-percent-over-100",
            with(spec(json!([xdp(json!(["eth0"]))])), "rollout", json!({"steps": [{"nodes": "150%"}]})),
            words(&["rollout.steps[0].nodes", "\"150%\" is not a percentage from 0% to 100%"]),
        ),
        (
            "spec/rollout-negative-count",
            with(spec(json!([xdp(json!(["eth0"]))])), "rollout", json!({"steps": [{"nodes": -3}]})),
            words(&["rollout.steps[0].nodes", "-3 is negative"]),
        ),
        (
            "spec/rollout-max-in-flight-zero-percent",
            with(spec(json!([xdp(json!(["eth0"]))])), "rollout", json!({"maxInFlight": "0%"})),
            words(&["rollout.maxInFlight", "must allow at least one node"]),
        ),
    ]
}

#[test]
fn catalogue_specs_are_refused_with_the_field_to_fix() {
    let mut problems = Vec::new();
    let cases = cases();
    for (id, value, words) in &cases {
        let started = Instant::now();
        let message = match serde_json::from_value::<BpfProgramSpec>(value.clone()) {
            Err(e) => format!("(does not deserialize) {e}"),
            Ok(parsed) => match validate_spec(&parsed) {
                Ok(_) => {
                    problems.push(format!("{id}: accepted"));
                    continue;
                }
                Err(e) => e.to_string(),
            },
        };
        // Huge lists are refused by counting, not by working through every entry.
        if started.elapsed() > Duration::from_secs(2) {
            problems.push(format!("{id}: took {:?}", started.elapsed()));
        }
        let shown: String = message.chars().take(300).collect();
        println!("{id:<40} InvalidSpec  {shown}");
        for w in words {
            if !message.contains(w.as_str()) {
                problems.push(format!("{id}: message {shown:?} lacks {w:?}"));
            }
        }
    }
    assert!(cases.len() >= 20);
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}
