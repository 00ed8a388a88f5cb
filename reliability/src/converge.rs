//! Does the node run exactly what is desired? Read from bpffs, bpftool, tc and /proc,
//! then compared with the desired owners: what is missing or wrong, and what is there
//! that nothing desired accounts for (a leak).

use std::collections::BTreeSet;
use std::path::Path;

use agent::testing::findings::Findings;

use crate::kernel::{self, Hook};
use crate::owners::{Owner, Variant};

/// What the check is given.
pub struct Node<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub dev: &'a str,
    pub agent_pid: Option<u32>,
    /// Every program id this trial saw (responses, pins, hooks), loaded or not.
    pub seen: &'a BTreeSet<u32>,
}

/// The desired revision of each owner (`None`: the owner must not exist).
pub type Desired<'a> = Vec<(&'a Owner, Option<&'a Variant>)>;

/// Program ids that belong to this node's agent right now, from the kernel's side:
/// pinned under its root, on its interface, held by its process, or seen earlier and
/// still loaded.
pub fn our_programs(node: &Node, progs: &[kernel::Prog]) -> anyhow::Result<BTreeSet<u32>> {
    let loaded: BTreeSet<u32> = progs.iter().map(|p| p.id).collect();
    let mut ours: BTreeSet<u32> = node.seen.intersection(&loaded).copied().collect();
    ours.extend(kernel::pinned_programs_under(node.root));
    ours.extend(kernel::interface_hooks(node.dev)?.iter().map(|h| h.prog_id));
    let ifindex = kernel::ifindex(node.dev)?;
    let links = kernel::links()?;
    ours.extend(links.iter().filter(|l| l.ifindex == Some(ifindex)).map(|l| l.prog_id));
    if let Some(pid) = node.agent_pid
        && let Ok(view) = kernel::process(pid)
    {
        ours.extend(&view.prog_ids);
        ours.extend(links.iter().filter(|l| view.link_ids.contains(&l.id)).map(|l| l.prog_id));
    }
    ours.retain(|id| loaded.contains(id));
    Ok(ours)
}

/// Compare the node with `desired`, waiting up to 3 s for the kernel to free what went.
pub fn check(node: &Node, desired: &Desired, listed: Option<&[(String, String, bool)]>) -> anyhow::Result<Findings> {
    let mut last = Findings::default();
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        last = check_once(node, desired, listed)?;
        if last.is_clean() {
            break;
        }
    }
    Ok(last)
}

fn check_once(node: &Node, desired: &Desired, listed: Option<&[(String, String, bool)]>) -> anyhow::Result<Findings> {
    let mut f = Findings::default();
    let tree = kernel::tree(node.root);
    let mut expected_programs = BTreeSet::new();
    let mut expected_hooks: Vec<Hook> = Vec::new();
    let mut expected_links = 0usize;
    let mut accounted: BTreeSet<String> = BTreeSet::new();

    for (owner, variant) in desired {
        let Some(v) = variant else { continue };
        let uid = &owner.uid;
        let rev = &v.revision;
        for dir in [uid.clone(), format!("{uid}/maps"), format!("{uid}/{rev}")] {
            accounted.insert(dir);
        }
        for m in &owner.maps {
            let rel = format!("{uid}/maps/{m}");
            if !tree.contains(&rel) {
                f.wrong.push(format!("{uid}: map pin {rel} missing"));
            }
            accounted.insert(rel);
        }
        for (name, hooks) in &v.programs {
            let prog_rel = format!("{uid}/{rev}/progs/{name}");
            accounted.insert(format!("{uid}/{rev}/progs"));
            accounted.insert(prog_rel.clone());
            let Ok(prog_id) = kernel::pinned_program(&node.root.join(&prog_rel)) else {
                f.wrong.push(format!("{uid}: revision {rev} program {name} is not pinned (bpffs: {tree:?})"));
                continue;
            };
            expected_programs.insert(prog_id);
            for (kind, priority) in &v.hooks {
                expected_hooks.push(Hook { kind: kind.clone(), prog_id, priority: *priority });
            }
            // Pinned links: XDP, TCX and tracepoints (a clsact filter has no pin).
            // (the directories exist for clsact too, empty).
            accounted.insert(format!("{uid}/{rev}/links"));
            accounted.insert(format!("{uid}/{rev}/links/{name}"));
            let clsact = v.hooks.iter().any(|(k, _)| k.starts_with("clsact"));
            if !clsact {
                expected_links += hooks;
                for i in 0..*hooks {
                    let rel = format!("{uid}/{rev}/links/{name}/{i}");
                    match kernel::pinned_link_program(&node.root.join(&rel)) {
                        Ok(id) if id == prog_id => {}
                        Ok(id) => f.wrong.push(format!("{uid}: link {rel} runs program {id}, not {prog_id}")),
                        Err(_) => f.wrong.push(format!("{uid}: link pin {rel} missing")),
                    }
                    accounted.insert(rel);
                }
            }
        }
    }
    for rel in &tree {
        if !accounted.contains(rel) {
            f.leaks.push(format!("pin {rel}"));
        }
    }

    // The interface: exactly the desired hooks, each running the desired revision.
    let mut hooks = kernel::interface_hooks(node.dev)?;
    expected_hooks.sort();
    for h in &expected_hooks {
        match hooks.iter().position(|x| x == h) {
            Some(i) => {
                hooks.remove(i);
            }
            None => f.wrong.push(format!(
                "{} hook {} (priority {}) does not run program {}",
                node.dev, h.kind, h.priority, h.prog_id
            )),
        }
    }
    for h in hooks {
        f.leaks.push(format!("{} hook {} priority {} runs program {}", node.dev, h.kind, h.priority, h.prog_id));
    }

    // Programs and links in the kernel.
    let progs = kernel::programs()?;
    for id in our_programs(node, &progs)? {
        if !expected_programs.contains(&id) {
            let name = progs.iter().find(|p| p.id == id).map(|p| p.name.as_str()).unwrap_or("?");
            f.leaks.push(format!("program {id} ({name}) still loaded"));
        }
    }
    let links: Vec<_> = kernel::links()?.into_iter().filter(|l| expected_programs.contains(&l.prog_id)).collect();
    if links.len() > expected_links {
        f.leaks.push(format!("{} links run the desired programs, {expected_links} expected: {links:?}", links.len()));
    } else if links.len() < expected_links {
        f.wrong.push(format!("{} links run the desired programs, {expected_links} expected", links.len()));
    }

    // Owner records: one per desired owner, nothing else (no temporary file, nothing set aside).
    let mut records: BTreeSet<String> =
        desired.iter().filter(|(_, v)| v.is_some()).map(|(o, _)| format!("{}.json", o.uid)).collect();
    for rel in kernel::tree(node.state) {
        // The leadership fence is the node's, not an owner's.
        if rel != "leader-epoch" && !records.remove(&rel) {
            f.leaks.push(format!("state file {rel}"));
        }
    }
    for r in records {
        f.wrong.push(format!("owner record {r} missing"));
    }

    // Status: what List says matches.
    if let Some(listed) = listed {
        for (owner, variant) in desired {
            let got = listed.iter().find(|(u, _, _)| u == &owner.uid);
            match (variant, got) {
                (None, None) => {}
                (None, Some(g)) => f.wrong.push(format!("List still reports {g:?}")),
                (Some(v), None) => f.wrong.push(format!("List does not report {} ({})", owner.uid, v.revision)),
                (Some(v), Some((_, rev, healthy))) => {
                    if rev != &v.revision || !healthy {
                        f.wrong.push(format!(
                            "List: {} at {rev} healthy={healthy}, want {} healthy",
                            owner.uid, v.revision
                        ));
                    }
                }
            }
        }
        for (u, _, _) in listed {
            if !desired.iter().any(|(o, _)| &o.uid == u) {
                f.leaks.push(format!("List reports an unknown owner {u}"));
            }
        }
    }
    Ok(f)
}

/// After everything is removed, the agent process holds no program and no link.
pub fn agent_holds_nothing(pid: u32) -> Vec<String> {
    match kernel::process(pid) {
        Ok(v) if v.prog_ids.is_empty() && v.link_ids.is_empty() => vec![],
        Ok(v) => vec![format!("the agent holds descriptors of programs {:?} and links {:?}", v.prog_ids, v.link_ids)],
        Err(e) => vec![format!("cannot read /proc/{pid}: {e}")],
    }
}
