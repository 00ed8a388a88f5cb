//! XDP: one link per interface. A new revision takes over the old revision's link with
//! an atomic program swap (BPF_LINK_UPDATE, see `swap`), so no packet goes unprocessed.

use std::path::Path;

use aya::programs::{Program, Xdp, XdpMode as AyaMode};
use crds::names::{InterfaceName, ProgramName};
use crds::program::{ProgramType, XdpMode};

use super::{
    AttachCtx, Replaced, SwappedHook, Undo, interface_index, keep_link, load_error, pin_loaded, record, wrong_kind,
};
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
            Some(old) => {
                let id = super::swap::take_over_link(name, iface.as_str(), pin, &old, &path)?;
                // From here the link runs the new program: remember how to undo it.
                undo.push(Undo::Swap(old));
                id
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
fn previous_link(ctx: &AttachCtx<'_>, iface: &str) -> Option<Replaced> {
    let prev = ctx.previous?;
    prev.programs.iter().filter(|p| p.program_type == ProgramType::Xdp).find_map(|p| {
        p.links.iter().find(|l| l.hook == iface).and_then(|l| l.kind.pin()).filter(|link| link.exists()).map(|link| {
            Replaced { hook: SwappedHook::Link { link_pin: link.to_path_buf() }, old_program_pin: p.pin.clone() }
        })
    })
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
