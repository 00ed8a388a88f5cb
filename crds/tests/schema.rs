//! The generated CRDs: current, structural, and rejecting bad manifests with the
//! message a user reads, both in the schema (as the API server would) and in the
//! Rust validation the agent runs.

mod apiserver;

use std::path::PathBuf;

use crds::tenant::tenant_problems;
use crds::validate::validate_spec;
use crds::{BpfNamespacedProgram, BpfNode, BpfProgram};
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_are_current() {
    for (file, yaml) in crds::crdgen::render_all().unwrap() {
        let path = repo().join("charts/bpfleet/crds").join(&file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} is stale: run `cargo run -p crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}

/// Kubernetes requires a structural schema: every node typed (or explicitly
/// int-or-string / preserve-unknown-fields), no $ref, and anyOf/oneOf/allOf/not only as
/// pure value validations without types or defaults inside.
fn check_structural(s: &Value, path: &str, problems: &mut Vec<String>) {
    let obj = s.as_object().unwrap();
    if obj.contains_key("$ref") {
        problems.push(format!("{path}: $ref is not allowed"));
    }
    for k in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(branches) = obj.get(k) {
            let list = branches.as_array().cloned().unwrap_or_else(|| vec![branches.clone()]);
            for b in list {
                for forbidden in [
                    "type",
                    "default",
                    "description",
                    "nullable",
                    "additionalProperties",
                    "x-kubernetes-preserve-unknown-fields",
                ] {
                    if b.get(forbidden).is_some() {
                        problems.push(format!("{path}.{k}: branch sets {forbidden}"));
                    }
                }
            }
        }
    }
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed {
        problems.push(format!("{path}: no type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(ap, &format!("{path}{{}}"), problems);
    }
}

#[test]
fn schemas_are_structural_and_cel_compiles_within_budget() {
    for crd in [BpfProgram::crd(), crds::tenant::crd(), BpfNode::crd()] {
        let schema =
            serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap())
                .unwrap();
        let mut problems = Vec::new();
        check_structural(&schema, "", &mut problems);
        assert!(problems.is_empty(), "{}: {problems:#?}", crd.spec.names.kind);

        let compiled = kube::core::cel::compile_schema(&schema);
        assert!(!compiled.has_errors(), "CEL rules fail to compile: {:?}", compiled.compilation_errors());
    }
    // Every CEL rule is in a valid scope and within the apiserver's cost budget
    // (an unbounded list or string makes a real apiserver refuse the CRD).
    let schema = serde_json::to_value(
        BpfProgram::crd().spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap(),
    )
    .unwrap();
    let mut rules = 0;
    check_cel_cost(&schema, &mut rules);
    assert!(rules >= 18, "only {rules} CEL rules found");
}

fn check_cel_cost(s: &Value, rules: &mut usize) {
    use kube::core::cel::{ScopeContext, WarningKind, analyze_rule, compile_schema};
    if let Some(list) = s.get("x-kubernetes-validations").and_then(Value::as_array) {
        let compiled = compile_schema(s);
        for r in list {
            let rule = r["rule"].as_str().unwrap();
            // The scope analysis does not know macro-bound variables (`all(k, ...)`),
            // so only cost and bounds warnings count.
            let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| w.kind != WarningKind::WrongScope)
                .collect();
            assert!(warnings.is_empty(), "{rule}: {warnings:?}");
            *rules += 1;
        }
    }
    for key in ["properties"] {
        for v in s.get(key).and_then(Value::as_object).into_iter().flat_map(|m| m.values()) {
            check_cel_cost(v, rules);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = s.get(key).filter(|v| v.is_object()) {
            check_cel_cost(v, rules);
        }
    }
}

fn manifest(spec: Value) -> Value {
    json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "metadata": {"name": "t"}, "spec": spec})
}

fn xdp_spec() -> Value {
    json!({
        "nodeSelector": {},
        "bytecode": {"configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
        "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}}]
    })
}

/// Both the schema and the Rust validation reject `spec`, each with a message
/// containing `schema_msg` / `rust_msg`.
fn rejected(spec: Value, schema_msg: &str, rust_msg: &str) {
    let obj = manifest(spec.clone());
    let errs = apiserver::admit(&BpfProgram::crd(), &obj).expect_err("schema accepted a bad manifest");
    assert!(errs.iter().any(|e| e.contains(schema_msg)), "schema errors {errs:#?} lack {schema_msg:?}");
    let parsed: Result<crds::BpfProgramSpec, _> = serde_json::from_value(spec);
    match parsed {
        Ok(parsed) => {
            let e = validate_spec(&parsed).expect_err("Rust validation accepted a bad spec").to_string();
            assert!(e.contains(rust_msg), "Rust error {e:?} lacks {rust_msg:?}");
        }
        // A spec that does not even deserialize is rejected too; say so clearly.
        Err(e) => assert!(e.to_string().contains(rust_msg), "serde error {e} lacks {rust_msg:?}"),
    }
}

#[test]
fn design_example_is_accepted() {
    let spec = json!({
        "nodeSelector": {"matchLabels": {"kubernetes.io/os": "linux"}},
        "bytecode": {"configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
        "globalData": {"SAMPLE_RATE": "ZAAAAA=="},
        "programs": [
            {"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}},
            {"name": "count_openat", "type": "Tracepoint", "tracepoint": {"names": ["syscalls/sys_enter_openat"]}}
        ]
    });
    apiserver::admit(&BpfProgram::crd(), &manifest(spec.clone())).unwrap();
    let v = validate_spec(&serde_json::from_value(spec).unwrap()).unwrap();
    assert_eq!(v.programs.len(), 2);
    assert_eq!(v.globals[0].1, vec![100, 0, 0, 0]);
}

#[test]
fn every_example_manifest_is_accepted() {
    let mut seen = 0;
    for dir in ["examples/manifests", "examples/standalone"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap().replace("@BUILD_DIR@", "/opt/bpfleet");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc).unwrap();
                if v.get("kind").and_then(Value::as_str) == Some("BpfNamespacedProgram") {
                    apiserver::admit(&crds::tenant::crd(), &v).unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
                    let p: BpfNamespacedProgram = serde_json::from_value(v).unwrap();
                    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                    assert_eq!(tenant_problems(&p.spec.program, ns), Vec::<String>::new(), "{}", path.display());
                    validate_spec(&p.spec.program).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    seen += 1;
                    continue;
                }
                if v.get("kind").and_then(Value::as_str) != Some("BpfProgram") {
                    continue;
                }
                apiserver::admit(&BpfProgram::crd(), &v).unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
                let p: BpfProgram = serde_json::from_value(v).unwrap();
                validate_spec(&p.spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 8, "only {seen} example BpfPrograms found");
}

#[test]
fn two_bytecode_sources_are_rejected() {
    let mut spec = xdp_spec();
    spec["bytecode"]["path"] = json!("/opt/bpf/x.o");
    rejected(
        spec,
        "bytecode must set exactly one of inline, configMap, path or image",
        "exactly one of inline, configMap, path or image",
    );
}

#[test]
fn no_bytecode_source_is_rejected() {
    let mut spec = xdp_spec();
    spec["bytecode"] = json!({});
    rejected(
        spec,
        "bytecode must set exactly one of inline, configMap, path or image",
        "exactly one of inline, configMap, path or image",
    );
}

#[test]
fn attach_block_must_match_type() {
    let mut spec = xdp_spec();
    spec["programs"][0]["type"] = json!("TC");
    rejected(
        spec.clone(),
        "the xdp block must be set exactly when type is XDP",
        "programs[0].xdp: the xdp block must be set exactly when type is XDP, but type is TC",
    );
    // Missing block for the type.
    spec["programs"][0] = json!({"name": "count_tc", "type": "TC"});
    rejected(spec, "the tc block must be set exactly when type is TC", "type TC needs a tc block");
}

#[test]
fn every_type_requires_its_own_block() {
    let blocks = [
        ("XDP", "xdp", json!({"interfaces": ["eth0"]})),
        ("TC", "tc", json!({"interfaces": ["eth0"], "direction": "Ingress", "priority": 10})),
        ("Tracepoint", "tracepoint", json!({"names": ["syscalls/sys_enter_openat"]})),
        ("RawTracepoint", "rawTracepoint", json!({"names": ["sys_enter"]})),
        ("Fentry", "fentry", json!({"function": "do_unlinkat"})),
        ("Fexit", "fexit", json!({"function": "do_unlinkat"})),
        ("Kprobe", "kprobe", json!({"function": "tcp_connect", "offset": 0})),
        ("Kretprobe", "kretprobe", json!({"function": "tcp_connect"})),
        ("Uprobe", "uprobe", json!({"target": "/usr/bin/bash", "symbol": "readline"})),
        ("Uretprobe", "uretprobe", json!({"target": "/usr/bin/bash", "offset": 4096, "pid": 1})),
        ("CgroupSkb", "cgroupSkb", json!({"cgroupPath": "/sys/fs/cgroup/unified/app", "direction": "Egress"})),
        ("Lsm", "lsm", json!({"hook": "file_open"})),
    ];
    for (ty, field, block) in &blocks {
        let mut spec = xdp_spec();
        spec["programs"][0] = json!({"name": "p", "type": ty, field.to_string(): block});
        apiserver::admit(&BpfProgram::crd(), &manifest(spec.clone())).unwrap_or_else(|e| panic!("{ty}: {e:#?}"));
        let v = validate_spec(&serde_json::from_value(spec.clone()).unwrap()).unwrap();
        assert_eq!(v.programs[0].attach.program_type().as_str(), *ty);
        // Paired with the next type's block instead: rejected.
        let (_, other_field, other_block) =
            &blocks[(blocks.iter().position(|b| b.0 == *ty).unwrap() + 1) % blocks.len()];
        spec["programs"][0] = json!({"name": "p", "type": ty, other_field.to_string(): other_block});
        rejected(
            spec,
            &format!("the {other_field} block must be set exactly when type is"),
            &format!("type {ty} needs a {field} block"),
        );
    }
}

#[test]
fn programs_must_not_be_empty() {
    let mut spec = xdp_spec();
    spec["programs"] = json!([]);
    rejected(spec, "spec.programs: Invalid value: 0: should have at least 1 items", "at least one program is required");
}

#[test]
fn bad_program_names_are_rejected() {
    for name in ["../../etc/passwd", "count/packets", "1abc", &"x".repeat(65)] {
        let mut spec = xdp_spec();
        spec["programs"][0]["name"] = json!(name);
        let schema_msg = if name.len() > 64 {
            "spec.programs[0].name: Too long: may not be more than 64 characters"
        } else {
            "spec.programs[0].name: Invalid value"
        };
        rejected(spec, schema_msg, "spec.programs[0].name: invalid program name");
    }
}

#[test]
fn duplicate_program_names_are_rejected() {
    let mut spec = xdp_spec();
    let p = spec["programs"][0].clone();
    spec["programs"] = json!([p.clone(), p]);
    rejected(spec, "spec.programs[1]: Duplicate value", "duplicate program name");
}

#[test]
fn bad_interfaces_are_rejected() {
    let mut spec = xdp_spec();
    spec["programs"][0]["xdp"]["interfaces"] = json!(["a-very-long-interface-name"]);
    rejected(spec.clone(), "Too long: may not be more than 15 characters", "invalid interface name");
    spec["programs"][0]["xdp"]["interfaces"] = json!(["../x"]);
    rejected(spec, "should match", "invalid interface name");
}

#[test]
fn path_traversal_is_rejected() {
    let mut spec = xdp_spec();
    spec["bytecode"] = json!({"path": "/opt/../etc/x.o"});
    rejected(
        spec.clone(),
        "path must be absolute and must not contain '.' or '..' segments",
        "must be an absolute path",
    );
    spec["bytecode"] = json!({"path": "relative/x.o"});
    rejected(spec, "should match", "must be an absolute path");
}

#[test]
fn oversized_inline_bytecode_is_rejected() {
    use base64::Engine;
    let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; (1 << 20) + 3]);
    let mut spec = xdp_spec();
    spec["bytecode"] = json!({"inline": big});
    rejected(spec, "spec.bytecode.inline: Too long", "the limit is 1048576; use configMap or path");
}

/// `bytecode.digest` pins inline and ConfigMap bytes as it pins a `path` file (the
/// operator checks the bytes before it sends anything); an image is pinned by
/// `image.digest` instead, so `bytecode.digest` next to an image is refused.
#[test]
fn a_digest_pins_inline_and_config_map_bytecode_but_not_an_image() {
    use base64::Engine;
    use crds::revision::Sha256Digest;
    let elf = b"\x7fELF object";
    let digest = Sha256Digest::of(elf).to_string();
    let accepted = |bytecode: Value| {
        let mut spec = xdp_spec();
        spec["bytecode"] = bytecode;
        apiserver::admit(&BpfProgram::crd(), &manifest(spec.clone())).unwrap_or_else(|e| panic!("{e:#?}"));
        validate_spec(&serde_json::from_value(spec).unwrap()).unwrap()
    };
    let inline = base64::engine::general_purpose::STANDARD.encode(elf);
    let valid = accepted(json!({"inline": inline, "digest": digest}));
    assert_eq!(valid.bytecode, crds::validate::Bytecode::Inline(elf.to_vec()));
    accepted(json!({"configMap": {"name": "cm", "namespace": "bpfleet-system", "key": "x.o"}, "digest": digest}));
    accepted(json!({"path": "/opt/x.o", "digest": digest}));

    let mut spec = xdp_spec();
    spec["bytecode"] = json!({"image": {"url": "registry.example/repo:v1"}, "digest": digest});
    rejected(
        spec,
        "digest does not apply to image bytecode: pin the image with image.digest",
        "spec.bytecode.digest: digest does not apply to image bytecode: pin the image with bytecode.image.digest",
    );

    // The schema cannot hash: inline bytes that are not the pinned object pass it, and
    // the Rust validation (operator and standalone agent) refuses them, naming both.
    let other = Sha256Digest::of(b"another object").to_string();
    let mut spec = xdp_spec();
    spec["bytecode"] = json!({"inline": inline, "digest": other});
    apiserver::admit(&BpfProgram::crd(), &manifest(spec.clone())).unwrap();
    let e = validate_spec(&serde_json::from_value(spec).unwrap()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "spec.bytecode.digest: bytecode.inline has digest {digest}, but bytecode.digest pins {other}; \
             correct whichever of the two is wrong"
        )
    );

    let mut spec = xdp_spec();
    spec["bytecode"]["digest"] = json!("sha256:ABC");
    rejected(spec, "spec.bytecode.digest", "must be sha256: followed by 64 lowercase hex characters");
}

#[test]
fn bad_global_data_is_rejected() {
    let mut spec = xdp_spec();
    spec["globalData"] = json!({"not-an-identifier": "AQ=="});
    rejected(spec, "globalData keys must be C identifiers", "invalid globalData variable");
}

#[test]
fn uprobe_needs_symbol_or_offset() {
    let mut spec = xdp_spec();
    spec["programs"][0] = json!({"name": "p", "type": "Uprobe", "uprobe": {"target": "/usr/bin/bash"}});
    rejected(spec, "uprobe needs a symbol, an offset, or both", "uprobe needs a symbol, an offset, or both");
}

#[test]
fn uprobes_in_containers_name_no_host_pid_and_only_container_names() {
    let probe = |containers: Value, pid: Option<i32>| {
        let mut spec = xdp_spec();
        let mut uprobe = json!({"target": "/bin/app", "symbol": "serve", "containers": containers});
        if let Some(pid) = pid {
            uprobe["pid"] = json!(pid);
        }
        spec["programs"][0] = json!({"name": "p", "type": "Uprobe", "uprobe": uprobe});
        spec
    };
    let ok = probe(json!({"namespace": "shop", "containerNames": ["app"]}), None);
    apiserver::admit(&BpfProgram::crd(), &manifest(ok.clone())).expect("schema accepts it");
    validate_spec(&serde_json::from_value(ok).unwrap()).expect("Rust accepts it");
    rejected(
        probe(json!({"namespace": "shop"}), Some(42)),
        "pid is a process id on the node",
        "pid is a process id on the node",
    );
    rejected(
        probe(json!({"namespace": "shop", "containerNames": ["App_1"]}), None),
        "containerNames[0]",
        "\"App_1\" is not a container name",
    );
    rejected(probe(json!({"namespace": "Shop"}), None), "namespace", "\"Shop\" is not a namespace name");
}

#[test]
fn a_namespaced_program_attaches_inside_pods_only_and_never_reads_the_node() {
    let tenant = |spec: Value| {
        json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNamespacedProgram",
               "metadata": {"name": "t", "namespace": "team-a"}, "spec": spec})
    };
    let in_pods = json!({
        "bytecode": {"configMap": {"name": "b", "namespace": "team-a", "key": "x.o"}},
        "programs": [{"name": "count", "type": "XDP", "xdp": {"pods": {"namespace": "team-a"}}}]
    });
    apiserver::admit(&crds::tenant::crd(), &tenant(in_pods.clone())).expect("inside its pods: admitted");
    let refused = |spec: Value, message: &str| {
        let errs = apiserver::admit(&crds::tenant::crd(), &tenant(spec)).expect_err("admitted");
        assert!(errs.iter().any(|e| e.contains(message)), "{errs:#?} lacks {message:?}");
    };
    let mut on_node = in_pods.clone();
    on_node["programs"][0]["xdp"] = json!({"interfaces": ["eth0"]});
    refused(on_node, "every program must be XDP with xdp.pods or TC with tc.pods");
    let mut tracing = in_pods.clone();
    tracing["programs"][0] =
        json!({"name": "t", "type": "Tracepoint", "tracepoint": {"names": ["syscalls/sys_enter_openat"]}});
    refused(tracing, "every program must be XDP with xdp.pods or TC with tc.pods");
    let mut path = in_pods;
    path["bytecode"] = json!({"path": "/opt/x.o"});
    refused(path, "bytecode.path reads a file of the node");
}

#[test]
fn unknown_type_is_rejected() {
    let mut spec = xdp_spec();
    spec["programs"][0]["type"] = json!("Xdp");
    rejected(spec, "Unsupported value: \"Xdp\"", "unknown variant `Xdp`");
}

/// Where a CEL rule sits, every string, list and map it can read (its own node and
/// everything below it) and every list or map above it must be bounded: Kubernetes
/// estimates a rule's cost from these bounds before it accepts a CRD, and versions
/// from 1.24 on refuse rules over unbounded fields (an `enum` does not bound a string
/// for that estimate: only `maxLength` does).
#[test]
fn validation_rules_read_only_bounded_fields() {
    fn unbounded(n: &Value, path: &str, out: &mut Vec<String>) {
        match n.get("type").and_then(Value::as_str) {
            Some("string") if n.get("maxLength").is_none() => out.push(format!("{path}: string without maxLength")),
            Some("array") if n.get("maxItems").is_none() => out.push(format!("{path}: list without maxItems")),
            Some("object")
                if n.get("additionalProperties").is_some_and(Value::is_object) && n.get("maxProperties").is_none() =>
            {
                out.push(format!("{path}: map without maxProperties"))
            }
            _ => {}
        }
    }
    fn below(n: &Value, path: &str, out: &mut Vec<String>) {
        unbounded(n, path, out);
        for (k, v) in n.get("properties").and_then(Value::as_object).into_iter().flatten() {
            below(v, &format!("{path}.{k}"), out);
        }
        if let Some(v) = n.get("items").filter(|v| v.is_object()) {
            below(v, &format!("{path}[]"), out);
        }
        if let Some(v) = n.get("additionalProperties").filter(|v| v.is_object()) {
            below(v, &format!("{path}{{}}"), out);
        }
    }
    // `above`: the lists and maps that contain this node (they multiply a rule's cost).
    fn walk(n: &Value, path: &str, above: &[(String, Value)], out: &mut Vec<String>, rules: &mut usize) {
        if n.get("x-kubernetes-validations").and_then(Value::as_array).is_some_and(|r| !r.is_empty()) {
            *rules += 1;
            let mut found = Vec::new();
            below(n, path, &mut found);
            for (p, a) in above {
                unbounded(a, p, &mut found);
            }
            out.extend(found.into_iter().map(|f| format!("rule at {path}: {f}")));
        }
        for (k, v) in n.get("properties").and_then(Value::as_object).into_iter().flatten() {
            walk(v, &format!("{path}.{k}"), above, out, rules);
        }
        for (key, suffix) in [("items", "[]"), ("additionalProperties", "{}")] {
            if let Some(v) = n.get(key).filter(|v| v.is_object()) {
                let mut a = above.to_vec();
                a.push((path.to_string(), n.clone()));
                walk(v, &format!("{path}{suffix}"), &a, out, rules);
            }
        }
    }
    for crd in [BpfProgram::crd(), crds::tenant::crd(), BpfNode::crd()] {
        let schema =
            serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap())
                .unwrap();
        let (mut problems, mut rules) = (Vec::new(), 0);
        walk(&schema, "", &[], &mut problems, &mut rules);
        assert!(problems.is_empty(), "{}: {problems:#?}", crd.spec.names.kind);
        if crd.spec.names.kind == "BpfProgram" {
            assert!(rules >= 5, "the walk found only {rules} nodes with rules");
        }
    }
    // The check itself catches what a v1.24 apiserver refused: an enum string under a list.
    let bad = json!({"type": "object", "properties": {"programs": {"type": "array", "maxItems": 64, "items": {
        "type": "object", "x-kubernetes-validations": [{"rule": "has(self.xdp) == (self.type == 'XDP')"}],
        "properties": {"type": {"type": "string", "enum": ["XDP", "TC"]}, "xdp": {"type": "object"}}}}}});
    let (mut problems, mut rules) = (Vec::new(), 0);
    walk(&bad, "", &[], &mut problems, &mut rules);
    assert_eq!(problems, ["rule at .programs[]: .programs[].type: string without maxLength"]);
}
