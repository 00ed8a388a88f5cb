//! CgroupSkb: attached to a cgroup v2 directory with a bpf_link, so bpfleet's programs
//! coexist with each other and with programs others attach. A new revision of the same
//! program on the same cgroup and direction takes over the previous revision's link in
//! place (BPF_LINK_UPDATE, see `swap`).

use std::path::Path;

use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::CgroupAttachMode;
use aya::programs::{CgroupSkb, Program};
use crds::names::ProgramName;
use crds::program::{Direction, ProgramType};

use super::{AttachCtx, Replaced, SwappedHook, Undo, keep_link, load_error, pin_loaded, record};
use crate::error::{AgentError, Reason, Result, chain};
use crate::store::{LinkKind, LinkRecord};

pub(super) fn attach(
    program: &mut Program,
    name: &ProgramName,
    cgroup: &Path,
    direction: Direction,
    ctx: &AttachCtx<'_>,
    pin: &Path,
    undo: &mut Vec<Undo>,
) -> Result<(u32, Vec<LinkRecord>)> {
    let skb: &mut CgroupSkb = program.try_into().map_err(|e| super::wrong_kind(name, e))?;
    skb.load().map_err(load_error(name, ProgramType::CgroupSkb))?;
    let id = pin_loaded!(skb, name, pin);
    let hook = cgroup.display().to_string();
    let dir = std::fs::File::open(cgroup).map_err(|e| {
        AgentError::for_program(
            Reason::TargetNotFound,
            name.as_str(),
            format!("cgroup {hook} cannot be opened on this node ({e}); it must be a cgroup v2 directory"),
        )
    })?;
    let path = ctx.link_pin(name, 0);
    if let Some(old) = previous_link(ctx, name, &hook, direction) {
        let link_id = super::swap::take_over_link(name, &hook, pin, &old, &path)?;
        undo.push(Undo::Swap(old));
        return Ok((id, vec![record(hook, link_id, LinkKind::Pinned { path })]));
    }
    let attach_type = match direction {
        Direction::Ingress => CgroupSkbAttachType::Ingress,
        Direction::Egress => CgroupSkbAttachType::Egress,
    };
    // A bpf_link on a cgroup always coexists with other programs there; the kernel
    // refuses the legacy multi-attach flags with links, hence the default mode.
    let lid = skb.attach(&dir, attach_type, CgroupAttachMode::Single).map_err(|e| {
        AgentError::for_program(
            Reason::AttachFailed,
            name.as_str(),
            format!("attaching to cgroup {hook}: {}", chain(&e)),
        )
    })?;
    let link =
        skb.take_link(lid).map_err(|e| AgentError::for_program(Reason::AttachFailed, name.as_str(), e.to_string()))?;
    let link_id = keep_link(name.as_str(), link, &path)?;
    Ok((id, vec![record(hook, link_id, LinkKind::Pinned { path })]))
}

/// The previous revision's link of the same program on the same cgroup and direction.
fn previous_link(ctx: &AttachCtx<'_>, name: &ProgramName, hook: &str, direction: Direction) -> Option<Replaced> {
    let prev = ctx.previous?;
    let same_direction = prev
        .spec
        .iter()
        .any(|s| s.name == name.as_str() && s.cgroup_skb.as_ref().is_some_and(|c| c.direction == direction));
    let program = prev.programs.iter().find(|p| p.program_type == ProgramType::CgroupSkb && p.name == name.as_str())?;
    let link = program.links.iter().find(|l| l.hook == hook)?.kind.pin()?;
    (same_direction && link.exists()).then(|| Replaced {
        hook: SwappedHook::Link { link_pin: link.to_path_buf() },
        old_program_pin: program.pin.clone(),
    })
}
