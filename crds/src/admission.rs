//! `BpfAdmissionPolicy`: who may write which BpfPrograms.
//!
//! Writing a BpfProgram is root on every node it selects. A cluster admin lists *grants*:
//! each names requesters (users, groups, service accounts) and what they may write
//! (program types, bytecode sources, hook prefixes, whether a node selector must be set,
//! whether control-plane nodes may be selected). A create, or an update that changes the
//! spec, is admitted when at least one grant naming the requester allows all of it; a
//! requester no grant names is refused.
//!
//! The chart enforces the one policy named [`POLICY_NAME`] twice over, with the same
//! meaning: a ValidatingAdmissionPolicy whose CEL reads it as its parameter (clusters that
//! serve `admissionregistration.k8s.io/v1`), or the operator's validating webhook, which
//! calls [`review`] (older clusters). `crds/tests/admission.rs` runs one table of cases
//! through both.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::program::{BpfProgramSpec, ProgramSpec};

/// The name of the policy object both enforcers read.
pub const POLICY_NAME: &str = "default";
/// The node label whose absence a selector must require unless a grant allows control-plane nodes.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// Bytecode source names as grants list them (the fields of `spec.bytecode`).
pub const SOURCES: [&str; 4] = ["image", "configMap", "inline", "path"];

/// Who may write which BpfPrograms. The operator and the chart's admission policy read
/// the object named `default`; others are ignored.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "bpfleet.dev",
    version = "v1alpha1",
    kind = "BpfAdmissionPolicy",
    plural = "bpfadmissionpolicies",
    doc = "Who may create or change BpfPrograms, and which: grants by user, group or service account. Only the object named default is enforced.",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BpfAdmissionPolicySpec {
    /// A create, or an update that changes a BpfProgram's spec, is admitted when at least
    /// one grant that names the requester allows all of it. Nobody is named: every write
    /// is refused.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub grants: Vec<Grant>,
}

/// Who (any of users, groups, serviceAccounts) may write what.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Names this grant in refusals.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// User names, exactly as the API server authenticates them.
    #[serde(default)]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 253}))]
    pub users: Vec<String>,
    /// Groups, e.g. `system:masters` or an identity provider's group.
    #[serde(default)]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 253}))]
    pub groups: Vec<String>,
    /// Service accounts: a namespace and a name, or a namespace alone for all of its
    /// service accounts (e.g. Argo CD's application controller).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub service_accounts: Vec<ServiceAccountRef>,
    /// Program types allowed (`XDP`, `TC`, `Tracepoint`, ...), or `*` for all.
    #[serde(default)]
    #[schemars(length(max = 13), extend("items" = {"type": "string", "maxLength": 16}))]
    pub program_types: Vec<String>,
    /// Bytecode sources allowed: `image`, `configMap`, `inline`, `path`, or `*` for all.
    /// Signed images only: `[image]` with the operator's signature policy set
    /// (`operator.images.signatureKeysSecret`).
    #[serde(default)]
    #[schemars(length(max = 5), extend("items" = {"type": "string", "maxLength": 16}))]
    pub sources: Vec<String>,
    /// Hooks allowed, as prefixes of what programs name; a kind left out allows any.
    #[serde(default)]
    pub hooks: HookPrefixes,
    /// The program's nodeSelector must not be empty (an empty selector selects every node).
    #[serde(default)]
    pub require_node_selector: bool,
    /// Programs may select control-plane nodes. When false, the nodeSelector must hold
    /// `{key: node-role.kubernetes.io/control-plane, operator: DoesNotExist}`.
    #[serde(default)]
    pub allow_control_plane: bool,
}

/// A service account, or all of a namespace's when `name` is left out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
}

/// Allowed hooks by kind, each a list of prefixes (an empty list allows none). Prefixes
/// compare text: `agent.allowedPathPrefixes` bounds where paths resolve on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HookPrefixes {
    /// Network interfaces of XDP and TC programs, e.g. `eth`: the node's, and those inside
    /// pods (`xdp.pods.interfaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 256}))]
    pub interfaces: Option<Vec<String>>,
    /// Namespaces whose pods programs may attach inside (`xdp.pods.namespace`,
    /// `tc.pods.namespace`, `uprobe.containers.namespace`), each named whole (not a
    /// prefix, unlike the other hooks), e.g. `team-a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 63}))]
    pub pod_namespaces: Option<Vec<String>>,
    /// Tracepoints (`category/name`), e.g. `syscalls/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 256}))]
    pub tracepoints: Option<Vec<String>>,
    /// Raw tracepoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 256}))]
    pub raw_tracepoints: Option<Vec<String>>,
    /// Kernel functions of Fentry, Fexit, Kprobe and Kretprobe programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 256}))]
    pub functions: Option<Vec<String>>,
    /// Binaries of Uprobe and Uretprobe programs, e.g. `/usr/lib/` (paths inside the
    /// container for programs with `containers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 4096}))]
    pub uprobe_targets: Option<Vec<String>>,
    /// Cgroup directories of CgroupSkb programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 4096}))]
    pub cgroup_paths: Option<Vec<String>>,
    /// LSM hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("items" = {"type": "string", "maxLength": 64}))]
    pub lsm_hooks: Option<Vec<String>>,
}

/// The requester, as the API server authenticated it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    pub username: String,
    pub groups: Vec<String>,
}

/// What a write asks for. `old` is the stored spec of an update; `namespace` is set for a
/// BpfNamespacedProgram (a BpfProgram has none).
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    pub spec: &'a BpfProgramSpec,
    pub old: Option<&'a BpfProgramSpec>,
    pub namespace: Option<&'a str>,
}

/// Decides a write. `Err` carries the message the user sees at `kubectl apply`. The checks
/// run in the order of the admission policy's validations, and each refusal reads the same.
pub fn review(policy: &BpfAdmissionPolicySpec, who: &Requester, write: Write<'_>) -> Result<(), String> {
    if write.old.is_some_and(|old| old == write.spec) {
        return Ok(());
    }
    let grants: Vec<&Grant> = policy.grants.iter().filter(|g| g.names(who)).collect();
    let spec = write.spec;
    if grants.is_empty() {
        return Err(format!(
            "{} is named by no grant of BpfAdmissionPolicy {POLICY_NAME} (users, groups, serviceAccounts): \
             writing a BpfProgram is root on its nodes; ask a cluster admin for a grant",
            who.username
        ));
    }
    let names = || grants.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ");
    if !grants.iter().any(|g| g.allows_types(spec)) {
        let p = spec.programs.iter().find(|p| !grants.iter().any(|g| g.allows_type(p))).unwrap_or(&spec.programs[0]);
        return Err(format!(
            "program {} has type {}, which no grant of {} allows (grants: {}; programTypes)",
            p.name,
            p.program_type,
            who.username,
            names()
        ));
    }
    if !grants.iter().any(|g| g.allows_source(spec)) {
        return Err(format!(
            "bytecode source {} is not allowed for {} (grants: {}; sources)",
            source(spec),
            who.username,
            names()
        ));
    }
    if !grants.iter().any(|g| g.allows_hooks(spec)) {
        let p =
            spec.programs.iter().find(|p| !grants.iter().any(|g| g.allows_hooks_of(p))).unwrap_or(&spec.programs[0]);
        return Err(format!(
            "program {} attaches to a hook outside the prefixes {}'s grants allow (grants: {}; hooks)",
            p.name,
            who.username,
            names()
        ));
    }
    if !grants.iter().any(|g| g.allows_selector(spec)) {
        return Err(format!(
            "nodeSelector is empty, which selects every node; {}'s grants require one (grants: {}; requireNodeSelector)",
            who.username,
            names()
        ));
    }
    if !grants.iter().any(|g| g.allows_control_plane_choice(spec)) {
        return Err(format!(
            "nodeSelector must exclude control-plane nodes with {{key: {CONTROL_PLANE_LABEL}, operator: DoesNotExist}} \
             ({}'s grants: {}; allowControlPlane)",
            who.username,
            names()
        ));
    }
    if !grants.iter().any(|g| g.allows(spec)) {
        return Err(format!(
            "no single grant of {} allows all of this program (each check passes under a different grant: {})",
            who.username,
            names()
        ));
    }
    match write.namespace {
        Some(ns) => own_namespace_only(spec, ns),
        None => Ok(()),
    }
}

/// A BpfNamespacedProgram of `ns` reads its own namespace's ConfigMaps and attaches in its
/// own namespace's pods, nothing else (the schema refuses the rest: `crds::tenant`).
fn own_namespace_only(spec: &BpfProgramSpec, ns: &str) -> Result<(), String> {
    if let Some(cm) = &spec.bytecode.config_map
        && cm.namespace != ns
    {
        return Err(format!(
            "a BpfNamespacedProgram reads ConfigMaps of its own namespace only: bytecode.configMap.namespace is {}, \
             not {ns}",
            cm.namespace
        ));
    }
    let inside = |p: &ProgramSpec| {
        let pods = p.xdp.as_ref().and_then(|a| a.pods.as_ref()).or(p.tc.as_ref().and_then(|a| a.pods.as_ref()));
        pods.is_some_and(|t| t.namespace == ns)
    };
    if spec.bytecode.image.as_ref().is_some_and(|i| i.pull_secret.is_some())
        || spec.rollout.as_ref().and_then(|r| r.health.as_ref()).is_some_and(|h| h.prometheus.is_some())
    {
        return Err(format!(
            "a BpfNamespacedProgram reaches nothing beyond namespace {ns}: no bytecode.image.pullSecret (a Secret of \
             the operator's namespace), no rollout.health.prometheus (the cluster's metrics)"
        ));
    }
    if let Some(p) = spec.programs.iter().find(|p| !inside(p)) {
        return Err(format!(
            "program {} of a BpfNamespacedProgram attaches outside the pods of its namespace: each program is XDP \
             with xdp.pods or TC with tc.pods, their namespace {ns}",
            p.name
        ));
    }
    Ok(())
}

/// The name of the bytecode source a spec uses, as grants list it.
pub fn source(spec: &BpfProgramSpec) -> &'static str {
    let b = &spec.bytecode;
    if b.image.is_some() {
        "image"
    } else if b.config_map.is_some() {
        "configMap"
    } else if b.inline.is_some() {
        "inline"
    } else if b.path.is_some() {
        "path"
    } else {
        ""
    }
}

impl Grant {
    /// Whether the grant names the requester.
    pub fn names(&self, who: &Requester) -> bool {
        self.users.contains(&who.username)
            || who.groups.iter().any(|g| self.groups.contains(g))
            || self.service_accounts.iter().any(|sa| match &sa.name {
                Some(name) => who.username == format!("system:serviceaccount:{}:{name}", sa.namespace),
                None => who.groups.contains(&format!("system:serviceaccounts:{}", sa.namespace)),
            })
    }

    fn allows_type(&self, p: &ProgramSpec) -> bool {
        self.program_types.iter().any(|t| t == "*" || t == p.program_type.as_str())
    }

    fn allows_types(&self, spec: &BpfProgramSpec) -> bool {
        spec.programs.iter().all(|p| self.allows_type(p))
    }

    fn allows_source(&self, spec: &BpfProgramSpec) -> bool {
        let s = source(spec);
        self.sources.iter().any(|x| x == "*" || x == s)
    }

    fn allows_hooks(&self, spec: &BpfProgramSpec) -> bool {
        spec.programs.iter().all(|p| self.allows_hooks_of(p))
    }

    fn allows_hooks_of(&self, p: &ProgramSpec) -> bool {
        let h = &self.hooks;
        let all = |allowed: &Option<Vec<String>>, names: &[String]| match allowed {
            None => true,
            Some(prefixes) => names.iter().all(|n| prefixes.iter().any(|x| n.starts_with(x.as_str()))),
        };
        let one = |allowed: &Option<Vec<String>>, name: &String| all(allowed, std::slice::from_ref(name));
        // Namespaces are named whole: `team-a` is not `team-ab`.
        let namespace = |ns: &String| h.pod_namespaces.as_ref().is_none_or(|allowed| allowed.contains(ns));
        let pods = |pods: Option<&crate::program::PodInterfaces>| {
            pods.is_none_or(|x| all(&h.interfaces, &x.interfaces) && namespace(&x.namespace))
        };
        p.xdp.as_ref().is_none_or(|a| all(&h.interfaces, &a.interfaces) && pods(a.pods.as_ref()))
            && p.tc.as_ref().is_none_or(|a| all(&h.interfaces, &a.interfaces) && pods(a.pods.as_ref()))
            && p.tracepoint.as_ref().is_none_or(|a| all(&h.tracepoints, &a.names))
            && p.raw_tracepoint.as_ref().is_none_or(|a| all(&h.raw_tracepoints, &a.names))
            && p.fentry.as_ref().is_none_or(|a| one(&h.functions, &a.function))
            && p.fexit.as_ref().is_none_or(|a| one(&h.functions, &a.function))
            && p.kprobe.as_ref().is_none_or(|a| one(&h.functions, &a.function))
            && p.kretprobe.as_ref().is_none_or(|a| one(&h.functions, &a.function))
            && [&p.uprobe, &p.uretprobe].into_iter().flatten().all(|a| {
                one(&h.uprobe_targets, &a.target) && a.containers.as_ref().is_none_or(|c| namespace(&c.namespace))
            })
            && p.cgroup_skb.as_ref().is_none_or(|a| one(&h.cgroup_paths, &a.cgroup_path))
            && p.lsm.as_ref().is_none_or(|a| one(&h.lsm_hooks, &a.hook))
    }

    fn allows_selector(&self, spec: &BpfProgramSpec) -> bool {
        !self.require_node_selector || !selector_is_empty(&spec.node_selector)
    }

    fn allows_control_plane_choice(&self, spec: &BpfProgramSpec) -> bool {
        self.allow_control_plane || excludes_control_plane(&spec.node_selector)
    }

    /// Every check under this one grant.
    pub fn allows(&self, spec: &BpfProgramSpec) -> bool {
        self.allows_types(spec)
            && self.allows_source(spec)
            && self.allows_hooks(spec)
            && self.allows_selector(spec)
            && self.allows_control_plane_choice(spec)
    }
}

fn selector_is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(|m| m.is_empty()) && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// Whether a selector requires the control-plane label to be absent.
pub fn excludes_control_plane(s: &LabelSelector) -> bool {
    s.match_expressions.iter().flatten().any(|e| e.key == CONTROL_PLANE_LABEL && e.operator == "DoesNotExist")
}

/// The CEL of the chart's ValidatingAdmissionPolicy, generated here so that its hook
/// checks are written once and a test can hold it to [`review`]. `crdgen` writes it to
/// `charts/bpfleet/files/admission-policy.yaml`; the chart wraps it in the policy object.
pub mod cel {
    use serde_json::{Value, json};

    use super::{CONTROL_PLANE_LABEL, POLICY_NAME};

    /// `(hook kind in grant.hooks, attach block, field, whether it is a list)`; a field is a
    /// dotted path inside the block, each part optional.
    const HOOKS: [(&str, &str, &str, bool); 18] = [
        ("interfaces", "xdp", "interfaces", true),
        ("interfaces", "tc", "interfaces", true),
        ("interfaces", "xdp", "pods.interfaces", true),
        ("interfaces", "tc", "pods.interfaces", true),
        ("podNamespaces", "xdp", "pods.namespace", false),
        ("podNamespaces", "tc", "pods.namespace", false),
        ("podNamespaces", "uprobe", "containers.namespace", false),
        ("podNamespaces", "uretprobe", "containers.namespace", false),
        ("tracepoints", "tracepoint", "names", true),
        ("rawTracepoints", "rawTracepoint", "names", true),
        ("functions", "fentry", "function", false),
        ("functions", "fexit", "function", false),
        ("functions", "kprobe", "function", false),
        ("functions", "kretprobe", "function", false),
        ("uprobeTargets", "uprobe", "target", false),
        ("uprobeTargets", "uretprobe", "target", false),
        ("cgroupPaths", "cgroupSkb", "cgroupPath", false),
        ("lsmHooks", "lsm", "hook", false),
    ];

    /// Program `p`'s hooks all fall under grant `g`'s prefixes.
    fn hooks_of(p: &str, g: &str) -> String {
        HOOKS
            .iter()
            .map(|(kind, block, field, list)| {
                let unrestricted = format!("!(has({g}.hooks) && has({g}.hooks.{kind}))");
                let within = if *list {
                    format!("{p}.{block}.{field}.all(n, {g}.hooks.{kind}.exists(x, n.startsWith(x)))")
                } else if *kind == "podNamespaces" {
                    format!("{p}.{block}.{field} in {g}.hooks.{kind}")
                } else {
                    format!("{g}.hooks.{kind}.exists(x, {p}.{block}.{field}.startsWith(x))")
                };
                // Absent at any level (the block, `pods`, a list left out): nothing to judge.
                let mut absent = vec![format!("!has({p}.{block})")];
                let mut path = format!("{p}.{block}");
                for part in field.split('.') {
                    path = format!("{path}.{part}");
                    absent.push(format!("!has({path})"));
                }
                format!("({} || {unrestricted} || {within})", absent.join(" || "))
            })
            .collect::<Vec<_>>()
            .join(" && ")
    }

    fn type_of(p: &str, g: &str) -> String {
        format!("{g}.programTypes.exists(t, t == '*' || t == {p}.type)")
    }

    /// The first program no grant allows by `check`, or the first program.
    fn first_misfit(check: &str) -> String {
        format!("(object.spec.programs.filter(p, !variables.grants.exists(g, {check})) + object.spec.programs)[0]")
    }

    /// The policy's `spec` without `paramKind` and `failurePolicy` (the chart sets those).
    pub fn policy_spec() -> Value {
        let names = "request.userInfo.username in g.users \
             || request.userInfo.groups.exists(x, x in g.groups) \
             || g.serviceAccounts.exists(s, has(s.name) \
                 ? request.userInfo.username == 'system:serviceaccount:' + s.namespace + ':' + s.name \
                 : ('system:serviceaccounts:' + s.namespace) in request.userInfo.groups)";
        let source = "has(object.spec.bytecode.image) ? 'image' \
             : has(object.spec.bytecode.configMap) ? 'configMap' \
             : has(object.spec.bytecode.inline) ? 'inline' \
             : has(object.spec.bytecode.path) ? 'path' : ''";
        let sel = "object.spec.nodeSelector";
        let empty_selector = format!(
            "!has({sel}) || ((!has({sel}.matchLabels) || size({sel}.matchLabels) == 0) \
             && (!has({sel}.matchExpressions) || size({sel}.matchExpressions) == 0))"
        );
        let excludes_cp = format!(
            "has({sel}) && has({sel}.matchExpressions) && {sel}.matchExpressions.exists(e, \
             e.key == '{CONTROL_PLANE_LABEL}' && e.operator == 'DoesNotExist')"
        );
        let grant_names = "variables.grants.map(g, g.name).join(', ')";
        let who = "request.userInfo.username";
        let ok = |name: &str, check: String| json!({"name": name, "expression": format!("variables.grants.filter(g, {check}).map(g, g.name)")});
        let inside = "(has(p.xdp) && has(p.xdp.pods) && p.xdp.pods.namespace == variables.namespace) \
             || (has(p.tc) && has(p.tc.pods) && p.tc.pods.namespace == variables.namespace)";
        let misfit_type = first_misfit(&type_of("p", "g"));
        let misfit_hook = first_misfit(&hooks_of("p", "g"));
        json!({
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": [crate::GROUP],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["bpfprograms", "bpfnamespacedprograms"]
                }]
            },
            "matchConditions": [{
                "name": "spec-written",
                "expression": "request.operation == 'CREATE' || oldObject.spec != object.spec"
            }],
            "variables": [
                {"name": "grants", "expression": format!("params.spec.grants.filter(g, {names})")},
                {"name": "source", "expression": source},
                {"name": "emptySelector", "expression": empty_selector},
                {"name": "excludesControlPlane", "expression": excludes_cp},
                {"name": "namespace", "expression": "has(object.metadata) && has(object.metadata.namespace) ? object.metadata.namespace : ''"},
                ok("typesOk", format!("object.spec.programs.all(p, {})", type_of("p", "g"))),
                ok("sourceOk", "g.sources.exists(s, s == '*' || s == variables.source)".to_owned()),
                ok("hooksOk", format!("object.spec.programs.all(p, {})", hooks_of("p", "g"))),
                ok("selectorOk", "!g.requireNodeSelector || !variables.emptySelector".to_owned()),
                ok("controlPlaneOk", "g.allowControlPlane || variables.excludesControlPlane".to_owned()),
            ],
            "validations": [
                {
                    "expression": "size(variables.grants) > 0",
                    "reason": "Forbidden",
                    "messageExpression": format!("{who} + ' is named by no grant of BpfAdmissionPolicy {POLICY_NAME} (users, groups, serviceAccounts): writing a BpfProgram is root on its nodes; ask a cluster admin for a grant'"),
                    "message": "the requester is named by no grant of the bpfleet admission policy"
                },
                {
                    "expression": "size(variables.typesOk) > 0",
                    "reason": "Forbidden",
                    "messageExpression": format!("'program ' + {misfit_type}.name + ' has type ' + {misfit_type}.type + ', which no grant of ' + {who} + ' allows (grants: ' + {grant_names} + '; programTypes)'"),
                    "message": "a program type is not allowed by the requester's grants (programTypes)"
                },
                {
                    "expression": "size(variables.sourceOk) > 0",
                    "reason": "Forbidden",
                    "messageExpression": format!("'bytecode source ' + variables.source + ' is not allowed for ' + {who} + ' (grants: ' + {grant_names} + '; sources)'"),
                    "message": "the bytecode source is not allowed by the requester's grants (sources)"
                },
                {
                    "expression": "size(variables.hooksOk) > 0",
                    "reason": "Forbidden",
                    "messageExpression": format!("'program ' + {misfit_hook}.name + ' attaches to a hook outside the prefixes ' + {who} + '\\'s grants allow (grants: ' + {grant_names} + '; hooks)'"),
                    "message": "a hook is outside the requester's grants (hooks)"
                },
                {
                    "expression": "size(variables.selectorOk) > 0",
                    "reason": "Forbidden",
                    "messageExpression": format!("'nodeSelector is empty, which selects every node; ' + {who} + '\\'s grants require one (grants: ' + {grant_names} + '; requireNodeSelector)'"),
                    "message": "the requester's grants require a nodeSelector (requireNodeSelector)"
                },
                {
                    "expression": "size(variables.controlPlaneOk) > 0",
                    "reason": "Forbidden",
                    "messageExpression": format!("'nodeSelector must exclude control-plane nodes with {{key: {CONTROL_PLANE_LABEL}, operator: DoesNotExist}} (' + {who} + '\\'s grants: ' + {grant_names} + '; allowControlPlane)'"),
                    "message": "the nodeSelector must exclude control-plane nodes (allowControlPlane)"
                },
                {
                    "expression": "variables.grants.exists(g, g.name in variables.typesOk && g.name in variables.sourceOk && g.name in variables.hooksOk && g.name in variables.selectorOk && g.name in variables.controlPlaneOk)",
                    "reason": "Forbidden",
                    "messageExpression": format!("'no single grant of ' + {who} + ' allows all of this program (each check passes under a different grant: ' + {grant_names} + ')'"),
                    "message": "no single grant allows all of this program"
                },
                {
                    "expression": "variables.namespace == '' || !has(object.spec.bytecode.configMap) || object.spec.bytecode.configMap.namespace == variables.namespace",
                    "reason": "Forbidden",
                    "messageExpression": "'a BpfNamespacedProgram reads ConfigMaps of its own namespace only: bytecode.configMap.namespace is ' + object.spec.bytecode.configMap.namespace + ', not ' + variables.namespace",
                    "message": "a BpfNamespacedProgram reads ConfigMaps of its own namespace only"
                },
                {
                    "expression": "variables.namespace == '' || ((!has(object.spec.bytecode.image) || !has(object.spec.bytecode.image.pullSecret)) && (!has(object.spec.rollout) || !has(object.spec.rollout.health) || !has(object.spec.rollout.health.prometheus)))",
                    "reason": "Forbidden",
                    "messageExpression": "'a BpfNamespacedProgram reaches nothing beyond namespace ' + variables.namespace + ': no bytecode.image.pullSecret (a Secret of the operator\\'s namespace), no rollout.health.prometheus (the cluster\\'s metrics)'",
                    "message": "a BpfNamespacedProgram reaches nothing beyond its namespace"
                },
                {
                    "expression": format!("variables.namespace == '' || object.spec.programs.all(p, {inside})"),
                    "reason": "Forbidden",
                    "messageExpression": format!("'program ' + (object.spec.programs.filter(p, !({inside})) + object.spec.programs)[0].name + ' of a BpfNamespacedProgram attaches outside the pods of its namespace: each program is XDP with xdp.pods or TC with tc.pods, their namespace ' + variables.namespace"),
                    "message": "a BpfNamespacedProgram attaches only inside the pods of its own namespace"
                }
            ]
        })
    }
}
