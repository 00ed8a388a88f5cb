//! Which nodes a BpfProgram selects. Pure: plain data in, plain data out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A node as dialled: its name (the key of cached state) and its InternalIP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub name: String,
    pub ip: IpAddr,
}

/// What the operator needs to know of a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    /// Where the node's agent is dialled.
    pub internal_ip: Option<IpAddr>,
    /// The Node is being deleted: it gets nothing new and blocks nothing.
    pub deleting: bool,
}

/// A Node's labels: those of the cached Node itself (a reconcile reads every node's, and
/// copying them for each of thousands of nodes cost megabytes per reconcile in flight:
/// docs/benchmarks.md, the operator at fleet scale), or a map of their own.
#[derive(Clone, Debug)]
pub enum Labels {
    Of(Arc<Node>),
    Own(BTreeMap<String, String>),
}

/// Equal labels, wherever they are kept.
impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Labels {}

impl Default for Labels {
    fn default() -> Self {
        Labels::Own(BTreeMap::new())
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels::Own(map)
    }
}

impl std::ops::Deref for Labels {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        match self {
            Labels::Of(node) => node.metadata.labels.as_ref().unwrap_or(&NONE),
            Labels::Own(map) => map,
        }
    }
}

impl NodeInfo {
    /// A cached Node, its labels shared rather than copied.
    pub fn from_shared(node: &Arc<Node>) -> Option<NodeInfo> {
        Self::of(node, || Labels::Of(node.clone()))
    }

    pub fn from_node(node: &Node) -> Option<NodeInfo> {
        Self::of(node, || Labels::Own(node.metadata.labels.clone().unwrap_or_default()))
    }

    fn of(node: &Node, labels: impl FnOnce() -> Labels) -> Option<NodeInfo> {
        let name = node.metadata.name.clone()?;
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse().ok());
        Some(NodeInfo { name, labels: labels(), internal_ip, deleting: node.metadata.deletion_timestamp.is_some() })
    }
}

/// A selector that cannot be evaluated, with what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid nodeSelector: {0}")]
pub struct SelectorError(pub String);

/// Kubernetes label-selector semantics: every matchLabels pair and every expression
/// must hold; an empty selector selects everything.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, SelectorError> {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for expr in sel.match_expressions.iter().flatten() {
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        let ok = match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError(format!("operator {} on key {:?} needs values", expr.operator, expr.key)));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError(format!("operator {} on key {:?} takes no values", expr.operator, expr.key)));
            }
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(SelectorError(format!(
                    "unknown operator {other:?} on key {:?}; use In, NotIn, Exists or DoesNotExist",
                    expr.key
                )));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Names of the nodes `sel` selects, skipping nodes being deleted.
pub fn target_nodes<'a>(
    sel: &LabelSelector,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
) -> Result<BTreeSet<String>, SelectorError> {
    // Gathered, then built at once (nodes come in name order: `Context::node_infos`).
    let mut out = Vec::new();
    for n in nodes {
        if !n.deleting && selector_matches(sel, &n.labels)? {
            out.push(n.name.clone());
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>().into(),
            internal_ip: None,
            deleting: false,
        }
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn nodes() -> Vec<NodeInfo> {
        vec![node("a", &[("zone", "x"), ("gpu", "yes")]), node("b", &[("zone", "y")]), node("c", &[])]
    }

    fn names(s: BTreeSet<String>) -> Vec<String> {
        s.into_iter().collect()
    }

    #[test]
    fn empty_selector_selects_all_but_deleting_nodes() {
        let mut all = nodes();
        all.push(NodeInfo { deleting: true, ..node("d", &[]) });
        assert_eq!(names(target_nodes(&LabelSelector::default(), &all).unwrap()), ["a", "b", "c"]);
    }

    #[test]
    fn match_labels_and_expressions() {
        let n = nodes();
        let sel = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: (!labels.is_empty())
                .then(|| labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        };
        assert_eq!(names(target_nodes(&sel(&[("zone", "x")], vec![]), &n).unwrap()), ["a"]);
        assert_eq!(names(target_nodes(&sel(&[], vec![expr("zone", "In", &["x", "y"])]), &n).unwrap()), ["a", "b"]);
        assert_eq!(names(target_nodes(&sel(&[], vec![expr("zone", "NotIn", &["x"])]), &n).unwrap()), ["b", "c"]);
        assert_eq!(names(target_nodes(&sel(&[], vec![expr("gpu", "Exists", &[])]), &n).unwrap()), ["a"]);
        assert_eq!(names(target_nodes(&sel(&[], vec![expr("zone", "DoesNotExist", &[])]), &n).unwrap()), ["c"]);
        // All requirements must hold.
        let both = sel(&[("zone", "y")], vec![expr("gpu", "Exists", &[])]);
        assert!(target_nodes(&both, &n).unwrap().is_empty());
    }

    #[test]
    fn malformed_selectors_say_what_is_wrong() {
        let n = nodes();
        let bad = |e| LabelSelector { match_expressions: Some(vec![e]), ..Default::default() };
        let e = target_nodes(&bad(expr("zone", "Equals", &["x"])), &n).unwrap_err();
        assert!(e.0.contains("unknown operator \"Equals\""), "{e}");
        let e = target_nodes(&bad(expr("zone", "In", &[])), &n).unwrap_err();
        assert!(e.0.contains("needs values"), "{e}");
        let e = target_nodes(&bad(expr("zone", "Exists", &["x"])), &n).unwrap_err();
        assert!(e.0.contains("takes no values"), "{e}");
    }
}
