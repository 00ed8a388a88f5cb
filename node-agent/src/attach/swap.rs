//! Taking over a hook of the previous revision in place, so an upgrade leaves no moment
//! where the hook runs neither revision, nor one where it runs both:
//!
//! - a bpf_link (XDP, TCX, cgroup) is switched to the new program with BPF_LINK_UPDATE,
//!   conditional on it still running the previous revision's program;
//! - a clsact filter is replaced with the same priority and handle (a netlink change
//!   without NLM_F_CREATE), which cls_bpf swaps under RCU.
//!
//! The new revision pins the same link in its own directory; removing the previous
//! revision's directory afterwards only drops the old pin. A failed apply switches the
//! hook back (`restore`); so does recovery when the agent died before the commit.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::programs::SchedClassifier;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use crds::names::ProgramName;
use crds::program::Direction;

use super::{attach_type, keep_link};
use crate::error::{AgentError, Reason, Result, chain};

/// A hook the new revision took over from the previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwappedHook {
    /// A pinned bpf_link (XDP, TCX, cgroup), by the previous revision's pin.
    Link { link_pin: PathBuf },
    /// A clsact filter.
    TcFilter { interface: String, direction: Direction, priority: u16, handle: u32 },
}

/// A hook switched in place, and the program it ran before (to switch it back).
#[derive(Clone, Debug)]
pub struct Replaced {
    pub hook: SwappedHook,
    pub old_program_pin: PathBuf,
}

/// Switch the link pinned at `old_link_pin` from the program pinned at
/// `old_program_pin` to the one pinned at `program_pin`, pin it at `new_link_pin` too,
/// and return its (unchanged) kernel id.
pub(super) fn take_over_link(
    name: &ProgramName,
    hook: &str,
    program_pin: &Path,
    old: &Replaced,
    new_link_pin: &Path,
) -> Result<u32> {
    let SwappedHook::Link { link_pin } = &old.hook else {
        return Err(AgentError::internal("take_over_link needs a link"));
    };
    let fail = |what: &str, e: std::io::Error| {
        AgentError::for_program(
            Reason::AttachFailed,
            name.as_str(),
            format!("replacing the previous revision's program on {hook} ({what}): {e}"),
        )
    };
    let link = crate::kernel::obj_get(link_pin).map_err(|e| fail("opening its link", e))?;
    let new = crate::kernel::obj_get(program_pin).map_err(|e| fail("opening the new program", e))?;
    let expected = crate::kernel::obj_get(&old.old_program_pin).map_err(|e| fail("opening the old program", e))?;
    crate::kernel::link_update(link.as_fd(), new.as_fd(), Some(expected.as_fd()))
        .map_err(|e| fail("BPF_LINK_UPDATE", e))?;
    let pinned = PinnedLink::from_pin(link_pin).map_err(|e| {
        AgentError::for_program(Reason::AttachFailed, name.as_str(), format!("reopening the link on {hook}: {e}"))
    })?;
    keep_link(name.as_str(), FdLink::from(pinned), new_link_pin)
}

/// Replace the previous revision's clsact filter with `tc` at the same priority and
/// handle; returns the handle.
pub(super) fn take_over_filter(tc: &mut SchedClassifier, name: &ProgramName, old: &Replaced) -> Result<u32> {
    let SwappedHook::TcFilter { interface, direction, priority, handle } = &old.hook else {
        return Err(AgentError::internal("take_over_filter needs a clsact filter"));
    };
    let fail = |e: &dyn std::error::Error| {
        AgentError::for_program(
            Reason::AttachFailed,
            name.as_str(),
            format!("replacing the previous revision's clsact filter on {interface}: {}", chain(e)),
        )
    };
    let current = SchedClassifierLink::attached(interface, attach_type(*direction), *priority, (*handle).into(), None)
        .map_err(|e| fail(&e))?;
    let lid = tc.attach_to_link(current).map_err(|e| fail(&e))?;
    let link = tc.take_link(lid).map_err(|e| fail(&e))?;
    let handle = link.handle().map(u32::from).map_err(|e| fail(&e))?;
    // Dropping aya's handle would delete the filter: the record keeps track of it.
    std::mem::forget(link);
    Ok(handle)
}

/// Point a hook back at the previous revision's program (rollback of a take-over).
pub fn restore(r: &Replaced) -> Result<()> {
    let err = |what: String| AgentError::internal(format!("rollback: {what}"));
    match &r.hook {
        SwappedHook::Link { link_pin } => {
            let link = crate::kernel::obj_get(link_pin).map_err(|e| err(format!("{}: {e}", link_pin.display())))?;
            let old = crate::kernel::obj_get(&r.old_program_pin)
                .map_err(|e| err(format!("{}: {e}", r.old_program_pin.display())))?;
            crate::kernel::link_update(link.as_fd(), old.as_fd(), None).map_err(|e| err(format!("relinking: {e}")))
        }
        SwappedHook::TcFilter { interface, direction, priority, handle } => {
            let mut old = SchedClassifier::from_pin(&r.old_program_pin)
                .map_err(|e| err(format!("{}: {e}", r.old_program_pin.display())))?;
            let current =
                SchedClassifierLink::attached(interface, attach_type(*direction), *priority, (*handle).into(), None)
                    .map_err(|e| err(format!("{interface}: {e}")))?;
            let lid = old.attach_to_link(current).map_err(|e| err(format!("replacing the filter: {}", chain(&e))))?;
            let link = old.take_link(lid).map_err(|e| err(e.to_string()))?;
            std::mem::forget(link);
            Ok(())
        }
    }
}
