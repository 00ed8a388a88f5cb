//! `BpfNamespacedProgram`: a tenant's BpfProgram. Loading kernel code is node-root power,
//! which is why `BpfProgram` is cluster-scoped; this namespaced kind is what a platform
//! team can hand to a team instead: its programs attach only inside the pods of its own
//! namespace (XDP and TC in the pods' network namespaces) and its bytecode comes only from
//! an image, inline, or a ConfigMap of its own namespace. Nothing it says reaches the
//! node's interfaces, kernel functions, tracepoints, files or another namespace.
//!
//! Uprobes are not offered: a uprobe is set on a file's inode, and fires in every process
//! that maps the file, in any pod of any namespace sharing the image layer.
//!
//! The operator runs one as a cluster-scoped BpfProgram it owns (its *mirror*, named by
//! [`mirror_name`], labelled with the tenant's namespace, name and uid), copying the
//! mirror's status back. The rules are checked three times: by the CRD's schema (what a
//! rule can see without the object's namespace), by the admission policy or webhook (the
//! rest, at `kubectl apply`), and by the operator before it writes a mirror.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, ValidationRule,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::program::{BpfProgramSpec, BpfProgramStatus, ProgramSpec, ProgramType};
use crate::revision::Sha256Digest;

/// Label on a mirror: the namespace of the BpfNamespacedProgram it runs.
pub const LABEL_TENANT_NAMESPACE: &str = "bpfleet.dev/tenant-namespace";
/// Label on a mirror: the BpfNamespacedProgram's name (when it fits a label value).
pub const LABEL_TENANT_NAME: &str = "bpfleet.dev/tenant-name";
/// Label on a mirror: the BpfNamespacedProgram's uid; a BpfProgram whose label names
/// another uid is not that program's mirror, and is never taken over.
pub const LABEL_TENANT_UID: &str = "bpfleet.dev/tenant-uid";
/// Annotation on a mirror: `<namespace>/<name>` of the BpfNamespacedProgram it runs.
pub const ANNOTATION_TENANT: &str = "bpfleet.dev/tenant";
/// Annotation on a mirror: the BpfNamespacedProgram's `metadata.generation` its spec is.
pub const ANNOTATION_TENANT_GENERATION: &str = "bpfleet.dev/tenant-generation";
/// Finalizer on a BpfNamespacedProgram: its mirror is removed before it goes.
pub const TENANT_FINALIZER: &str = "bpfleet.dev/mirror";

/// What a BpfNamespacedProgram says: a BpfProgram's spec, held to this kind's rules:
/// XDP and TC inside the pods of its own namespace only, bytecode from an image, inline,
/// or a ConfigMap of its own namespace (no `path`, no `image.pullSecret`, no Prometheus
/// gate).
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bpfleet.dev",
    version = "v1alpha1",
    kind = "BpfNamespacedProgram",
    plural = "bpfnamespacedprograms",
    shortname = "bpfnsprog",
    namespaced,
    doc = "A tenant's eBPF programs: XDP and TC inside the pods of its own namespace, bytecode from an image, inline, or a ConfigMap of its own namespace. Run by the operator as a cluster-scoped BpfProgram it owns.",
    status = "BpfProgramStatus",
    printcolumn = r#"{"name":"Target Pods","type":"integer","jsonPath":".status.targetPods"}"#,
    printcolumn = r#"{"name":"Ready Pods","type":"integer","jsonPath":".status.readyPods"}"#,
    printcolumn = r#"{"name":"Failed Pods","type":"integer","jsonPath":".status.failedPods"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","priority":1,"jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct BpfNamespacedProgramSpec {
    /// As a BpfProgram's spec, within this kind's rules.
    #[serde(flatten)]
    pub program: BpfProgramSpec,
}

/// The rules the schema checks, each on the field it reads (a rule on `spec` would be
/// charged for every field below it, `nodeSelector` unbounded among them).
const RULES: [(&str, &str, &str); 2] = [
    (
        "bytecode",
        "!has(self.path)",
        "a namespaced program's bytecode is an image, inline, or a ConfigMap of its own namespace: bytecode.path \
         reads a file of the node",
    ),
    (
        "programs",
        "self.all(p, (p.type == 'XDP' && has(p.xdp) && has(p.xdp.pods)) || (p.type == 'TC' && has(p.tc) && \
         has(p.tc.pods)))",
        "a namespaced program attaches only inside its namespace's pods: every program must be XDP with xdp.pods \
         or TC with tc.pods",
    ),
];

/// The CustomResourceDefinition, with the rules of this kind.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = BpfNamespacedProgram::crd();
    for v in &mut crd.spec.versions {
        let spec = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .and_then(|s| s.properties.as_mut())
            .expect("the generated schema has spec properties");
        for (field, rule, message) in RULES {
            let props: &mut JSONSchemaProps = spec.get_mut(field).expect("spec has the field");
            props.x_kubernetes_validations.get_or_insert_default().push(ValidationRule {
                rule: rule.to_string(),
                message: Some(message.to_string()),
                ..Default::default()
            });
        }
    }
    crd
}

/// Why `spec`, written in `namespace`, is not a namespaced program's: one line each, with
/// the field and what to write instead. Empty when it is one.
pub fn tenant_problems(spec: &BpfProgramSpec, namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = &spec.bytecode;
    if b.path.is_some() {
        out.push(format!(
            "bytecode.path reads a file of the node: a namespaced program's bytecode is an image, inline, or a \
             ConfigMap of namespace {namespace}"
        ));
    }
    if let Some(cm) = &b.config_map
        && cm.namespace != namespace
    {
        out.push(format!(
            "bytecode.configMap.namespace is {:?}: a namespaced program reads ConfigMaps of its own namespace \
             ({namespace}) only",
            cm.namespace
        ));
    }
    if b.image.as_ref().is_some_and(|i| i.pull_secret.is_some()) {
        out.push(
            "bytecode.image.pullSecret names a Secret of the operator's namespace: a namespaced program pulls public \
             images or ones the cluster's nodes may pull"
                .to_string(),
        );
    }
    if let Some(i) = spec.maps.iter().position(|m| m.from.is_some()) {
        out.push(format!(
            "maps[{i}].from uses a map of another BpfProgram, which may be another team's: a namespaced program \
             has maps of its own only"
        ));
    }
    if spec.rollout.as_ref().and_then(|r| r.health.as_ref()).is_some_and(|h| h.prometheus.is_some()) {
        out.push(
            "rollout.health.prometheus queries the cluster's Prometheus, beyond the namespace: a namespaced \
             program's gates are minReadySeconds, mustRun and maps"
                .to_string(),
        );
    }
    for (i, p) in spec.programs.iter().enumerate() {
        if let Some(problem) = program_problem(p, namespace) {
            out.push(format!("programs[{i}] ({}): {problem}", p.name));
        }
    }
    out
}

fn program_problem(p: &ProgramSpec, namespace: &str) -> Option<String> {
    let pods = match p.program_type {
        ProgramType::Xdp => p.xdp.as_ref().and_then(|a| a.pods.as_ref()).map(|t| ("xdp", &t.namespace)),
        ProgramType::Tc => p.tc.as_ref().and_then(|a| a.pods.as_ref()).map(|t| ("tc", &t.namespace)),
        ProgramType::Uprobe | ProgramType::Uretprobe => {
            return Some(format!(
                "{} programs are not a namespaced program's: a uprobe is set on a file and fires in every \
                 process that maps it, in any namespace sharing the image layer (ask a cluster admin for a \
                 BpfProgram)",
                p.program_type.as_str()
            ));
        }
        other => {
            return Some(format!(
                "{} programs attach on the node, outside namespace {namespace}'s pods: a namespaced program is \
                 XDP with xdp.pods or TC with tc.pods",
                other.as_str()
            ));
        }
    };
    match pods {
        None => Some(format!(
            "attaches to the node's interfaces: a namespaced program attaches inside its namespace's pods \
             ({}.pods with namespace {namespace})",
            p.program_type.block_field()
        )),
        Some((block, ns)) if ns != namespace => Some(format!(
            "{block}.pods.namespace is {ns:?}: a namespaced program attaches in the pods of its own namespace \
             ({namespace}) only"
        )),
        Some(_) => None,
    }
}

/// The cluster-scoped BpfProgram that runs `namespace/name`: `<namespace>.<name>`, a DNS
/// subdomain as both parts are; longer than a name may be, cut and made unique by a hash
/// of the whole.
pub fn mirror_name(namespace: &str, name: &str) -> String {
    const MAX: usize = 253;
    let whole = format!("{namespace}.{name}");
    if whole.len() <= MAX {
        return whole;
    }
    let digest = Sha256Digest::of(whole.as_bytes());
    let hash = &digest.as_str()[Sha256Digest::PREFIX.len()..][..10];
    let keep = MAX - hash.len() - 1;
    let mut cut = whole[..keep].trim_end_matches(['.', '-']).to_string();
    cut.push('-');
    cut.push_str(hash);
    cut
}

/// A mirror's labels: whose it is.
pub fn mirror_labels(namespace: &str, name: &str, uid: &str) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::from([
        (LABEL_TENANT_NAMESPACE.to_string(), namespace.to_string()),
        (LABEL_TENANT_UID.to_string(), uid.to_string()),
    ]);
    if name.len() <= 63 {
        labels.insert(LABEL_TENANT_NAME.to_string(), name.to_string());
    }
    labels
}

/// The tenant a BpfProgram's labels say it mirrors: (namespace, uid).
pub fn tenant_of(labels: &std::collections::BTreeMap<String, String>) -> Option<(&str, &str)> {
    Some((labels.get(LABEL_TENANT_NAMESPACE)?.as_str(), labels.get(LABEL_TENANT_UID)?.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BpfProgramSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn only_programs_inside_the_own_namespace_s_pods_from_its_own_sources() {
        let ok = spec(
            r#"
bytecode: {configMap: {name: b, namespace: team-a, key: x.o}}
programs:
  - {name: count, type: XDP, xdp: {pods: {namespace: team-a, selector: {matchLabels: {app: web}}}}}
  - {name: shape, type: TC, tc: {direction: Egress, pods: {namespace: team-a}}}
"#,
        );
        assert!(tenant_problems(&ok, "team-a").is_empty());
        let moved = tenant_problems(&ok, "team-b");
        assert_eq!(moved.len(), 3, "{moved:#?}");
        assert!(moved[0].contains("bytecode.configMap.namespace is \"team-a\""), "{}", moved[0]);
        assert!(moved[1].starts_with("programs[0] (count): xdp.pods.namespace is \"team-a\""), "{}", moved[1]);
        let node = spec(
            r#"
bytecode: {path: /opt/x.o}
programs:
  - {name: count, type: XDP, xdp: {interfaces: [eth0]}}
  - {name: open, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_openat]}}
  - {name: probe, type: Uprobe, uprobe: {target: /bin/app, symbol: f, containers: {namespace: team-a}}}
"#,
        );
        let p = tenant_problems(&node, "team-a");
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("bytecode.path reads a file of the node"), "{}", p[0]);
        assert!(p[1].contains("attaches to the node's interfaces"), "{}", p[1]);
        assert!(p[2].contains("Tracepoint programs attach on the node"), "{}", p[2]);
        assert!(p[3].contains("a uprobe is set on a file"), "{}", p[3]);
    }

    #[test]
    fn mirrors_are_named_after_their_program_and_stay_names() {
        assert_eq!(mirror_name("team-a", "web-xdp"), "team-a.web-xdp");
        let long = mirror_name("team-a", &"x".repeat(250));
        assert_eq!(long.len(), 253);
        assert_ne!(long, mirror_name("team-a", &format!("{}y", "x".repeat(249))), "cut names stay apart");
        let labels = mirror_labels("team-a", "web-xdp", "u-1");
        assert_eq!(tenant_of(&labels), Some(("team-a", "u-1")));
        assert!(!mirror_labels("team-a", &"x".repeat(64), "u").contains_key(LABEL_TENANT_NAME));
    }
}
