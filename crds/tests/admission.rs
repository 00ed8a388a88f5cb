//! The admission policy's two enforcers agree: the chart's ValidatingAdmissionPolicy CEL
//! (evaluated here with a CEL interpreter, as the API server would) and the operator's
//! webhook ([`crds::admission::review`]) give every case of one table the same verdict
//! and the same message.

use std::path::PathBuf;
use std::sync::Arc;

use cel_interpreter::extractors::This;
use cel_interpreter::{Context, Program, Value as Cel};
use crds::admission::{BpfAdmissionPolicySpec, Requester, Write, review};
use crds::program::BpfProgramSpec;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_policy_cel_is_current() {
    let path = repo().join("charts/bpfleet/files/admission-policy.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == crds::crdgen::render_admission_policy().unwrap(),
        "{} is stale: run `cargo run -p crds --bin crdgen` and commit the result",
        path.display()
    );
}

/// `list.join(separator)`, from the Kubernetes CEL strings library.
fn join(This(list): This<Arc<Vec<Cel>>>, sep: Arc<String>) -> String {
    list.iter()
        .map(|v| match v {
            Cel::String(s) => s.to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(sep.as_str())
}

fn run(expr: &str, ctx: &Context) -> Cel {
    let program = Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
    program.execute(ctx).unwrap_or_else(|e| panic!("{expr}: {e:?}"))
}

/// Evaluates the committed policy file the way the API server does: match conditions,
/// then variables in order, then validations until one fails.
fn cel_verdict(policy: &Value, request: &Value, object: &Value, old: &Value, params: &Value) -> Result<(), String> {
    let mut ctx = Context::default();
    ctx.add_function("join", join);
    ctx.add_variable("request", request.clone()).unwrap();
    ctx.add_variable("object", object.clone()).unwrap();
    ctx.add_variable("oldObject", old.clone()).unwrap();
    ctx.add_variable("params", params.clone()).unwrap();
    for cond in policy["matchConditions"].as_array().unwrap() {
        if run(cond["expression"].as_str().unwrap(), &ctx) != Cel::Bool(true) {
            return Ok(());
        }
    }
    let mut variables = serde_json::Map::new();
    ctx.add_variable("variables", Value::Object(variables.clone())).unwrap();
    for var in policy["variables"].as_array().unwrap() {
        let value = run(var["expression"].as_str().unwrap(), &ctx);
        variables.insert(var["name"].as_str().unwrap().to_owned(), cel_to_json(&value));
        ctx.add_variable("variables", Value::Object(variables.clone())).unwrap();
    }
    for v in policy["validations"].as_array().unwrap() {
        if run(v["expression"].as_str().unwrap(), &ctx) != Cel::Bool(true) {
            assert_eq!(v["reason"], "Forbidden");
            return match run(v["messageExpression"].as_str().unwrap(), &ctx) {
                Cel::String(s) => Err(s.to_string()),
                other => panic!("messageExpression gave {other:?}"),
            };
        }
    }
    Ok(())
}

fn cel_to_json(v: &Cel) -> Value {
    match v {
        Cel::Bool(b) => json!(b),
        Cel::String(s) => json!(s.as_str()),
        Cel::Int(i) => json!(i),
        Cel::UInt(u) => json!(u),
        Cel::Null => Value::Null,
        Cel::List(items) => Value::Array(items.iter().map(cel_to_json).collect()),
        Cel::Map(m) => Value::Object(
            m.map
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        cel_interpreter::objects::Key::String(s) => s.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, cel_to_json(v))
                })
                .collect(),
        ),
        other => panic!("unexpected CEL value {other:?}"),
    }
}

fn spec(yaml: &str) -> BpfProgramSpec {
    serde_yaml::from_str(yaml).unwrap()
}

const XDP_IMAGE: &str = r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}], matchLabels: {pool: edge}}
bytecode: {image: {url: "registry.example/xdp:1"}}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}]
"#;
const XDP_EVERYWHERE: &str = r#"
bytecode: {image: {url: "registry.example/xdp:1"}}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}]
"#;
const XDP_NO_CP_NO_LABELS: &str = r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {image: {url: "registry.example/xdp:1"}}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}]
"#;
const UPROBE_CONFIGMAP: &str = r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {configMap: {name: b, namespace: team-a, key: u.o}}
programs:
  - {name: count_packets, type: XDP, xdp: {interfaces: [eth1]}}
  - {name: on_readline, type: Uprobe, uprobe: {target: /usr/bin/bash, symbol: readline}}
"#;
const TRACEPOINTS_INLINE: &str = r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {inline: "f0VMRg=="}
programs:
  - {name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat, sched/sched_switch]}}
"#;

const POLICY: &str = r#"
grants:
  - {name: admins, groups: ["system:masters"], programTypes: ["*"], sources: ["*"], allowControlPlane: true}
  - name: net-team
    groups: [net]
    programTypes: [XDP, TC]
    sources: [image]
    hooks: {interfaces: [eth]}
    requireNodeSelector: true
  - name: tracing
    serviceAccounts: [{namespace: observability, name: tracer}]
    programTypes: [Tracepoint, Uprobe, XDP]
    sources: [inline, configMap]
    hooks: {tracepoints: ["syscalls/"], uprobeTargets: ["/usr/lib/"], interfaces: []}
  - name: argocd
    serviceAccounts: [{namespace: argocd}]
    programTypes: [Tracepoint]
    sources: [image]
  - name: net-types-only
    users: [split]
    programTypes: [XDP]
    sources: [inline]
  - name: image-only
    users: [split]
    programTypes: [Tracepoint]
    sources: [image]
  - name: team-a-pods
    groups: [team-a]
    programTypes: [XDP, TC, Uprobe]
    sources: [image]
    hooks: {interfaces: [eth], podNamespaces: [team-a], uprobeTargets: [/app/]}
"#;

/// A uprobe on `/app/server` inside the containers of `ns`'s pods.
fn in_containers(ns: &str) -> &'static str {
    let spec = format!(
        "nodeSelector: {{matchExpressions: [{{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}}]}}\n\
         bytecode: {{image: {{url: \"r/x:1\"}}}}\n\
         programs:\n\
         - {{name: count_calls, type: Uprobe, uprobe: {{target: /app/server, symbol: serve, containers: {{namespace: {ns}}}}}}}\n"
    );
    Box::leak(spec.into_boxed_str())
}

/// XDP and TC inside team-a's pods (`ns`), on `ifaces` inside them.
fn in_pods(ns: &str, ifaces: &str) -> &'static str {
    let spec = format!(
        "nodeSelector: {{matchExpressions: [{{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}}]}}\n\
         bytecode: {{image: {{url: \"r/x:1\"}}}}\n\
         programs:\n\
         - {{name: count_packets, type: XDP, xdp: {{pods: {{namespace: {ns}, selector: {{matchLabels: {{app: web}}}}, interfaces: [{ifaces}]}}}}}}\n\
         - {{name: count_tc, type: TC, tc: {{direction: Ingress, pods: {{namespace: {ns}, interfaces: [{ifaces}]}}}}}}\n"
    );
    Box::leak(spec.into_boxed_str())
}

struct Case {
    what: &'static str,
    user: &'static str,
    groups: &'static [&'static str],
    spec: &'static str,
    old: Option<&'static str>,
    /// `None`: admitted; `Some(s)`: refused with a message containing `s`.
    refused: Option<&'static str>,
    /// A BpfNamespacedProgram's namespace (`None`: a BpfProgram).
    namespace: Option<&'static str>,
}

const SA_TRACER: &str = "system:serviceaccount:observability:tracer";

fn cases() -> Vec<Case> {
    let c = |what, user, groups, spec, refused| Case { what, user, groups, spec, old: None, refused, namespace: None };
    let tenant = |what, namespace, spec, refused| Case {
        what,
        user: "bob",
        groups: &["team-a"],
        spec,
        old: None,
        refused,
        namespace: Some(namespace),
    };
    vec![
        c("admin: anything", "kubernetes-admin", &["system:masters"], XDP_EVERYWHERE, None),
        c("admin: uprobe from a ConfigMap", "kubernetes-admin", &["system:masters"], UPROBE_CONFIGMAP, None),
        c("a stranger", "mallory", &["system:authenticated"], XDP_IMAGE, Some("mallory is named by no grant")),
        c("net team: XDP from an image on eth0, selector set", "ann", &["net"], XDP_IMAGE, None),
        c("net team: every node", "ann", &["net"], XDP_EVERYWHERE, Some("nodeSelector is empty")),
        c(
            "net team: control plane not excluded",
            "ann",
            &["net"],
            r#"
nodeSelector: {matchLabels: {pool: edge}}
bytecode: {image: {url: "r/x:1"}}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}]
"#,
            Some("must exclude control-plane nodes"),
        ),
        c(
            "net team: an uprobe",
            "ann",
            &["net"],
            UPROBE_CONFIGMAP,
            Some("program on_readline has type Uprobe, which no grant of ann allows (grants: net-team; programTypes)"),
        ),
        c(
            "net team: inline bytecode",
            "ann",
            &["net"],
            r#"
nodeSelector: {matchLabels: {pool: edge}, matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {inline: "f0VMRg=="}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}]
"#,
            Some("bytecode source inline is not allowed for ann (grants: net-team; sources)"),
        ),
        c(
            "net team: an interface outside eth*",
            "ann",
            &["net"],
            r#"
nodeSelector: {matchLabels: {pool: edge}, matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {image: {url: "r/x:1"}}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0, cni0]}}]
"#,
            Some("program count_packets attaches to a hook outside the prefixes"),
        ),
        c("team a: XDP and TC inside its own pods", "bob", &["team-a"], in_pods("team-a", "eth0"), None),
        c("team a: a uprobe inside its own containers", "bob", &["team-a"], in_containers("team-a"), None),
        c(
            "team a: a uprobe inside team b's containers",
            "bob",
            &["team-a"],
            in_containers("team-b"),
            Some("program count_calls attaches to a hook outside"),
        ),
        c(
            "team a: a namespace its name begins",
            "bob",
            &["team-a"],
            in_containers("team-ab"),
            Some("program count_calls attaches to a hook outside"),
        ),
        c(
            "team a: inside another namespace's pods",
            "bob",
            &["team-a"],
            in_pods("team-b", "eth0"),
            Some("program count_packets attaches to a hook outside the prefixes"),
        ),
        c(
            "team a: an interface outside eth* inside its pods",
            "bob",
            &["team-a"],
            in_pods("team-a", "eth0, lo"),
            Some("program count_packets attaches to a hook outside the prefixes"),
        ),
        c(
            "tracer SA: syscalls tracepoints only",
            SA_TRACER,
            &["system:serviceaccounts", "system:serviceaccounts:observability"],
            TRACEPOINTS_INLINE,
            Some("program count_openat attaches to a hook outside"),
        ),
        c(
            "tracer SA: syscalls tracepoint, inline",
            SA_TRACER,
            &["system:serviceaccounts:observability"],
            r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {inline: "f0VMRg=="}
programs: [{name: count_openat, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}]
"#,
            None,
        ),
        c(
            "tracer SA: an empty interface list allows no interface",
            SA_TRACER,
            &[],
            r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {inline: "f0VMRg=="}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}]
"#,
            Some("attaches to a hook outside"),
        ),
        c(
            "tracer SA: uprobe on /usr/bin",
            SA_TRACER,
            &[],
            UPROBE_CONFIGMAP,
            Some("program count_packets attaches to a hook outside"),
        ),
        c(
            "tracer SA: uprobe under /usr/lib",
            SA_TRACER,
            &[],
            r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {configMap: {name: b, namespace: observability, key: u.o}}
programs: [{name: on_ssl, type: Uprobe, uprobe: {target: /usr/lib/x86_64-linux-gnu/libssl.so.3, symbol: SSL_write}}]
"#,
            None,
        ),
        c(
            "another SA of observability",
            "system:serviceaccount:observability:other",
            &["system:serviceaccounts:observability"],
            TRACEPOINTS_INLINE,
            Some("is named by no grant"),
        ),
        c(
            "any SA of argocd: tracepoint from an image",
            "system:serviceaccount:argocd:argocd-application-controller",
            &["system:serviceaccounts", "system:serviceaccounts:argocd"],
            r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {image: {url: "r/t:1"}}
programs: [{name: count_openat, type: Tracepoint, tracepoint: {names: [sched/sched_switch]}}]
"#,
            None,
        ),
        c(
            "argocd SA on control-plane nodes",
            "system:serviceaccount:argocd:x",
            &["system:serviceaccounts:argocd"],
            r#"
bytecode: {image: {url: "r/t:1"}}
programs: [{name: count_openat, type: Tracepoint, tracepoint: {names: [sched/sched_switch]}}]
"#,
            Some("must exclude control-plane nodes"),
        ),
        c(
            "two grants, each allowing half",
            "split",
            &[],
            r#"
nodeSelector: {matchExpressions: [{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}]}
bytecode: {image: {url: "r/t:1"}}
programs: [{name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}]
"#,
            Some(
                "no single grant of split allows all of this program (each check passes under a different grant: net-types-only, image-only)",
            ),
        ),
        c(
            "a user in two grants: a type neither allows",
            "split",
            &[],
            UPROBE_CONFIGMAP,
            Some("program on_readline has type Uprobe"),
        ),
        c(
            "no control-plane label, selector otherwise empty, for tracer",
            SA_TRACER,
            &[],
            XDP_NO_CP_NO_LABELS,
            Some("bytecode source image is not allowed"),
        ),
        Case {
            what: "a metadata-only update by a stranger (finalizers, labels) is not judged",
            user: "system:serviceaccount:bpfleet-system:bpfleet-operator",
            groups: &[],
            spec: XDP_EVERYWHERE,
            old: Some(XDP_EVERYWHERE),
            refused: None,
            namespace: None,
        },
        Case {
            what: "a spec change by a stranger is",
            user: "mallory",
            groups: &[],
            spec: XDP_EVERYWHERE,
            old: Some(XDP_IMAGE),
            refused: Some("mallory is named by no grant"),
            namespace: None,
        },
        tenant("team a's namespaced program inside its pods", "team-a", in_pods("team-a", "eth0"), None),
        tenant(
            "team a's namespaced program, written in team b's namespace",
            "team-b",
            in_pods("team-a", "eth0"),
            Some("program count_packets of a BpfNamespacedProgram attaches outside the pods of its namespace"),
        ),
        Case {
            user: "kubernetes-admin",
            groups: &["system:masters"],
            ..tenant(
                "even an admin's namespaced program reads its own namespace's ConfigMaps only",
                "team-a",
                r#"
nodeSelector: {}
bytecode: {configMap: {name: b, namespace: team-b, key: x.o}}
programs: [{name: count_packets, type: XDP, xdp: {pods: {namespace: team-a}}}]
"#,
                Some("bytecode.configMap.namespace is team-b, not team-a"),
            )
        },
        Case {
            user: "kubernetes-admin",
            groups: &["system:masters"],
            ..tenant(
                "a namespaced program naming the operator's pull Secret",
                "team-a",
                r#"
nodeSelector: {}
bytecode: {image: {url: "r/x:1", pullSecret: registry-creds}}
programs: [{name: count_packets, type: XDP, xdp: {pods: {namespace: team-a}}}]
"#,
                Some("no bytecode.image.pullSecret"),
            )
        },
    ]
}

#[test]
fn the_policy_cel_and_the_webhook_agree_on_every_case() {
    let file = std::fs::read_to_string(repo().join("charts/bpfleet/files/admission-policy.yaml")).unwrap();
    let policy_cel: Value = serde_yaml::from_str(&file).unwrap();
    let policy: BpfAdmissionPolicySpec = serde_yaml::from_str(POLICY).unwrap();
    let params = json!({"metadata": {"name": "default"}, "spec": serde_json::to_value(&policy).unwrap()});
    let mut failures = Vec::new();
    for case in cases() {
        let new = spec(case.spec);
        let old = case.old.map(spec);
        let who =
            Requester { username: case.user.to_owned(), groups: case.groups.iter().map(|g| g.to_string()).collect() };
        let webhook = review(&policy, &who, Write { spec: &new, old: old.as_ref(), namespace: case.namespace });
        let request = json!({
            "operation": if old.is_some() { "UPDATE" } else { "CREATE" },
            "userInfo": {"username": case.user, "groups": case.groups},
        });
        let object = match case.namespace {
            Some(ns) => json!({"metadata": {"namespace": ns}, "spec": new}),
            None => json!({"spec": new}),
        };
        let old_object = old.as_ref().map_or(Value::Null, |o| json!({"spec": o}));
        let cel = cel_verdict(&policy_cel, &request, &object, &old_object, &params);
        if webhook != cel {
            failures.push(format!("{}: webhook {webhook:?} but policy {cel:?}", case.what));
            continue;
        }
        match (&case.refused, &webhook) {
            (None, Ok(())) => {}
            (Some(want), Err(msg)) if msg.contains(want) => {}
            (want, got) => failures.push(format!("{}: wanted refusal {want:?}, got {got:?}", case.what)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_missing_or_empty_policy_refuses_everyone() {
    let who = Requester { username: "kubernetes-admin".into(), groups: vec!["system:masters".into()] };
    let s = spec(XDP_IMAGE);
    let err =
        review(&BpfAdmissionPolicySpec::default(), &who, Write { spec: &s, old: None, namespace: None }).unwrap_err();
    assert!(err.contains("named by no grant of BpfAdmissionPolicy default"), "{err}");
}
