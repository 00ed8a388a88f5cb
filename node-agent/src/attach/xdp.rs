//! XDP: one link per interface. A new revision takes over the old revision's link with
//! an atomic program swap (BPF_LINK_UPDATE), so no packet goes unprocessed.

use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{Program, Xdp, XdpMode as AyaMode};
use crds::names::{InterfaceName, ProgramName};
use crds::program::{ProgramType, XdpMode};

use super::{AttachCtx, Replaced, Undo, interface_index, keep_link, load_error, pin_loaded, record, wrong_kind};
use crate::error::{AgentError, Reason, Result, chain, errno};
use crate::store::{LinkKind, LinkRecord};

pub(super) fn attach(
    program: &mut Program,
    name: &ProgramName,
    interfaces: &[InterfaceName],
    mode: XdpMode,
    ctx: &AttachCtx<'_>,
    pin: &Path,
    undo: &mut Vec<Undo>,
) -> Result<(u32, Vec<LinkRecord>)> {
    let xdp: &mut Xdp = program.try_into().map_err(|e| wrong_kind(name, e))?;
    xdp.load().map_err(load_error(name, ProgramType::Xdp))?;
    let id = pin_loaded!(xdp, name, pin);
    let mut links = Vec::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let ifindex = interface_index(name, iface.as_str())?;
        let path = ctx.link_pin(name, i);
        let link_id = match previous_link(ctx, iface.as_str()) {
            Some((old_link, old_prog)) => {
                let pinned = PinnedLink::from_pin(&old_link).map_err(|e| {
                    AgentError::for_program(Reason::AttachFailed, name.as_str(), format!("reopening XDP link: {e}"))
                })?;
                let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| attach_error(name, iface, e))?;
                let lid = xdp.attach_to_link(link).map_err(|e| attach_error(name, iface, e))?;
                let link = xdp.take_link(lid).map_err(|e| attach_error(name, iface, e))?;
                // From here the link runs the new program: remember how to undo it.
                undo.push(Undo::XdpSwap(Replaced { link_pin: path.clone(), old_program_pin: old_prog }));
                keep_link(name.as_str(), link, &path)?
            }
            None => {
                let lid = xdp.attach_to_if_index(ifindex, aya_mode(mode)).map_err(|e| match mode {
                    XdpMode::Native => AgentError::for_program(
                        Reason::AttachFailed,
                        name.as_str(),
                        format!("interface {iface} refused native XDP ({}); its driver may lack XDP support: use mode Generic or Auto", chain(&e)),
                    ),
                    _ => attach_error(name, iface, e),
                })?;
                let link = xdp.take_link(lid).map_err(|e| attach_error(name, iface, e))?;
                keep_link(name.as_str(), link, &path)?
            }
        };
        links.push(record(iface.as_str(), link_id, LinkKind::Pinned { path }));
    }
    Ok((id, links))
}

/// aya's attach mode for a spec's XDP mode.
pub(super) fn aya_mode(mode: XdpMode) -> AyaMode {
    match mode {
        XdpMode::Auto => AyaMode::Default,
        XdpMode::Native => AyaMode::Driver,
        XdpMode::Generic => AyaMode::Skb,
    }
}

/// The previous revision's XDP link on `iface` and the program it ran.
fn previous_link(ctx: &AttachCtx<'_>, iface: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let prev = ctx.previous?;
    prev.programs.iter().filter(|p| p.program_type == ProgramType::Xdp).find_map(|p| {
        p.links
            .iter()
            .find(|l| l.hook == iface)
            .and_then(|l| l.kind.pin().map(|pin| (pin.to_path_buf(), p.pin.clone())))
            .filter(|(link, _)| link.exists())
    })
}

/// Point a link back at a program (rollback of an in-place replacement).
pub fn restore(r: &Replaced) -> Result<()> {
    let pinned = PinnedLink::from_pin(&r.link_pin)
        .map_err(|e| AgentError::internal(format!("rollback: reopening {}: {e}", r.link_pin.display())))?;
    let link = XdpLink::try_from(FdLink::from(pinned))
        .map_err(|e| AgentError::internal(format!("rollback: {}: {e}", r.link_pin.display())))?;
    let mut old = Xdp::from_pin(&r.old_program_pin, aya_obj::programs::XdpAttachType::Interface)
        .map_err(|e| AgentError::internal(format!("rollback: reopening {}: {e}", r.old_program_pin.display())))?;
    let id = old.attach_to_link(link).map_err(|e| AgentError::internal(format!("rollback: relinking: {e}")))?;
    // The link stays pinned (old revision); the handle aya keeps must not detach it.
    let link = old.take_link(id).map_err(|e| AgentError::internal(format!("rollback: {e}")))?;
    let _ = FdLink::try_from(link);
    Ok(())
}

fn attach_error(name: &ProgramName, iface: &InterfaceName, e: impl std::error::Error + 'static) -> AgentError {
    let msg = chain(&e);
    let hint = if errno(&e) == Some(libc::EBUSY) {
        " (another XDP program is already attached to this interface)"
    } else {
        ""
    };
    AgentError::for_program(Reason::AttachFailed, name.as_str(), format!("attaching to interface {iface}: {msg}{hint}"))
}
