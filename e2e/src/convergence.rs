//! Does every process-mode node run exactly what is desired, and nothing else? Read
//! from the kernel (bpftool, tc, ip), the node's bpffs tree and the agents' open
//! descriptors, never from bpfleet's own status: that is what the crash trials judge.

use std::collections::BTreeSet;

use agent::testing::findings::Findings;

use crate::kernel;
use crate::node::ProcessNode;

/// One owner (BpfProgram) a node must run: one function at one revision.
#[derive(Clone, Debug)]
pub struct Want {
    pub uid: String,
    pub revision: String,
    /// The ELF function (also the pin name).
    pub function: String,
    /// Maps pinned under `<uid>/maps/`.
    pub maps: Vec<String>,
    /// Links of the function (one per interface or tracepoint).
    pub links: usize,
    /// Interfaces that carry the function as XDP.
    pub xdp: Vec<String>,
}

/// The bpffs paths (relative to the agent's root) of `want`: the owner directory, its
/// maps, and the revision's program and link pins.
pub fn expected_pins(want: &Want) -> BTreeSet<String> {
    let (uid, rev, f) = (&want.uid, &want.revision, &want.function);
    let mut out: BTreeSet<String> = [
        uid.clone(),
        format!("{uid}/maps"),
        format!("{uid}/{rev}"),
        format!("{uid}/{rev}/progs"),
        format!("{uid}/{rev}/progs/{f}"),
        format!("{uid}/{rev}/links"),
        format!("{uid}/{rev}/links/{f}"),
    ]
    .into();
    out.extend(want.maps.iter().map(|m| format!("{uid}/maps/{m}")));
    out.extend((0..want.links).map(|i| format!("{uid}/{rev}/links/{f}/{i}")));
    out
}

/// Check one node against `want` (every owner it must run). `interfaces` are the
/// node's interfaces to inspect for XDP and tc filters. Every program id seen on the
/// node is added to `seen`; the ids of the desired programs are returned.
pub fn check_node(
    node: &ProcessNode,
    interfaces: &[&str],
    want: &[Want],
    seen: &mut BTreeSet<u64>,
    f: &mut Findings,
) -> BTreeSet<u64> {
    let who = &node.name;
    let tree: BTreeSet<String> = node.pins().into_iter().collect();
    let mut expected = BTreeSet::new();
    let mut desired = BTreeSet::new();
    for w in want {
        let pins = expected_pins(w);
        for p in pins.difference(&tree) {
            f.wrong.push(format!("{who}: pin {p} missing"));
        }
        expected.extend(pins);
        let prog_pin = node.bpffs_root.join(format!("{}/{}/progs/{}", w.uid, w.revision, w.function));
        let Some(prog) = kernel::pinned_program(&prog_pin) else { continue };
        desired.insert(prog);
        for i in 0..w.links {
            let link_pin = node.bpffs_root.join(format!("{}/{}/links/{}/{i}", w.uid, w.revision, w.function));
            match kernel::pinned_link_program(&link_pin) {
                Some(id) if id == prog => {}
                Some(id) => f.wrong.push(format!("{who}: link {} runs program {id}, not {prog}", link_pin.display())),
                None => {}
            }
        }
    }
    for p in tree.difference(&expected) {
        f.leaks.push(format!("{who}: pin {p}"));
        let path = node.bpffs_root.join(p);
        seen.extend(kernel::pinned_program(&path).or_else(|| kernel::pinned_link_program(&path)));
    }
    seen.extend(&desired);

    for ifname in interfaces {
        let want_xdp: Vec<u64> = want
            .iter()
            .filter(|w| w.xdp.iter().any(|i| i == ifname))
            .filter_map(|w| {
                kernel::pinned_program(&node.bpffs_root.join(format!("{}/{}/progs/{}", w.uid, w.revision, w.function)))
            })
            .collect();
        let got: Vec<u64> = match kernel::xdp_attachments(&node.netns, ifname) {
            Ok(a) => a.iter().map(|a| a.id).collect(),
            Err(e) => {
                f.wrong.push(format!("{who}: cannot read XDP of {ifname}: {e:#}"));
                continue;
            }
        };
        seen.extend(&got);
        if got != want_xdp {
            if got.iter().any(|id| !want_xdp.contains(id)) {
                f.leaks.push(format!("{who}: {ifname} runs XDP {got:?}, want {want_xdp:?}"));
            } else {
                f.wrong.push(format!("{who}: {ifname} runs XDP {got:?}, want {want_xdp:?}"));
            }
        }
        match kernel::link_shows_xdp(&node.netns, ifname) {
            Ok(shows) if shows == got.is_empty() => {
                f.wrong.push(format!("{who}: ip link and bpftool disagree about XDP on {ifname}"))
            }
            Ok(_) => {}
            Err(e) => f.wrong.push(format!("{who}: ip link of {ifname}: {e:#}")),
        }
        match kernel::tc_filter_programs(&node.netns, ifname) {
            Ok(progs) if !progs.is_empty() => {
                seen.extend(&progs);
                f.leaks.push(format!("{who}: tc filters on {ifname} run programs {progs:?}"));
            }
            Ok(_) => {}
            Err(e) => f.wrong.push(format!("{who}: tc filters of {ifname}: {e:#}")),
        }
    }

    if let Some(pid) = node.agent_pid() {
        let (progs, links) = kernel::held_by(pid);
        seen.extend(&progs);
        for p in progs.difference(&desired) {
            f.leaks.push(format!("{who}: the agent holds program {p}, which is not desired"));
        }
        if let Ok(all) = kernel::links() {
            for (id, prog) in all.iter().filter(|(id, _)| links.contains(id)) {
                if !desired.contains(prog) {
                    f.leaks.push(format!("{who}: the agent holds link {id} of program {prog}, which is not desired"));
                }
            }
        }
    }
    desired
}

/// Kernel-wide: every program ever seen that is still loaded must be desired, and the
/// links running desired programs are exactly `links` in number.
pub fn check_kernel(desired: &BTreeSet<u64>, links: usize, seen: &BTreeSet<u64>, f: &mut Findings) {
    match kernel::programs() {
        Ok(loaded) => {
            for id in seen.intersection(&loaded) {
                if !desired.contains(id) {
                    f.leaks.push(format!("program {id} still loaded"));
                }
            }
        }
        Err(e) => f.wrong.push(format!("bpftool prog show: {e:#}")),
    }
    match kernel::links() {
        Ok(all) => {
            let running: Vec<u64> = all.iter().filter(|(_, p)| desired.contains(p)).map(|(id, _)| *id).collect();
            if running.len() != links {
                let finding =
                    format!("{} links run the desired programs, {links} expected: {running:?}", running.len());
                if running.len() > links { f.leaks.push(finding) } else { f.wrong.push(finding) }
            }
            for (id, prog) in all.iter().filter(|(_, p)| seen.contains(p) && !desired.contains(p)) {
                f.leaks.push(format!("link {id} of program {prog} still exists"));
            }
        }
        Err(e) => f.wrong.push(format!("bpftool link show: {e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_pins_cover_the_owner_its_maps_and_each_link() {
        let w = Want {
            uid: "u".into(),
            revision: "r".into(),
            function: "f".into(),
            maps: vec!["m".into()],
            links: 2,
            xdp: vec![],
        };
        let pins: Vec<String> = expected_pins(&w).into_iter().collect();
        assert_eq!(
            pins,
            [
                "u",
                "u/maps",
                "u/maps/m",
                "u/r",
                "u/r/links",
                "u/r/links/f",
                "u/r/links/f/0",
                "u/r/links/f/1",
                "u/r/progs",
                "u/r/progs/f"
            ]
        );
    }
}
