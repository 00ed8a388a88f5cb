//! Loading one program of an object and attaching it to each of its hooks. Every link
//! is pinned as soon as it exists, so the revision directory always holds exactly what
//! is attached: removing the directory detaches it all, even after a crash.

mod cgroup;
pub mod container;
pub mod in_pod;
pub mod netns;
pub mod pod;
mod probes;
mod repair;
mod swap;
mod tc;
mod xdp;

use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{ProgramError, TcAttachType};
use aya::{Btf, Ebpf};
use crds::names::{OwnerUid, ProgramName};
use crds::pins::PinLayout;
use crds::program::{Direction, ProgramType};
use crds::revision::Revision;
use crds::validate::{Attach, ValidProgram};

use crate::error::{AgentError, Reason, Result};
use crate::loader::classify_program_error;
use crate::store::{LinkRecord, OwnerRecord, ProgramRecord};

pub use repair::reattach;
pub use tc::TcBackend;

/// A TC program of any owner, for ordering a new one by priority.
#[derive(Clone, Debug)]
pub struct TcPeer {
    pub interface: String,
    pub direction: Direction,
    pub priority: u16,
    pub program_id: u32,
}

pub use swap::{Replaced, SwappedHook, restore};

/// What an apply changed outside its revision directory, so a failed apply can undo it
/// (removing the directory undoes the rest: pinned links go with their pins).
#[derive(Clone, Debug)]
pub enum Undo {
    /// Switch a hook the new revision took over in place (an XDP or TCX link, a clsact
    /// filter) back to the previous revision's program.
    Swap(Replaced),
    /// Remove a clsact filter (it has no pin, so nothing else would).
    TcFilter { interface: String, direction: Direction, priority: u16, handle: u32 },
}

impl Undo {
    /// Carry the undo out; failures are logged (a rollback goes on with the rest).
    pub fn run(&self) {
        let r = match self {
            Undo::Swap(r) => swap::restore(r),
            Undo::TcFilter { interface, direction, priority, handle } => {
                tc::detach_netlink(interface, *direction, *priority, *handle)
            }
        };
        if let Err(e) = r {
            tracing::error!(undo = ?self, error = %e, "rollback step failed");
        }
    }
}

pub struct AttachCtx<'a> {
    pub layout: &'a PinLayout,
    pub owner: &'a OwnerUid,
    pub revision: &'a Revision,
    pub btf: Option<&'a Btf>,
    /// The revision this owner runs now, if any.
    pub previous: Option<&'a OwnerRecord>,
    pub tc_peers: &'a [TcPeer],
    pub tc_backend: TcBackend,
}

impl AttachCtx<'_> {
    fn link_pin(&self, program: &ProgramName, index: usize) -> PathBuf {
        self.layout.link(self.owner, self.revision, program, index)
    }
}

/// Load `p` from `ebpf`, pin it, attach it everywhere its spec says, pin the links.
pub fn load_and_attach(
    ebpf: &mut Ebpf,
    p: &ValidProgram,
    ctx: &AttachCtx<'_>,
    undo: &mut Vec<Undo>,
) -> Result<ProgramRecord> {
    let name = p.name.as_str();
    let program = ebpf.program_mut(name).ok_or_else(|| {
        AgentError::for_program(Reason::ProgramNotFound, name, format!("function {name:?} is not in the object"))
    })?;
    let pin = ctx.layout.program(ctx.owner, ctx.revision, &p.name);
    let links_dir = ctx.layout.links_dir(ctx.owner, ctx.revision).join(name);
    for dir in [pin.parent(), Some(links_dir.as_path())].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| pin_error(name, dir, e))?;
    }
    // XDP, TC and uprobe attaches wait in the kernel for an RCU grace period, the first
    // time this thread sleeps since the Apply arrived (or since the previous program's
    // attach). Tasks woken on this CPU meanwhile (the runtime worker that took over this
    // thread's tasks, a local client going back to wait for the answer) would run just
    // then, as the grace period starts, and cost it a scheduler tick (4 ms at HZ=250) in a
    // quarter to a third of the attaches. They run now.
    std::thread::yield_now();
    let (program_id, links) = match &p.attach {
        Attach::Xdp { interfaces, mode, in_pods } => {
            xdp::attach(program, &p.name, on_node(interfaces, *in_pods), *mode, ctx, &pin, undo)?
        }
        Attach::Tc { interfaces, direction, priority, in_pods } => {
            let interfaces = on_node(interfaces, *in_pods);
            tc::attach(program, &p.name, interfaces, (*direction, *priority), ctx, &pin, undo)?
        }
        Attach::CgroupSkb { cgroup, direction } => {
            cgroup::attach(program, &p.name, cgroup, *direction, ctx, &pin, undo)?
        }
        other => probes::attach(program, &p.name, other, ctx, &pin)?,
    };
    Ok(ProgramRecord { name: name.to_string(), program_type: p.attach.program_type(), program_id, pin, links })
}

/// The node's interfaces a program attaches to: none for one that attaches inside pods
/// (`in_pods`: the interfaces are each pod's, attached by `in_pod` per pod), which is
/// loaded and pinned here like any other, never linked on the node's interfaces of the
/// same names.
fn on_node(interfaces: &[crds::names::InterfaceName], in_pods: bool) -> &[crds::names::InterfaceName] {
    if in_pods { &[] } else { interfaces }
}

/// Pin a link and return its kernel id.
fn keep_link<L>(program: &str, link: L, path: &Path) -> Result<u32>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let fd = FdLink::try_from(link).map_err(|e| {
        AgentError::for_program(Reason::AttachFailed, program, format!("the kernel gave no bpf_link to pin: {e}"))
    })?;
    let id = fd
        .info()
        .map_err(|e| AgentError::for_program(Reason::Internal, program, format!("reading link info: {e}")))?
        .id();
    fd.pin(path).map_err(|e| pin_error(program, path, e))?;
    Ok(id)
}

fn pin_error(program: &str, path: &Path, e: impl std::error::Error) -> AgentError {
    let msg = crate::error::chain(&e);
    AgentError::for_program(Reason::PinFailed, program, format!("cannot pin at {}: {msg}", path.display()))
}

/// The function's ELF section declares another program type than the spec's.
fn wrong_kind(name: &ProgramName, e: impl std::fmt::Display) -> AgentError {
    AgentError::for_program(
        Reason::InvalidSpec,
        name.as_str(),
        format!("the function's ELF section does not match its type: {e}"),
    )
}

/// Load errors, classified with the program's type.
fn load_error(program: &ProgramName, t: ProgramType) -> impl FnOnce(ProgramError) -> AgentError + '_ {
    move |e| classify_program_error(program.as_str(), Some(t), e)
}

/// Pin a loaded program and read its kernel id. `$prog` is a concrete aya program.
macro_rules! pin_loaded {
    ($prog:expr, $name:expr, $pin:expr) => {{
        $prog.pin($pin).map_err(|e| crate::attach::pin_error($name.as_str(), $pin, e))?;
        $prog
            .info()
            .map_err(|e| {
                crate::error::AgentError::for_program(
                    crate::error::Reason::Internal,
                    $name.as_str(),
                    format!("reading program info: {e}"),
                )
            })?
            .id()
    }};
}
use pin_loaded;

/// A hook a program was attached to, as recorded.
fn record(hook: impl Into<String>, link_id: u32, kind: crate::store::LinkKind) -> LinkRecord {
    LinkRecord { hook: hook.into(), link_id, kind }
}

/// The clsact side of a TC direction (TCX and netlink filters alike).
fn attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

/// The interface must exist before anything is attached: a clear error, not ENODEV.
fn interface_index(program: &ProgramName, iface: &str) -> Result<u32> {
    crate::kernel::ifindex(iface).ok_or_else(|| {
        AgentError::for_program(
            Reason::InterfaceNotFound,
            program.as_str(),
            format!("interface {iface:?} does not exist on this node"),
        )
    })
}

pub use tc::detach_netlink as detach_tc_netlink;
