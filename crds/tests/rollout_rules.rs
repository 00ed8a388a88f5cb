//! `spec.rollout` is validated at apply time (issue 23, point 4): every bad value is
//! refused by the CRD's schema and CEL rules with the field named, and the Rust rules the
//! operator's InvalidSpec backstop runs refuse the same values, naming the same field.
//! The CEL is evaluated by the `apiserver` harness (kube's CEL engine); that a real
//! kube-apiserver accepts the rules' cost and answers the same is checked by hand
//! (docs/rollout.md, "Validation").

mod apiserver;

use std::path::PathBuf;

use crds::BpfProgram;
use crds::validate::validate_spec;
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn manifest(rollout: Value) -> Value {
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "metadata": {"name": "t"},
        "spec": {
            "bytecode": {"configMap": {"name": "b", "namespace": "bpfleet-system", "key": "b.o"}},
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}],
            "rollout": rollout
        }
    })
}

fn prometheus(extra: Value) -> Value {
    let mut p = json!({"address": "http://127.0.0.1:9090", "query": "up", "min": 1});
    p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"health": {"prometheus": p}})
}

/// What the schema and CEL say about `rollout` (the first error, or None when admitted).
fn schema_verdict(rollout: &Value) -> Result<(), Vec<String>> {
    apiserver::admit(&BpfProgram::crd(), &manifest(rollout.clone()))
}

/// What the Rust rules say.
fn rust_verdict(rollout: &Value) -> Result<(), String> {
    let spec = manifest(rollout.clone())["spec"].clone();
    match serde_json::from_value::<crds::BpfProgramSpec>(spec) {
        Ok(spec) => validate_spec(&spec).map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(format!("(does not deserialize) {e}")),
    }
}

struct Bad {
    id: &'static str,
    rollout: Value,
    /// The field the API server's error is on, and words of its message.
    schema: (&'static str, &'static str),
    /// The field the Rust error is on (below `spec`), and words of its message.
    rust: (&'static str, &'static str),
}

fn bad(
    id: &'static str,
    rollout: Value,
    schema: (&'static str, &'static str),
    rust: (&'static str, &'static str),
) -> Bad {
    Bad { id, rollout, schema, rust }
}

const NODES: &str = "nodes must be a node count from 0 to 100000 (3 or \"3\") or a percentage from \"0%\" to \"100%\"";
const MAX_IN_FLIGHT: &str =
    "maxInFlight must be a node count from 1 to 100000 (3 or \"3\") or a percentage from \"1%\" to \"100%\"";
const SHRINK: &str = "steps must not shrink";
const DURATION: &str = "pause.duration must be a whole number of seconds, minutes or hours of at most 7 digits";
const ADDRESS: &str = "prometheus.address must be http(s)://host[:port][/path]";
const NEVER_FAILS: &str = "prometheus.failureLimit must be below prometheus.count (default 1)";

fn bad_manifests() -> Vec<Bad> {
    let steps = |nodes: Value| json!({"steps": nodes.as_array().unwrap().iter().map(|n| json!({"nodes": n})).collect::<Vec<_>>()});
    let s0 = "spec.rollout.steps[0].nodes";
    let r0 = "spec.rollout.steps[0].nodes";
    let p = "spec.rollout.health.prometheus";
    vec![
        bad(
            "nodes over 100%",
            steps(json!(["150%"])),
            (s0, NODES),
            (r0, "\"150%\" is not a percentage from 0% to 100%"),
        ),
        bad("nodes negative", steps(json!([-3])), (s0, NODES), (r0, "-3 is negative")),
        bad("nodes over 100000", steps(json!([100001])), (s0, NODES), (r0, "100001 is more than 100000 nodes")),
        bad("nodes as a long string", steps(json!(["0000001"])), (s0, NODES), (r0, "is neither a node count")),
        bad("nodes not a number", steps(json!(["x"])), (s0, NODES), (r0, "\"x\" is neither a node count")),
        bad("nodes with a sign", steps(json!(["+5"])), (s0, NODES), (r0, "\"+5\" is neither a node count")),
        bad("nodes a fraction", steps(json!(["2.5%"])), (s0, NODES), (r0, "\"2.5%\" is not a percentage")),
        bad(
            "percentages shrink",
            steps(json!(["50%", "25%"])),
            ("spec.rollout.steps", SHRINK),
            ("spec.rollout.steps[1].nodes", "steps must not shrink: 25% is below an earlier step's 50%"),
        ),
        bad(
            "counts shrink, int then string",
            steps(json!([5, "3"])),
            ("spec.rollout.steps", SHRINK),
            ("spec.rollout.steps[1].nodes", "steps must not shrink: 3 is below an earlier step's 5"),
        ),
        bad(
            "percentages shrink across a count",
            steps(json!(["50%", 2, "25%"])),
            ("spec.rollout.steps", SHRINK),
            ("spec.rollout.steps[2].nodes", "steps must not shrink: 25% is below an earlier step's 50%"),
        ),
        bad(
            "seventeen steps",
            steps(Value::Array((0..17).map(|i| json!(i)).collect())),
            ("spec.rollout.steps", "must have at most 16 items"),
            ("spec.rollout.steps", "at most 16 steps are allowed, got 17"),
        ),
        bad(
            "maxInFlight 0",
            json!({"maxInFlight": 0}),
            ("spec.rollout.maxInFlight", MAX_IN_FLIGHT),
            ("spec.rollout.maxInFlight", "must allow at least one node"),
        ),
        bad(
            "maxInFlight 0%",
            json!({"maxInFlight": "0%"}),
            ("spec.rollout.maxInFlight", MAX_IN_FLIGHT),
            ("spec.rollout.maxInFlight", "must allow at least one node"),
        ),
        bad(
            "maxInFlight 000%",
            json!({"maxInFlight": "000%"}),
            ("spec.rollout.maxInFlight", MAX_IN_FLIGHT),
            ("spec.rollout.maxInFlight", "must allow at least one node"),
        ),
        bad(
            "maxInFlight a fraction",
            json!({"maxInFlight": "1.5"}),
            ("spec.rollout.maxInFlight", MAX_IN_FLIGHT),
            ("spec.rollout.maxInFlight", "\"1.5\" is neither a node count"),
        ),
        bad(
            "pause in days",
            json!({"steps": [{"nodes": 1, "pause": {"duration": "2d"}}]}),
            ("spec.rollout.steps[0].pause.duration", DURATION),
            ("spec.rollout.steps[0].pause.duration", "\"2d\" is not a duration such as 30s, 2m or 1h"),
        ),
        bad(
            "pause of 8 digits",
            json!({"steps": [{"nodes": 1, "pause": {"duration": "12345678s"}}]}),
            ("spec.rollout.steps[0].pause.duration", DURATION),
            ("spec.rollout.steps[0].pause.duration", "(at most 7 digits)"),
        ),
        bad(
            "failureThreshold too high",
            json!({"failureThreshold": 100001}),
            ("spec.rollout.failureThreshold", "should be less than or equal to 100000"),
            ("spec.rollout.failureThreshold", "must be 0-100000, got 100001"),
        ),
        bad(
            "failureThreshold negative",
            json!({"failureThreshold": -1}),
            ("spec.rollout.failureThreshold", "should be greater than or equal to 0"),
            ("spec.rollout.failureThreshold", "must be 0-100000, got -1"),
        ),
        bad(
            "progressDeadlineSeconds 0",
            json!({"progressDeadlineSeconds": 0}),
            ("spec.rollout.progressDeadlineSeconds", "should be greater than or equal to 1"),
            ("spec.rollout.progressDeadlineSeconds", "must be 1-86400, got 0"),
        ),
        bad(
            "resume past the last step",
            json!({"steps": [{"nodes": 1}], "resume": {"revision": "0123456789abcdef", "step": 3}}),
            ("spec.rollout", "resume.step must be at most the number of steps + 1"),
            ("spec.rollout.resume.step", "must be 1-2 (the number of steps + 1"),
        ),
        bad(
            "resume of no revision",
            json!({"resume": {"revision": "0123456789ABCDEF", "step": 1}}),
            ("spec.rollout.resume.revision", "should match"),
            ("spec.rollout.resume.revision", "must be a revision: 16 lowercase hex characters"),
        ),
        bad(
            "minReadySeconds over an hour",
            json!({"health": {"minReadySeconds": 3601}}),
            ("spec.rollout.health.minReadySeconds", "should be less than or equal to 3600"),
            ("spec.rollout.health.minReadySeconds", "must be 0-3600, got 3601"),
        ),
        bad(
            "map check below 0",
            json!({"health": {"maps": [{"map": "counters", "key": 0, "max": -1}]}}),
            ("spec.rollout.health.maps[0].max", "should be greater than or equal to 0"),
            ("spec.rollout.health.maps[0].max", "must be 0 or more, got -1"),
        ),
        bad(
            "map key over 32 bits",
            json!({"health": {"maps": [{"map": "counters", "key": 4294967296u64, "max": 1}]}}),
            ("spec.rollout.health.maps[0].key", "should be less than or equal to 4294967295"),
            ("spec.rollout.health.maps[0].key", "must be 0-4294967295, got 4294967296"),
        ),
        bad(
            "divisor key over 32 bits",
            json!({"health": {"maps": [{"map": "counters", "key": 0, "divideBy": {"key": 4294967296u64}, "max": 1}]}}),
            ("spec.rollout.health.maps[0].divideBy.key", "should be less than or equal to 4294967295"),
            ("spec.rollout.health.maps[0].divideBy.key", "must be 0-4294967295, got 4294967296"),
        ),
        bad(
            "map name not an identifier",
            json!({"health": {"maps": [{"map": "1counters", "key": 0, "max": 1}]}}),
            ("spec.rollout.health.maps[0].map", "should match"),
            ("spec.rollout.health.maps[0].map", "must be a map name of the ELF object"),
        ),
        bad(
            "prometheus without bounds",
            json!({"health": {"prometheus": {"address": "http://127.0.0.1:9090", "query": "up"}}}),
            (p, "prometheus needs min, max or both"),
            (p, "prometheus needs min, max or both"),
        ),
        bad(
            "prometheus min over max",
            prometheus(json!({"min": 5, "max": 1})),
            (p, "prometheus.min must be at most prometheus.max"),
            ("spec.rollout.health.prometheus.min", "prometheus.min (5) must be at most prometheus.max (1)"),
        ),
        bad(
            "prometheus that can never fail",
            prometheus(json!({"count": 3, "failureLimit": 3})),
            (p, NEVER_FAILS),
            ("spec.rollout.health.prometheus.failureLimit", "the gate could never fail"),
        ),
        bad(
            "prometheus that can never fail, count by default",
            prometheus(json!({"failureLimit": 1})),
            (p, NEVER_FAILS),
            (
                "spec.rollout.health.prometheus.failureLimit",
                "prometheus.failureLimit (1) must be below prometheus.count (1)",
            ),
        ),
        bad(
            "prometheus count 0",
            prometheus(json!({"count": 0})),
            ("spec.rollout.health.prometheus.count", "should be greater than or equal to 1"),
            ("spec.rollout.health.prometheus.count", "must be 1-100, got 0"),
        ),
        bad(
            "prometheus interval over an hour",
            prometheus(json!({"intervalSeconds": 3601})),
            ("spec.rollout.health.prometheus.intervalSeconds", "should be less than or equal to 3600"),
            ("spec.rollout.health.prometheus.intervalSeconds", "must be 1-3600, got 3601"),
        ),
        bad(
            "prometheus failureLimit over 100",
            prometheus(json!({"count": 100, "failureLimit": 101})),
            ("spec.rollout.health.prometheus.failureLimit", "should be less than or equal to 100"),
            ("spec.rollout.health.prometheus.failureLimit", "must be 0-100, got 101"),
        ),
        bad(
            "prometheus empty query",
            prometheus(json!({"query": ""})),
            ("spec.rollout.health.prometheus.query", "should be at least 1 chars long"),
            ("spec.rollout.health.prometheus.query", "must be 1-4096 characters of PromQL, got 0"),
        ),
        bad(
            "prometheus address with credentials",
            prometheus(json!({"address": "http://user:pw@prometheus:9090"})),
            ("spec.rollout.health.prometheus.address", ADDRESS),
            ("spec.rollout.health.prometheus.address", "has a user or password (user@host): give the host only"),
        ),
        bad(
            "prometheus address port out of range",
            prometheus(json!({"address": "http://prometheus:99999"})),
            ("spec.rollout.health.prometheus.address", ADDRESS),
            ("spec.rollout.health.prometheus.address", "has a port that is not 1-65535"),
        ),
        bad(
            "prometheus address not http",
            prometheus(json!({"address": "ftp://prometheus:9090"})),
            ("spec.rollout.health.prometheus.address", ADDRESS),
            ("spec.rollout.health.prometheus.address", "does not start with http:// or https://"),
        ),
        bad(
            "prometheus address with a query",
            prometheus(json!({"address": "http://prometheus:9090/api?x=1"})),
            ("spec.rollout.health.prometheus.address", ADDRESS),
            ("spec.rollout.health.prometheus.address", "has a path with a character other than"),
        ),
    ]
}

#[test]
fn bad_rollouts_are_refused_by_the_schema_and_by_the_rust_rules_naming_the_field() {
    let mut problems = Vec::new();
    let table = bad_manifests();
    for case in &table {
        let (field, words) = case.schema;
        match schema_verdict(&case.rollout) {
            Ok(()) => problems.push(format!("{}: the schema admitted it", case.id)),
            Err(errs) => {
                if !errs.iter().any(|e| e.starts_with(&format!("{field}: ")) && e.contains(words)) {
                    problems.push(format!("{}: schema errors {errs:?} lack {field}: ...{words}", case.id));
                }
                println!("{:<48} schema: {}", case.id, errs.join(" | "));
            }
        }
        let (field, words) = case.rust;
        match rust_verdict(&case.rollout) {
            Ok(()) => problems.push(format!("{}: the Rust rules admitted it", case.id)),
            Err(e) => {
                let ours = e.split("; ").find(|m| m.starts_with(&format!("{field}: ")));
                if !ours.is_some_and(|m| m.contains(words)) {
                    problems.push(format!("{}: Rust error {e:?} lacks {field}: ...{words}", case.id));
                }
                println!("{:<48} rust:   {e}", case.id);
            }
        }
    }
    assert!(table.len() >= 35, "only {} cases", table.len());
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn golden_rollouts_are_admitted_by_both() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/specs");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("rollout-") {
            continue;
        }
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        apiserver::admit(&BpfProgram::crd(), &v).unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
        let p: BpfProgram = serde_json::from_value(v).unwrap();
        validate_spec(&p.spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} golden rollouts");
}

#[test]
fn the_widest_good_rollout_is_admitted_by_both() {
    let mut steps: Vec<Value> = (0..8).map(|i| json!({"nodes": i * 10, "pause": {"duration": "9999999h"}})).collect();
    steps.extend(["0%", "007%", "10%", "99%"].map(|n| json!({"nodes": n, "pause": {}})));
    steps.extend([
        json!({"nodes": "100000"}),
        json!({"nodes": "100%"}),
        json!({"nodes": 100000}),
        json!({"nodes": "100%"}),
    ]);
    let rollout = json!({
        "steps": steps, "maxInFlight": "100%", "failureThreshold": 100000, "progressDeadlineSeconds": 86400,
        "resume": {"revision": "0123456789abcdef", "step": 17},
        "health": {
            "minReadySeconds": 3600, "mustRun": true,
            "maps": [{"map": "c.bss", "key": 4294967295u64, "divideBy": {"map": "_d", "key": 0}, "max": 0}],
            "prometheus": {"address": "https://[fd00::1]:65535/prometheus/", "query": "up", "min": 0, "max": 0,
                           "count": 100, "intervalSeconds": 3600, "failureLimit": 99}
        }
    });
    assert_eq!(rollout["steps"].as_array().unwrap().len(), 16);
    schema_verdict(&rollout).unwrap_or_else(|e| panic!("{e:#?}"));
    rust_verdict(&rollout).unwrap();
}

/// The node of the CRD's schema at `path` (property names below `spec.rollout`; `[]` for
/// a list's items).
fn rollout_schema(path: &[&str]) -> Value {
    let crd = serde_json::to_value(BpfProgram::crd()).unwrap();
    let mut node =
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rollout"];
    for p in path {
        node = if *p == "[]" { &node["items"] } else { &node["properties"][*p] };
    }
    assert!(node.get("x-kubernetes-validations").is_some(), "{path:?} has no rule");
    node.clone()
}

/// The CEL rules on amounts are built from constant-cost pieces (see
/// `crds::rollout::cel`); this holds them to the Rust rules on every value a user is
/// likely to write, and on the edges of every form. The rules are the CRD's own, compiled
/// once and evaluated by the harness's CEL engine.
#[test]
fn cel_and_rust_agree_on_every_amount() {
    let mut values: Vec<Value> = Vec::new();
    for n in (-3..=300).chain(99_990..=100_010).chain([999_999, 1_000_000, i32::MAX as i64]) {
        values.push(json!(n));
        values.push(json!(n.to_string()));
        values.push(json!(format!("{n}%")));
    }
    for s in ["", "%", "%%", "5%%", "+5", "+5%", " 5", "5 ", "0x10", "1e3", "1.5", "2.5%", "٣", "٣%", "½", "00", "000%"]
    {
        values.push(json!(s));
    }
    for p in 0..=101 {
        for pad in ["0", "00", "000"] {
            values.push(json!(format!("{pad}{p}%")));
            values.push(json!(format!("{pad}{p}")));
        }
    }
    let nodes = kube::core::cel::compile_schema(&rollout_schema(&["steps", "[]", "nodes"]));
    let in_flight = kube::core::cel::compile_schema(&rollout_schema(&["maxInFlight"]));
    let admits = |compiled, v: Value| kube::core::cel::validate_compiled(compiled, &v, None).is_ok();
    assert!(admits(&nodes, json!("25%")) && !admits(&nodes, json!("150%")) && !admits(&in_flight, json!(0)));
    let mut disagree = Vec::new();
    for v in &values {
        for (compiled, rollout) in [(&nodes, json!({"steps": [{"nodes": v}]})), (&in_flight, json!({"maxInFlight": v}))]
        {
            let cel = kube::core::cel::validate_compiled(compiled, v, None).map_err(|e| e.to_string());
            let rust = rust_verdict(&rollout);
            if cel.is_ok() != rust.is_ok() {
                disagree.push(format!("{rollout}: CEL {cel:?}, Rust {rust:?}"));
            }
        }
    }
    assert!(values.len() > 1500);
    assert!(disagree.is_empty(), "{} disagreements:\n{}", disagree.len(), disagree.join("\n"));
}

#[test]
fn cel_and_rust_agree_on_durations_and_addresses() {
    let mut disagree = Vec::new();
    let durations =
        ["0s", "30s", "2m", "1h", "9999999h", "12345678s", "1d", "s", "1.5m", "-1s", "+1s", "1 s", "1S", "١s"];
    for d in durations {
        let cel = schema_verdict(&json!({"steps": [{"nodes": 1, "pause": {"duration": d}}]})).is_ok();
        if cel != crds::rollout::parse_duration(d).is_ok() {
            disagree.push(format!("duration {d:?}: CEL {cel}"));
        }
    }
    // (address, accepted)
    let addresses = [
        ("http://prometheus.monitoring:9090", true),
        ("https://prometheus.monitoring.svc.cluster.local/", true),
        ("http://127.0.0.1:9090/prometheus/api-proxy_v1.x~", true),
        ("http://[::1]:9090", true),
        ("http://[fd00::10]", true),
        ("https://thanos:65535/a/b;c=d,e@f:g", true),
        ("http://p:1", true),
        ("http://user:pw@prometheus:9090", false),
        ("http://prometheus:0", false),
        ("http://prometheus:09090", false),
        ("http://prometheus:65536", false),
        ("http://prometheus:", false),
        ("http://-prometheus", false),
        ("http://prometheus-", false),
        ("http://prometheus.", false),
        ("http://prom..etheus", false),
        ("http://prometheus/api?query=up", false),
        ("http://prometheus/#x", false),
        ("http://prometheus/a b", false),
        ("http://[::1", false),
        ("http://[]:9090", false),
        ("http://[::1]x", false),
        ("http://prometheus_1:9090", false),
        ("http://prometheus:9090:9091", false),
        ("HTTP://prometheus:9090", false),
        ("http://prométhée:9090", false),
        ("http://prometheus/é", false),
    ];
    for (a, accepted) in addresses {
        let cel = schema_verdict(&prometheus(json!({"address": a}))).is_ok();
        let rust = crds::health::check_address(a);
        if cel != accepted || rust.is_ok() != accepted {
            disagree.push(format!("address {a:?}: expected {accepted}, CEL {cel}, Rust {rust:?}"));
        }
    }
    assert!(disagree.is_empty(), "{} disagreements:\n{}", disagree.len(), disagree.join("\n"));
}

/// `revisionHistoryLimit` and `spec.maps`, the other settings a rollout reads.
#[test]
fn history_settings_are_refused_by_both_naming_the_field() {
    let cases = [
        (json!({"revisionHistoryLimit": 101}), "spec.revisionHistoryLimit", "spec.revisionHistoryLimit: must be 0-100"),
        (
            json!({"maps": [{"name": "counters"}, {"name": "counters", "onUpgrade": "Recreate"}]}),
            "spec.maps[1]: Duplicate value",
            "spec.maps[1].name: map \"counters\" has a policy already",
        ),
        (
            json!({"maps": [{"name": "1counters"}]}),
            "spec.maps[0].name",
            "spec.maps[0].name: \"1counters\" must be a map name",
        ),
    ];
    for (extra, schema_words, rust_words) in cases {
        let mut m = manifest(json!({}));
        m["spec"].as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let errs = apiserver::admit(&BpfProgram::crd(), &m).expect_err("the schema admitted it");
        assert!(errs.iter().any(|e| e.contains(schema_words)), "{errs:?} lack {schema_words}");
        let spec: crds::BpfProgramSpec = serde_json::from_value(m["spec"].clone()).unwrap();
        let e = validate_spec(&spec).expect_err("the Rust rules admitted it").to_string();
        assert!(e.contains(rust_words), "{e} lacks {rust_words}");
    }
}
