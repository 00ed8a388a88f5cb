//! Tracing hooks: tracepoints, raw tracepoints, kprobes, uprobes, fentry/fexit, LSM.
//! Missing hooks and kernels that refuse a type are reported as such, up front where
//! the kernel makes that knowable.

use std::path::Path;

use aya::programs::uprobe::{UProbeAttachLocation, UProbeError, UProbeScope};
use aya::programs::{FEntry, FExit, KProbe, Lsm, Program, RawTracePoint, TracePoint, UProbe};
use crds::names::ProgramName;
use crds::program::ProgramType;
use crds::validate::{Attach, UprobeTarget};

use super::{AttachCtx, keep_link, load_error, pin_loaded, record};
use crate::error::{AgentError, Reason, Result, chain, errno};
use crate::store::{LinkKind, LinkRecord};

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

pub(super) fn attach(
    program: &mut Program,
    name: &ProgramName,
    attach: &Attach,
    ctx: &AttachCtx<'_>,
    pin: &Path,
) -> Result<(u32, Vec<LinkRecord>)> {
    let t = attach.program_type();
    let wrong = |e: aya::programs::ProgramError| super::wrong_kind(name, e);
    let mut links = Vec::new();
    // Pin one link; `$hook` names it in records and messages.
    macro_rules! keep {
        ($prog:expr, $lid:expr, $hook:expr) => {{
            let link = $prog.take_link($lid).map_err(|e| attach_err(name, &$hook, e))?;
            let path = ctx.link_pin(name, links.len());
            let id = keep_link(name.as_str(), link, &path)?;
            links.push(record($hook, id, LinkKind::Pinned { path }));
        }};
    }
    let id = match attach {
        Attach::Tracepoint { names } => {
            let tp: &mut TracePoint = program.try_into().map_err(wrong)?;
            tp.load().map_err(load_error(name, t))?;
            let id = pin_loaded!(tp, name, pin);
            for n in names {
                let hook = n.to_string();
                check_tracepoint(name, &n.category, &n.name)?;
                let lid = tp.attach(&n.category, &n.name).map_err(|e| {
                    if errno(&e) == Some(libc::E2BIG) {
                        AgentError::for_program(
                            Reason::AttachFailed,
                            name.as_str(),
                            format!(
                                "tracepoint {hook} already runs 64 BPF programs, the kernel's limit per tracepoint"
                            ),
                        )
                    } else {
                        attach_err(name, &hook, e)
                    }
                })?;
                keep!(tp, lid, hook);
            }
            id
        }
        Attach::RawTracepoint { names } => {
            let tp: &mut RawTracePoint = program.try_into().map_err(wrong)?;
            tp.load().map_err(load_error(name, t))?;
            let id = pin_loaded!(tp, name, pin);
            for n in names {
                let lid = tp.attach(n).map_err(|e| hook_or_attach(name, n, "raw tracepoint", e))?;
                keep!(tp, lid, n.clone());
            }
            id
        }
        Attach::Kprobe { function, .. } | Attach::Kretprobe { function } => {
            let offset = if let Attach::Kprobe { offset, .. } = attach { *offset } else { 0 };
            // Known before loading anything: no kprobe PMU, no kprobes.
            if !kprobes_supported() {
                return Err(AgentError::for_program(
                    Reason::KernelUnsupported,
                    name.as_str(),
                    format!("this kernel does not support {t} programs: it was built without kprobes (CONFIG_KPROBES)"),
                ));
            }
            let kp: &mut KProbe = program.try_into().map_err(wrong)?;
            kp.load().map_err(load_error(name, t))?;
            let id = pin_loaded!(kp, name, pin);
            let lid = kp.attach(function, offset).map_err(|e| hook_or_attach(name, function, "kernel function", e))?;
            keep!(kp, lid, function.clone());
            id
        }
        Attach::Uprobe { probe, containers, .. } => {
            if let Some(pid) = probe.pid
                && !crate::kernel::in_host_pid_namespace()
            {
                return Err(AgentError::for_program(
                    Reason::InvalidSpec,
                    name.as_str(),
                    format!(
                        "uprobe.pid {pid} names a host process, but this agent does not run in the host's PID \
                         namespace: install bpfleet with agent.hostPID=true, or drop uprobe.pid to probe every process"
                    ),
                ));
            }
            let up: &mut UProbe = program.try_into().map_err(wrong)?;
            up.load().map_err(load_error(name, t))?;
            let id = pin_loaded!(up, name, pin);
            if containers.is_some() {
                // Probed inside each pod's containers (`pods`, `container`), not on the node.
                return Ok((id, links));
            }
            let hook = uprobe_hook(probe);
            // The node's file, resolved inside the host root; aya and the kernel get
            // the open file itself, so nothing can swap it between check and attach.
            let target = open_target(probe).map_err(|e| AgentError { program: Some(name.to_string()), ..e })?;
            let (location, scope) = uprobe_place(probe);
            let lid = up.attach(location, target.fd_path(), scope).map_err(|e| match &e {
                aya::programs::ProgramError::UProbeError(
                    UProbeError::SymbolError { .. } | UProbeError::InvalidTarget { .. },
                ) => AgentError::for_program(
                    Reason::TargetNotFound,
                    name.as_str(),
                    format!("uprobe {hook}: {}", chain(&e)),
                ),
                _ => attach_err(name, &hook, e),
            })?;
            keep!(up, lid, hook);
            id
        }
        Attach::Fentry { function } | Attach::Fexit { function } => {
            let btf = require_btf(name, t, ctx)?;
            let hook = function.clone();
            if t == ProgramType::Fentry {
                let p: &mut FEntry = program.try_into().map_err(wrong)?;
                p.load(function, btf).map_err(trampoline_load(name, t, function))?;
                let id = pin_loaded!(p, name, pin);
                let lid = p.attach().map_err(|e| attach_err(name, &hook, e))?;
                keep!(p, lid, hook);
                id
            } else {
                let p: &mut FExit = program.try_into().map_err(wrong)?;
                p.load(function, btf).map_err(trampoline_load(name, t, function))?;
                let id = pin_loaded!(p, name, pin);
                let lid = p.attach().map_err(|e| attach_err(name, &hook, e))?;
                keep!(p, lid, hook);
                id
            }
        }
        Attach::Lsm { hook } => {
            let btf = require_btf(name, t, ctx)?;
            let p: &mut Lsm = program.try_into().map_err(wrong)?;
            p.load(hook, btf).map_err(trampoline_load(name, t, hook))?;
            let id = pin_loaded!(p, name, pin);
            let lid = p.attach().map_err(|e| attach_err(name, hook, e))?;
            keep!(p, lid, hook.clone());
            id
        }
        _ => return Err(AgentError::internal(format!("{t} is not a tracing program type"))),
    };
    Ok((id, links))
}

/// Where in the target a uprobe goes, and for which processes.
pub(super) fn uprobe_place(p: &UprobeTarget) -> (UProbeAttachLocation<'_>, UProbeScope) {
    let location = match (&p.symbol, p.offset) {
        (Some(s), 0) => UProbeAttachLocation::Symbol(s),
        (Some(s), off) => UProbeAttachLocation::SymbolOffset(s, off),
        (None, off) => UProbeAttachLocation::AbsoluteOffset(off),
    };
    let scope = match p.pid.and_then(|p| u32::try_from(p).ok()).and_then(std::num::NonZeroU32::new) {
        Some(pid) => UProbeScope::OneProcess(pid),
        None => UProbeScope::AllProcesses,
    };
    (location, scope)
}

/// The uprobe's target file on the node (see `hostfs`), open for as long as the caller
/// attaches through [`crate::hostfs::NodeFile::fd_path`].
pub(super) fn open_target(p: &UprobeTarget) -> Result<crate::hostfs::NodeFile> {
    crate::hostfs::host_root().open(&p.target, crate::hostfs::Use::UprobeTarget)
}

/// `target:symbol+offset`, for records and messages.
pub fn uprobe_hook(p: &UprobeTarget) -> String {
    let mut s = p.target.display().to_string();
    if let Some(sym) = &p.symbol {
        s = format!("{s}:{sym}");
    }
    if p.offset != 0 {
        s = format!("{s}+{:#x}", p.offset);
    }
    if let Some(pid) = p.pid {
        s = format!("{s} (pid {pid})");
    }
    s
}

/// Whether the kernel can create kprobes at all (the perf PMU exists).
pub fn kprobes_supported() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

fn check_tracepoint(name: &ProgramName, category: &str, event: &str) -> Result<()> {
    let mounted: Vec<&str> = TRACEFS.iter().copied().filter(|t| Path::new(t).join("events").is_dir()).collect();
    if mounted.is_empty() {
        return Ok(()); // let the kernel answer; aya mounts nothing itself
    }
    if mounted.iter().any(|t| Path::new(t).join("events").join(category).join(event).is_dir()) {
        return Ok(());
    }
    Err(AgentError::for_program(
        Reason::HookNotFound,
        name.as_str(),
        format!("tracepoint {category}/{event} does not exist on this kernel (see {}/events/)", mounted[0]),
    ))
}

fn require_btf<'a>(name: &ProgramName, t: ProgramType, ctx: &AttachCtx<'a>) -> Result<&'a aya::Btf> {
    ctx.btf.ok_or_else(|| {
        AgentError::for_program(
            Reason::KernelUnsupported,
            name.as_str(),
            format!("{t} programs need the kernel's BTF (/sys/kernel/btf/vmlinux), which this node lacks"),
        )
    })
}

/// Fentry/Fexit/Lsm load errors: a function missing from BTF is a missing hook; a
/// refusal is the kernel not allowing the type.
fn trampoline_load<'a>(
    name: &'a ProgramName,
    t: ProgramType,
    target: &'a str,
) -> impl FnOnce(aya::programs::ProgramError) -> AgentError + 'a {
    move |e| {
        if matches!(e, aya::programs::ProgramError::Btf(_)) {
            let msg = chain(&e);
            let what = if t == ProgramType::Lsm { "LSM hook" } else { "kernel function" };
            return AgentError::for_program(
                Reason::HookNotFound,
                name.as_str(),
                format!("{what} {target:?} is not in this kernel's BTF: {msg}"),
            );
        }
        load_error(name, t)(e)
    }
}

fn hook_or_attach(name: &ProgramName, target: &str, what: &str, e: impl std::error::Error + 'static) -> AgentError {
    let msg = chain(&e);
    if errno(&e) == Some(libc::ENOENT) {
        AgentError::for_program(
            Reason::HookNotFound,
            name.as_str(),
            format!("{what} {target:?} does not exist on this kernel: {msg}"),
        )
    } else {
        attach_err(name, target, e)
    }
}

fn attach_err(name: &ProgramName, hook: &str, e: impl std::error::Error) -> AgentError {
    AgentError::for_program(Reason::AttachFailed, name.as_str(), format!("attaching to {hook}: {}", chain(&e)))
}
