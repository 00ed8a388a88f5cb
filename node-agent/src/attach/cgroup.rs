//! CgroupSkb: attached to a cgroup v2 directory with a bpf_link, so bpfleet's programs
//! coexist with each other and with programs others attach.

use std::path::Path;

use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::CgroupAttachMode;
use aya::programs::{CgroupSkb, Program};
use crds::names::ProgramName;
use crds::program::{Direction, ProgramType};

use super::{AttachCtx, keep_link, load_error, pin_loaded, record};
use crate::error::{AgentError, Reason, Result, chain};
use crate::store::{LinkKind, LinkRecord};

pub(super) fn attach(
    program: &mut Program,
    name: &ProgramName,
    cgroup: &Path,
    direction: Direction,
    ctx: &AttachCtx<'_>,
    pin: &Path,
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
    let path = ctx.link_pin(name, 0);
    let link_id = keep_link(name.as_str(), link, &path)?;
    Ok((id, vec![record(hook, link_id, LinkKind::Pinned { path })]))
}
