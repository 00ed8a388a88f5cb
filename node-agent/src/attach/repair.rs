//! Re-attaching one hook of a program that is still loaded and pinned: what a Degraded
//! owner needs (a link removed by someone else, an interface deleted and created again),
//! without reloading the program or touching its other hooks.

use std::path::Path;

use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::CgroupAttachMode;
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{CgroupSkb, ProbeKind, RawTracePoint, SchedClassifier, TracePoint, UProbe, Xdp};
use crds::program::Direction;
use crds::validate::{Attach, ValidProgram};

use super::{TcPeer, keep_link, record};
use crate::error::{AgentError, Reason, Result, chain};
use crate::store::{LinkKind, LinkRecord, ProgramRecord};

/// Attach hook `index` of `program` again from its pinned program, pin the new link at
/// `link_pin` (replacing whatever stale link is pinned there) and return its record.
pub fn reattach(
    program: &ProgramRecord,
    valid: &ValidProgram,
    index: usize,
    link_pin: Option<&Path>,
    tc_peers: &[TcPeer],
) -> Result<LinkRecord> {
    let name = program.name.as_str();
    let fail = |what: &str, e: &dyn std::error::Error| {
        AgentError::for_program(Reason::AttachFailed, name, format!("re-attaching to {what}: {}", chain(e)))
    };
    let hook_missing = || AgentError::internal(format!("{name} has no hook #{index} in its spec"));
    let pin_at = |link_pin: Option<&Path>| -> Result<std::path::PathBuf> {
        let p = link_pin.ok_or_else(|| AgentError::internal(format!("{name}: link #{index} has no pin path")))?;
        // A stale (detached) link pinned there goes with its pin.
        let _ = std::fs::remove_file(p);
        Ok(p.to_path_buf())
    };
    match &valid.attach {
        // No node-level hook to repair: its links are in pods (`pods`, `in_pod`).
        Attach::Xdp { in_pods: true, .. }
        | Attach::Tc { in_pods: true, .. }
        | Attach::Uprobe { containers: Some(_), .. } => Err(AgentError::internal(format!(
            "{name} attaches inside pods: it has no hook #{index} on the node to re-attach"
        ))),
        Attach::Xdp { interfaces, mode, in_pods: false } => {
            let iface = interfaces.get(index).ok_or_else(hook_missing)?.as_str();
            let ifindex = super::interface_index(&valid.name, iface)?;
            let mut xdp = Xdp::from_pin(&program.pin, aya_obj::programs::XdpAttachType::Interface)
                .map_err(|e| fail(iface, &e))?;
            let path = pin_at(link_pin)?;
            let lid = xdp.attach_to_if_index(ifindex, super::xdp::aya_mode(*mode)).map_err(|e| fail(iface, &e))?;
            let link = xdp.take_link(lid).map_err(|e| fail(iface, &e))?;
            let id = keep_link(name, link, &path)?;
            Ok(record(iface, id, LinkKind::Pinned { path }))
        }
        Attach::Tc { interfaces, direction, priority, in_pods: false } => {
            let iface = interfaces.get(index).ok_or_else(hook_missing)?.as_str();
            super::interface_index(&valid.name, iface)?;
            let mut tc = SchedClassifier::from_pin(&program.pin).map_err(|e| fail(iface, &e))?;
            let attach_type = super::attach_type(*direction);
            match link_pin {
                Some(_) => {
                    let path = pin_at(link_pin)?;
                    let order = super::tc::tcx_order(tc_peers, iface, *direction, *priority);
                    let lid = tc
                        .attach_with_options(iface, attach_type, TcAttachOptions::TcxOrder(order))
                        .map_err(|e| fail(iface, &e))?;
                    let link = tc.take_link(lid).map_err(|e| fail(iface, &e))?;
                    let id = keep_link(name, link, &path)?;
                    let kind =
                        LinkKind::Tcx { path, interface: iface.into(), direction: *direction, priority: *priority };
                    Ok(record(iface, id, kind))
                }
                None => {
                    let opts = NlOptions { priority: *priority, ..Default::default() };
                    let lid = tc
                        .attach_with_options(iface, attach_type, TcAttachOptions::Netlink(opts))
                        .map_err(|e| fail(iface, &e))?;
                    let link = tc.take_link(lid).map_err(|e| fail(iface, &e))?;
                    let handle = u32::from(link.handle().map_err(|e| fail(iface, &e))?);
                    // As in `tc::attach`: the record, not aya's handle, keeps the filter.
                    std::mem::forget(link);
                    let kind = LinkKind::TcNetlink {
                        interface: iface.into(),
                        direction: *direction,
                        priority: *priority,
                        handle,
                    };
                    Ok(record(iface, 0, kind))
                }
            }
        }
        Attach::Tracepoint { names } => {
            let n = names.get(index).ok_or_else(hook_missing)?;
            let hook = n.to_string();
            let mut tp = TracePoint::from_pin(&program.pin).map_err(|e| fail(&hook, &e))?;
            let path = pin_at(link_pin)?;
            let lid = tp.attach(&n.category, &n.name).map_err(|e| fail(&hook, &e))?;
            let id = keep_link(name, tp.take_link(lid).map_err(|e| fail(&hook, &e))?, &path)?;
            Ok(record(hook, id, LinkKind::Pinned { path }))
        }
        Attach::RawTracepoint { names } => {
            let n = names.get(index).ok_or_else(hook_missing)?;
            let mut tp = RawTracePoint::from_pin(&program.pin).map_err(|e| fail(n, &e))?;
            let path = pin_at(link_pin)?;
            let lid = tp.attach(n).map_err(|e| fail(n, &e))?;
            let id = keep_link(name, tp.take_link(lid).map_err(|e| fail(n, &e))?, &path)?;
            Ok(record(n.clone(), id, LinkKind::Pinned { path }))
        }
        Attach::Uprobe { probe, ret, containers: None } => {
            let hook = super::probes::uprobe_hook(probe);
            let kind = if *ret { ProbeKind::Return } else { ProbeKind::Entry };
            let mut up = UProbe::from_pin(&program.pin, kind).map_err(|e| fail(&hook, &e))?;
            let (location, scope) = super::probes::uprobe_place(probe);
            let path = pin_at(link_pin)?;
            let target = super::probes::open_target(probe).map_err(|e| fail(&hook, &e))?;
            let lid = up.attach(location, target.fd_path(), scope).map_err(|e| fail(&hook, &e))?;
            let id = keep_link(name, up.take_link(lid).map_err(|e| fail(&hook, &e))?, &path)?;
            Ok(record(hook, id, LinkKind::Pinned { path }))
        }
        Attach::CgroupSkb { cgroup, direction } => {
            let hook = cgroup.display().to_string();
            let attach_type = match direction {
                Direction::Ingress => CgroupSkbAttachType::Ingress,
                Direction::Egress => CgroupSkbAttachType::Egress,
            };
            let mut skb = CgroupSkb::from_pin(&program.pin, attach_type).map_err(|e| fail(&hook, &e))?;
            let dir = std::fs::File::open(cgroup).map_err(|e| fail(&hook, &e))?;
            let path = pin_at(link_pin)?;
            let lid = skb.attach(&dir, attach_type, CgroupAttachMode::Single).map_err(|e| fail(&hook, &e))?;
            let id = keep_link(name, skb.take_link(lid).map_err(|e| fail(&hook, &e))?, &path)?;
            Ok(record(hook, id, LinkKind::Pinned { path }))
        }
        other => Err(AgentError::for_program(
            Reason::AttachFailed,
            name,
            format!("a {} hook cannot be re-attached in place; re-apply the revision", other.program_type()),
        )),
    }
}
