//! `nodes PROGRAM`: the per-node view of one BpfProgram, from the BpfNodes the operator
//! writes (one per node): revision, health, kernel program and link ids, last error.

use std::io::Write;

use anyhow::Context as _;
use crds::node::NodeProgramStatus;
use crds::{BpfNode, BpfProgram};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client};

use crate::history::Marks;
use crate::table;

/// Longest last error shown without `--wide`.
pub const ERROR_WIDTH: usize = 80;

/// Which entries of a BpfNode belong to the program: by uid when the program exists (a
/// program deleted and created again under the same name is another owner), else by name.
#[derive(Clone, Debug)]
pub struct Owner<'a> {
    pub name: &'a str,
    pub uid: Option<&'a str>,
}

impl Owner<'_> {
    fn owns(&self, e: &NodeProgramStatus) -> bool {
        match self.uid {
            Some(uid) => e.owner_uid == uid,
            None => e.owner == self.name,
        }
    }
}

/// One row per node that reports the program, then (when `targets` is known) one per
/// target node that does not; sorted by node name.
pub fn rows(nodes: &[BpfNode], owner: &Owner<'_>, targets: Option<&[String]>, wide: bool) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut reported = std::collections::BTreeSet::new();
    for n in nodes {
        let node = n.metadata.name.clone().unwrap_or_default();
        for e in n.status.iter().flat_map(|s| &s.programs).filter(|e| owner.owns(e)) {
            reported.insert(node.clone());
            let single = e.attached.len() == 1;
            let ids = |f: &dyn Fn(&crds::node::AttachedProgram) -> String| {
                e.attached
                    .iter()
                    .map(|a| if single { f(a) } else { format!("{}={}", a.name, f(a)) })
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let error = e.last_error.as_deref().unwrap_or_default();
            rows.push(vec![
                node.clone(),
                e.revision.clone(),
                format!("{:?}", e.health),
                or_dash(ids(&|a| a.program_id.to_string())),
                or_dash(ids(&|a| or_dash(a.link_ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")))),
                pods(e),
                if wide { error.replace('\n', " ") } else { table::truncate(error, ERROR_WIDTH) },
            ]);
        }
    }
    for t in targets.unwrap_or_default() {
        if !reported.contains(t) {
            let cells = ["-", "NotReported", "-", "-", "-", "the node's agent reports no entry for this program"];
            rows.push(std::iter::once(t.clone()).chain(cells.iter().map(|c| c.to_string())).collect());
        }
    }
    rows.sort_by(|a, b| a[0].cmp(&b[0]));
    rows
}

/// Programs inside pods: the pods attached in out of those the node attaches in, and the
/// first failed one's reason (the BpfNode lists the rest).
fn pods(e: &NodeProgramStatus) -> String {
    if e.pods_total == 0 {
        return "-".into();
    }
    let attached = e.pods_total - e.pods_failed;
    match e.pods.iter().find(|p| p.reason.is_some()) {
        Some(p) => format!("{attached}/{} ({}: {})", e.pods_total, p.name, p.reason.as_deref().unwrap_or_default()),
        None => format!("{attached}/{}", e.pods_total),
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_string() } else { s }
}

pub fn render(rows: &[Vec<String>]) -> String {
    table::render(&["NODE", "REVISION", "HEALTH", "PROGRAM IDS", "LINK IDS", "PODS", "LAST ERROR"], rows)
}

/// The line above the table: which revision the nodes should run.
pub fn heading(name: &str, program: Option<&BpfProgram>) -> String {
    let Some(p) = program else {
        return format!("BpfProgram {name} does not exist; showing node entries that still name it");
    };
    let marks = Marks::of(p);
    let mut line = format!("BpfProgram {name}: revision {}", marks.current.as_deref().unwrap_or("unknown"));
    if let Some(s) = marks.stable.as_deref().filter(|s| Some(*s) != marks.current.as_deref()) {
        line.push_str(&format!(" (stable {s})"));
    }
    if let Some(st) = &p.status {
        line.push_str(&format!(", {} target, {} ready, {} failed", st.target_nodes, st.ready_nodes, st.failed_nodes));
    }
    line
}

pub async fn run(client: Client, name: &str, wide: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let programs: Api<BpfProgram> = Api::all(client.clone());
    let program = programs.get_opt(name).await.with_context(|| format!("cannot read BpfProgram {name}"))?;
    let owner = Owner { name, uid: program.as_ref().and_then(|p| p.metadata.uid.as_deref()) };
    let nodes =
        Api::<BpfNode>::all(client.clone()).list(&ListParams::default()).await.context("cannot list BpfNodes")?;
    let targets = match &program {
        Some(p) => target_nodes(client, p).await,
        None => None,
    };
    writeln!(out, "{}", heading(name, program.as_ref()))?;
    let rows = rows(&nodes.items, &owner, targets.as_deref(), wide);
    if rows.is_empty() {
        writeln!(out, "No node reports BpfProgram {name}.")?;
    } else {
        write!(out, "{}", render(&rows))?;
    }
    Ok(())
}

/// The Nodes the program's selector picks, or None when they cannot be listed (the
/// table then shows only the nodes that report the program).
async fn target_nodes(client: Client, p: &BpfProgram) -> Option<Vec<String>> {
    if all_inside_pods(p) {
        // Its targets are the selected nodes that run its pods: those report it.
        return None;
    }
    let selector = match Selector::try_from(p.spec.node_selector.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("note: not listing target nodes: {e}");
            return None;
        }
    };
    match Api::<Node>::all(client).list_metadata(&ListParams::default().labels_from(&selector)).await {
        Ok(list) => Some(list.items.into_iter().filter_map(|n| n.metadata.name).collect()),
        Err(e) => {
            eprintln!("note: not listing target nodes without an entry (cannot list Nodes: {e})");
            None
        }
    }
}

/// Whether every function of `p` attaches inside pods (`xdp.pods`, `tc.pods`,
/// `uprobe.containers`): the operator then targets only the nodes its pods run on.
fn all_inside_pods(p: &BpfProgram) -> bool {
    p.spec.programs.iter().all(|f| {
        f.xdp.as_ref().is_some_and(|a| a.pods.is_some())
            || f.tc.as_ref().is_some_and(|a| a.pods.is_some())
            || [&f.uprobe, &f.uretprobe].into_iter().flatten().any(|a| a.containers.is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn programs_all_inside_pods_target_no_node_by_selector() {
        let p = |programs: serde_json::Value| -> BpfProgram {
            serde_json::from_value(
                json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "metadata": {"name": "x"},
                "spec": {"bytecode": {"inline": "AA=="}, "programs": programs}}),
            )
            .unwrap()
        };
        assert!(all_inside_pods(&p(json!([{"name": "a", "type": "XDP", "xdp": {"pods": {"namespace": "shop"}}},
            {"name": "b", "type": "Uprobe", "uprobe": {"target": "/app", "symbol": "f", "containers": {"namespace": "shop"}}}]))));
        assert!(!all_inside_pods(&p(json!([{"name": "a", "type": "XDP", "xdp": {"pods": {"namespace": "shop"}}},
            {"name": "b", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}]))));
    }

    fn bpfnode(name: &str, programs: serde_json::Value) -> BpfNode {
        serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfNode",
            "metadata": {"name": name}, "spec": {}, "status": {"programs": programs},
        }))
        .unwrap()
    }

    fn entry(uid: &str, health: &str, error: Option<&str>) -> serde_json::Value {
        json!({"owner": "xdp-counter", "ownerUid": uid, "revision": "0123456789abcdef", "health": health,
               "lastError": error,
               "attached": [{"name": "count_packets", "type": "XDP", "programId": 412, "linkIds": [88, 89]}]})
    }

    #[test]
    fn one_row_per_node_that_reports_the_program_by_uid() {
        let long = "verifier: ".to_string() + &"R1 invalid mem access ".repeat(10);
        let nodes = vec![
            bpfnode("node-b", json!([entry("uid-1", "Failed", Some(&long))])),
            bpfnode("node-a", json!([entry("uid-1", "Healthy", None), entry("uid-other", "Healthy", None)])),
            bpfnode("node-c", json!([entry("uid-old", "Healthy", None)])),
        ];
        let owner = Owner { name: "xdp-counter", uid: Some("uid-1") };
        let table = render(&rows(&nodes, &owner, None, false));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(lines[0], "NODE     REVISION           HEALTH    PROGRAM IDS   LINK IDS   PODS   LAST ERROR");
        assert_eq!(lines[1], "node-a   0123456789abcdef   Healthy   412           88,89      -");
        assert!(
            lines[2].starts_with("node-b   0123456789abcdef   Failed    412           88,89      -      verifier: R1")
        );
        assert!(lines[2].ends_with('…'), "{}", lines[2]);
        let cut = &rows(&nodes, &owner, None, false)[1][6];
        assert!(cut.chars().count() <= ERROR_WIDTH, "{cut}");
        let wide = render(&rows(&nodes, &owner, None, true));
        assert!(wide.contains(long.trim_end()), "{wide}");
    }

    #[test]
    fn programs_inside_pods_show_their_pods_and_the_first_failure() {
        let mut e = entry("uid-1", "Healthy", None);
        e["pods"] = json!([
            {"uid": "p2", "namespace": "shop", "name": "web-2", "reason": "TargetNotFound", "message": "gone"},
            {"uid": "p1", "namespace": "shop", "name": "web-1", "linkIds": [90]},
        ]);
        e["podsTotal"] = json!(3);
        e["podsFailed"] = json!(1);
        let nodes = vec![bpfnode("node-a", json!([e]))];
        let owner = Owner { name: "xdp-counter", uid: Some("uid-1") };
        assert_eq!(rows(&nodes, &owner, None, false)[0][5], "2/3 (web-2: TargetNotFound)");
    }

    #[test]
    fn without_a_uid_entries_match_by_name_and_missing_targets_are_listed() {
        let two = json!([{"owner": "xdp-counter", "ownerUid": "u", "revision": "r", "health": "Degraded",
            "attached": [{"name": "a", "type": "XDP", "programId": 1, "linkIds": [2]},
                         {"name": "b", "type": "Tracepoint", "programId": 3}]}]);
        let nodes = vec![bpfnode("node-a", two)];
        let owner = Owner { name: "xdp-counter", uid: None };
        let targets = vec!["node-z".to_string(), "node-a".to_string()];
        let rows = rows(&nodes, &owner, Some(&targets), false);
        assert_eq!(rows[0][..5], ["node-a", "r", "Degraded", "a=1 b=3", "a=2 b=-"].map(String::from));
        assert_eq!(rows[1][..3], ["node-z", "-", "NotReported"].map(String::from));
    }

    #[test]
    fn the_heading_names_current_and_stable_revisions() {
        let p: BpfProgram = serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram", "metadata": {"name": "x"},
            "spec": {"bytecode": {"path": "/x.o"}, "programs": []},
            "status": {"revision": "aaaaaaaaaaaaaaaa", "targetNodes": 3, "readyNodes": 2, "failedNodes": 1,
                       "rollout": {"phase": "Progressing", "updateRevision": "aaaaaaaaaaaaaaaa", "stableRevision": "bbbbbbbbbbbbbbbb"}}
        }))
        .unwrap();
        assert_eq!(
            heading("x", Some(&p)),
            "BpfProgram x: revision aaaaaaaaaaaaaaaa (stable bbbbbbbbbbbbbbbb), 3 target, 2 ready, 1 failed"
        );
        assert!(heading("x", None).contains("does not exist"));
    }
}
