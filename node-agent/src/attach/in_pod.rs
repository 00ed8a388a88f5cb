//! One hook of a loaded program inside a pod: attached from the program's pin (a pod
//! that starts gets the running revision without a reload), or taken over in place from
//! the replaced revision's link on the same hook (an upgrade, as on the node: `swap`), and
//! detached. The kernel work inside the pod's namespace is `netns`'s; a uprobe on a binary
//! inside one of the pod's containers is `container`'s.

use std::path::Path;

use aya::programs::{ProbeKind, SchedClassifier, UProbe, Xdp};
use crds::names::{InterfaceName, ProgramName};
use crds::validate::UprobeTarget;

use super::container::{ContainerRoot, attach_uprobe};

use super::netns::{PodNetns, PodTcLink, TcHook, attach_tc, attach_xdp, detach_tc};
use super::pod::{LinkPin, PodError};
use super::swap::{Replaced, SwappedHook, take_over_link};
use super::{TcBackend, TcPeer, record};
use crate::error::{AgentError, Reason};
use crate::pods::PodHook;
use crate::store::{LinkKind, LinkRecord};

/// Where one hook goes: the program (by its pin), the kind of hook, the pod's interface.
pub struct PodAttach<'a> {
    pub program: &'a ProgramName,
    pub program_pin: &'a Path,
    pub hook: PodHook,
    pub interface: &'a InterfaceName,
    pub tc_backend: TcBackend,
    /// bpfleet's TCX links already in this pod (interface names are the pod's).
    pub tc_peers: &'a [TcPeer],
}

/// The replaced revision's link on the hook, and the program it runs.
pub struct TakeOver<'a> {
    pub link_pin: &'a Path,
    pub old_program_pin: &'a Path,
}

/// Attach `a` inside `netns`, pinning the link at `pin` (its directory must exist), or
/// switch `take_over`'s link to the program in place and pin it at `pin` too.
pub fn attach(
    a: &PodAttach<'_>,
    netns: &PodNetns,
    pin: &Path,
    take_over: Option<TakeOver<'_>>,
) -> Result<LinkRecord, PodError> {
    let iface = a.interface.as_str();
    if let Some(old) = take_over {
        let replaced = Replaced {
            hook: SwappedHook::Link { link_pin: old.link_pin.to_path_buf() },
            old_program_pin: old.old_program_pin.to_path_buf(),
        };
        let hook = format!("{iface} in {}", netns.place());
        let link_id = take_over_link(a.program, &hook, a.program_pin, &replaced, pin)?;
        return Ok(record(iface, link_id, link_kind(a, pin)));
    }
    let opened = |e: &dyn std::fmt::Display| {
        AgentError::for_program(
            Reason::Internal,
            a.program.as_str(),
            format!("cannot open the pinned program {}: {e}", a.program_pin.display()),
        )
    };
    match a.hook {
        PodHook::Xdp { mode } => {
            let mut xdp =
                Xdp::from_pin(a.program_pin, aya_obj::programs::XdpAttachType::Interface).map_err(|e| opened(&e))?;
            let LinkPin { path, link_id } = attach_xdp(&mut xdp, a.program, netns, a.interface, mode, pin)?;
            Ok(record(iface, link_id, LinkKind::Pinned { path }))
        }
        PodHook::Uprobe { .. } => Err(PodError::Failed(AgentError::internal(format!(
            "{} is a uprobe: it attaches in containers, not on interface {iface}",
            a.program
        )))),
        PodHook::Tc { direction, priority } => {
            let mut tc = SchedClassifier::from_pin(a.program_pin).map_err(|e| opened(&e))?;
            let hook = TcHook { interface: a.interface, direction, priority, backend: a.tc_backend, peers: a.tc_peers };
            match attach_tc(&mut tc, a.program, netns, &hook, pin)? {
                PodTcLink::Tcx(LinkPin { path, link_id }) => Ok(record(
                    iface,
                    link_id,
                    LinkKind::Tcx { path, interface: iface.to_string(), direction, priority },
                )),
                PodTcLink::Filter { interface, direction, priority, handle } => {
                    Ok(record(iface, 0, LinkKind::TcNetlink { interface, direction, priority, handle }))
                }
            }
        }
    }
}

/// Attach the pinned uprobe (`ret`: uretprobe) `program_pin` to `probe`'s binary inside
/// the container whose root is `root`, pinning the link at `pin` (its directory must
/// exist). The record's hook is `container` (the container's name).
pub fn attach_probe(
    program: &ProgramName,
    program_pin: &Path,
    ret: bool,
    probe: &UprobeTarget,
    root: &ContainerRoot,
    container: &str,
    pin: &Path,
) -> Result<LinkRecord, PodError> {
    let kind = if ret { ProbeKind::Return } else { ProbeKind::Entry };
    let mut up = UProbe::from_pin(program_pin, kind).map_err(|e| {
        AgentError::for_program(
            Reason::Internal,
            program.as_str(),
            format!("cannot open the pinned program {}: {e}", program_pin.display()),
        )
    })?;
    let LinkPin { path, link_id } = attach_uprobe(&mut up, program, root, probe, pin)?;
    Ok(record(container, link_id, LinkKind::Pinned { path }))
}

/// A taken-over link is of the same kind as the one a fresh attach makes.
fn link_kind(a: &PodAttach<'_>, pin: &Path) -> LinkKind {
    match a.hook {
        PodHook::Xdp { .. } | PodHook::Uprobe { .. } => LinkKind::Pinned { path: pin.to_path_buf() },
        PodHook::Tc { direction, priority } => {
            LinkKind::Tcx { path: pin.to_path_buf(), interface: a.interface.to_string(), direction, priority }
        }
    }
}

/// Detach a link inside a pod and remove its pin: nothing of it is left in the kernel or
/// bpffs. A clsact filter is removed inside `netns` (the namespace it was made in; nothing
/// to do when that is gone, its filters went with it).
pub fn detach(netns: Option<&PodNetns>, link: &LinkRecord) -> Result<(), AgentError> {
    match &link.kind {
        LinkKind::Pinned { path } | LinkKind::Tcx { path, .. } => {
            LinkPin { path: path.clone(), link_id: link.link_id }.detach()
        }
        LinkKind::TcNetlink { interface, direction, priority, handle } => match netns {
            Some(ns) => detach_tc(
                ns,
                &PodTcLink::Filter {
                    interface: interface.clone(),
                    direction: *direction,
                    priority: *priority,
                    handle: *handle,
                },
            ),
            None => Ok(()),
        },
    }
}
