//! TC: TCX links where the kernel has them (>= 6.6), clsact filters otherwise. A new
//! revision of a program on the same hook (interface, direction, priority) takes over
//! the previous revision's link or filter in place (see `swap`): every packet meets
//! exactly one of them, never both and never neither. With another priority the new
//! one is attached at its place first and the old one detached after the commit.

use std::path::Path;

use aya::programs::links::LinkOrder;
use aya::programs::tc::{NlOptions, TcAttachOptions, qdisc_add_clsact};
use aya::programs::{Program, ProgramId, SchedClassifier};
use aya::util::KernelVersion;
use crds::names::{InterfaceName, ProgramName};
use crds::program::{Direction, ProgramType};

use super::swap::{self, Replaced, SwappedHook};
use super::{AttachCtx, TcPeer, Undo, attach_type, interface_index, keep_link, load_error, pin_loaded, record};
use crate::error::{AgentError, Reason, Result, chain, errno};
use crate::store::{LinkKind, LinkRecord};

/// Which TC mechanism to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcBackend {
    /// TCX when the kernel has it, clsact otherwise.
    #[default]
    Auto,
    /// TCX links only.
    Tcx,
    /// clsact qdisc filters via netlink (what kernels before 6.6 have).
    Clsact,
}

impl TcBackend {
    pub(super) fn use_tcx(self) -> bool {
        match self {
            TcBackend::Tcx => true,
            TcBackend::Clsact => false,
            TcBackend::Auto => KernelVersion::current().map(|v| v >= KernelVersion::new(6, 6, 0)).unwrap_or(false),
        }
    }
}

pub(super) fn attach(
    program: &mut Program,
    name: &ProgramName,
    interfaces: &[InterfaceName],
    (direction, priority): (Direction, u16),
    ctx: &AttachCtx<'_>,
    pin: &Path,
    undo: &mut Vec<super::Undo>,
) -> Result<(u32, Vec<LinkRecord>)> {
    let tc: &mut SchedClassifier = program.try_into().map_err(|e| super::wrong_kind(name, e))?;
    tc.load().map_err(load_error(name, ProgramType::Tc))?;
    let id = pin_loaded!(tc, name, pin);
    let attach_type = attach_type(direction);
    let mut links = Vec::new();
    for (i, iface) in interfaces.iter().enumerate() {
        interface_index(name, iface.as_str())?;
        let previous = previous_hook(ctx, name, iface.as_str(), direction, priority);
        let err = |e: &dyn std::error::Error| {
            AgentError::for_program(
                Reason::AttachFailed,
                name.as_str(),
                format!("attaching TC {direction:?} to interface {iface}: {}", chain(e)),
            )
        };
        if ctx.tc_backend.use_tcx() {
            let path = ctx.link_pin(name, i);
            let link_id = match previous.filter(|r| matches!(r.hook, SwappedHook::Link { .. })) {
                Some(old) => {
                    let id = swap::take_over_link(name, iface.as_str(), pin, &old, &path)?;
                    undo.push(Undo::Swap(old));
                    id
                }
                None => {
                    let order = tcx_order(ctx.tc_peers, iface.as_str(), direction, priority);
                    let lid = tc
                        .attach_with_options(iface.as_str(), attach_type, TcAttachOptions::TcxOrder(order))
                        .map_err(|e| err(&e))?;
                    let link = tc.take_link(lid).map_err(|e| err(&e))?;
                    keep_link(name.as_str(), link, &path)?
                }
            };
            let kind = LinkKind::Tcx { path, interface: iface.to_string(), direction, priority };
            links.push(record(iface.as_str(), link_id, kind));
        } else if let Some(old) = previous.filter(|r| matches!(r.hook, SwappedHook::TcFilter { .. })) {
            let handle = swap::take_over_filter(tc, name, &old)?;
            undo.push(Undo::Swap(old));
            let kind = LinkKind::TcNetlink { interface: iface.to_string(), direction, priority, handle };
            links.push(record(iface.as_str(), 0, kind));
        } else {
            // EEXIST: the interface already has a clsact qdisc, which is what we need.
            if let Err(e) = qdisc_add_clsact(iface.as_str())
                && errno(&e) != Some(libc::EEXIST)
            {
                return Err(err(&e));
            }
            let opts = NlOptions { priority, ..Default::default() };
            let lid = tc
                .attach_with_options(iface.as_str(), attach_type, TcAttachOptions::Netlink(opts))
                .map_err(|e| err(&e))?;
            let link = tc.take_link(lid).map_err(|e| err(&e))?;
            let handle = match link.handle() {
                Ok(h) => u32::from(h),
                // Without its handle nobody could find the filter again: remove it now.
                Err(e) => return Err(err(&e)),
            };
            // A clsact filter lives in the kernel without a file descriptor; dropping
            // aya's handle would remove it, so the record is what keeps track of it, and
            // until the record is committed, the undo list.
            std::mem::forget(link);
            undo.push(super::Undo::TcFilter { interface: iface.to_string(), direction, priority, handle });
            let kind = LinkKind::TcNetlink { interface: iface.to_string(), direction, priority, handle };
            links.push(record(iface.as_str(), 0, kind));
        }
    }
    Ok((id, links))
}

/// The previous revision's link or filter of the same program on the same hook, which
/// the new revision takes over in place.
fn previous_hook(
    ctx: &AttachCtx<'_>,
    name: &ProgramName,
    iface: &str,
    direction: Direction,
    priority: u16,
) -> Option<Replaced> {
    let prev = ctx.previous?.programs.iter().find(|p| p.program_type == ProgramType::Tc && p.name == name.as_str())?;
    prev.links.iter().find_map(|l| {
        let hook = match &l.kind {
            LinkKind::Tcx { path, interface, direction: d, priority: p }
                if interface == iface && *d == direction && *p == priority && path.exists() =>
            {
                SwappedHook::Link { link_pin: path.clone() }
            }
            LinkKind::TcNetlink { interface, direction: d, priority: p, handle }
                if interface == iface && *d == direction && *p == priority =>
            {
                SwappedHook::TcFilter { interface: interface.clone(), direction, priority, handle: *handle }
            }
            _ => return None,
        };
        Some(Replaced { hook, old_program_pin: prev.pin.clone() })
    })
}

/// Where a program of `priority` goes among bpfleet's TCX programs on one hook: before
/// the first with a higher priority number, else after the last (lower runs first;
/// equal priorities keep arrival order).
pub fn tcx_order(peers: &[TcPeer], iface: &str, direction: Direction, priority: u16) -> LinkOrder {
    let same: Vec<&TcPeer> = peers.iter().filter(|p| p.interface == iface && p.direction == direction).collect();
    if let Some(next) = same.iter().filter(|p| p.priority > priority).min_by_key(|p| p.priority) {
        // SAFETY: the id comes from a program this agent loaded and still holds pinned.
        return LinkOrder::before_program_id(unsafe { ProgramId::new(next.program_id) });
    }
    match same.iter().filter(|p| p.priority <= priority).max_by_key(|p| p.priority) {
        // SAFETY: as above.
        Some(prev) => LinkOrder::after_program_id(unsafe { ProgramId::new(prev.program_id) }),
        None => LinkOrder::default(),
    }
}

/// Remove a clsact filter recorded by `attach`.
pub fn detach_netlink(interface: &str, direction: Direction, priority: u16, handle: u32) -> Result<()> {
    match aya::programs::tc::SchedClassifierLink::attached(
        interface,
        attach_type(direction),
        priority,
        handle.into(),
        None,
    ) {
        Ok(link) => drop(link), // dropping a re-attached netlink handle detaches it
        Err(e) => tracing::debug!(interface, error = %e, "clsact filter already gone"),
    }
    Ok(())
}
