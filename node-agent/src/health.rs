//! Health read from the kernel: each attachment is checked where it lives (the link
//! object and the interface it is bound to), not by the presence of a file. A link
//! whose interface was deleted is detached by the kernel even though its pin stays.

use crate::store::{LinkKind, OwnerRecord};
use crate::{kernel, netlink};

/// What is wrong with one attachment of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Index in `record.programs`.
    pub program: usize,
    /// Index in that program's `links` (None: the program itself).
    pub link: Option<usize>,
    pub kind: ProblemKind,
    /// In words, for List, Watch and the operator's status.
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The program's pin is gone: only a new apply of the revision brings it back.
    ProgramGone,
    /// The link is gone (its pin removed by someone else, or the kernel dropped it).
    LinkGone,
    /// The link runs another program than the recorded one.
    OtherProgram,
    /// The interface does not exist now: the link waits for it.
    InterfaceGone,
    /// The interface exists but the link is not on it (it was deleted and created
    /// again): re-attaching brings the program back.
    InterfaceRecreated,
}

/// Every problem of `record`, in program and link order.
pub fn check(record: &OwnerRecord) -> Vec<Problem> {
    let mut out = Vec::new();
    for (pi, p) in record.programs.iter().enumerate() {
        if !p.pin.exists() {
            out.push(Problem {
                program: pi,
                link: None,
                kind: ProblemKind::ProgramGone,
                why: format!("program {} is no longer pinned", p.name),
            });
            continue;
        }
        for (li, l) in p.links.iter().enumerate() {
            let problem = |kind, why: String| Problem { program: pi, link: Some(li), kind, why };
            if let LinkKind::TcNetlink { interface, direction, priority, handle } = &l.kind {
                let Some(idx) = kernel::ifindex(interface) else {
                    let why = format!("interface {interface} is gone: {} is detached until it comes back", p.name);
                    out.push(problem(ProblemKind::InterfaceGone, why));
                    continue;
                };
                match netlink::bpf_filters(idx, *direction) {
                    Ok(filters)
                        if filters.iter().any(|f| {
                            f.priority == *priority
                                && f.handle == *handle
                                && f.program_id.is_none_or(|id| id == p.program_id)
                        }) => {}
                    Ok(_) => out.push(problem(
                        ProblemKind::LinkGone,
                        format!(
                            "the clsact {direction:?} filter of {} on {interface} (priority {priority}, handle {handle:#x}) is gone",
                            p.name
                        ),
                    )),
                    Err(e) => tracing::debug!(interface, error = %e, "cannot list clsact filters"),
                }
                continue;
            }
            let Some(pin) = l.kind.pin() else { continue };
            let on = |what: &str| format!("link {} of {} on {}{what}", l.link_id, p.name, l.hook);
            let linked = match kernel::pinned_link(pin) {
                Ok(k) => k,
                Err(_) => {
                    out.push(problem(ProblemKind::LinkGone, on(" was removed by someone else")));
                    continue;
                }
            };
            if linked.program_id != p.program_id {
                let why = on(&format!(" runs program {} instead of {}", linked.program_id, p.program_id));
                out.push(problem(ProblemKind::OtherProgram, why));
                continue;
            }
            let interface = match &l.kind {
                LinkKind::Tcx { interface, .. } => Some(interface.as_str()),
                LinkKind::Pinned { .. } if linked.ifindex.is_some() => Some(l.hook.as_str()),
                _ => None,
            };
            let (Some(iface), Some(bound)) = (interface, linked.ifindex) else { continue };
            match kernel::ifindex(iface) {
                None => out.push(problem(
                    ProblemKind::InterfaceGone,
                    format!("interface {iface} is gone: {} is detached until it comes back", p.name),
                )),
                Some(now) if now != bound => out.push(problem(
                    ProblemKind::InterfaceRecreated,
                    format!("interface {iface} was deleted and created again: {} is not attached to it", p.name),
                )),
                Some(_) => {}
            }
        }
    }
    out
}
