//! Maps used from another owner (`spec.maps[].from`): found where that owner pinned them,
//! and checked against this object's definition before anything loads — the same type,
//! key and value sizes, entries and flags, and the same BTF key and value types when both
//! sides have them. An owner never recreates a map another owner uses.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crds::names::{MapName, OwnerUid};
use crds::pins::PinLayout;
use crds::rollout::MapPolicy;

use super::{dump, info};
use crate::elf::MapDef;
use crate::error::{AgentError, Reason, Result};
use crate::store::OwnerRecord;

fn mismatch(message: String) -> AgentError {
    AgentError::new(Reason::MapMismatch, message)
}

/// A map's shape in words: `Hash, key 4 bytes, value 8 bytes, 1024 entries, flags 0x0`.
fn shape(d: &MapDef) -> String {
    format!(
        "{}, key {} bytes, value {} bytes, {} entries, flags {:#x}",
        dump::type_name(d.map_type),
        d.key_size,
        d.value_size,
        d.max_entries,
        d.flags
    )
}

/// Where each map of `policies` with `from` is pinned (by this object's map name), checked
/// against this object (`object`, its `.BTF` in `elf`). `owners`: each owning program's uid
/// by name, as the operator resolved it.
pub fn resolve(
    layout: &PinLayout,
    policies: &[MapPolicy],
    owners: &BTreeMap<String, OwnerUid>,
    object: &BTreeMap<String, MapDef>,
    elf: &[u8],
) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        let Some(from) = &p.from else { continue };
        let Some(ours) = object.get(&p.name) else {
            let names: Vec<&str> = object.keys().map(String::as_str).collect();
            return Err(AgentError::new(
                Reason::InvalidSpec,
                format!("spec.maps[{i}].name: the object has no map {:?} (its maps: {})", p.name, names.join(", ")),
            ));
        };
        let owner = owners.get(&from.program).ok_or_else(|| {
            AgentError::new(
                Reason::InvalidSpec,
                format!(
                    "spec.maps[{i}].from: no uid was sent for BpfProgram {} (an operator older than from?)",
                    from.program
                ),
            )
        })?;
        let map = MapName::new(&from.map)
            .map_err(|e| AgentError::new(Reason::InvalidSpec, format!("spec.maps[{i}].from.map: {e}")))?;
        let pin = layout.map(owner, &map);
        if !pin.exists() {
            return Err(mismatch(format!(
                "spec.maps[{i}].from: BpfProgram {} has no map {} on this node: it must run here (with that map) \
                 wherever this program runs",
                from.program, from.map
            )));
        }
        let theirs = super::pinned_def(&pin, &from.map)?;
        let describe = |what: &str| {
            format!(
                "this object's map {} ({}) cannot use BpfProgram {}'s map {} ({}): {what}",
                p.name,
                shape(ours),
                from.program,
                from.map,
                shape(&theirs)
            )
        };
        if theirs != *ours {
            return Err(mismatch(format!("spec.maps[{i}]: {}", describe("their shapes must be the same"))));
        }
        if let Some((our_types, their_types)) = btf_types(elf, &p.name, &pin)
            && our_types != their_types
        {
            return Err(mismatch(format!(
                "spec.maps[{i}]: {}",
                describe(&format!(
                    "their BTF types differ (key {} and value {} here, key {} and value {} there)",
                    our_types.0, our_types.1, their_types.0, their_types.1
                ))
            )));
        }
        out.insert(p.name.clone(), pin);
    }
    Ok(out)
}

/// The key and value type names of map `name` in the object's BTF and of the map pinned
/// at `pin` in its kernel BTF, when both have them.
fn btf_types(elf: &[u8], name: &str, pin: &std::path::Path) -> Option<((String, String), (String, String))> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).ok()?;
    let ours = mapview::Btf::parse(file.section_by_name(".BTF")?.data().ok()?).ok()?;
    let (Some(key), Some(value)) = ours.map_types(name)? else { return None };
    let fd = crate::kernel::obj_get(pin).ok()?;
    let k = info::map_info(fd.as_fd()).ok()?;
    if k.btf_id == 0 || k.btf_value_type_id == 0 {
        return None;
    }
    let theirs = mapview::Btf::parse(&info::btf_blob(k.btf_id).ok()?).ok()?;
    Some((
        (ours.type_name(key), ours.type_name(value)),
        (theirs.type_name(k.btf_key_type_id), theirs.type_name(k.btf_value_type_id)),
    ))
}

/// Refuse to recreate a map of `uid` pinned at `pin` that another owner uses.
pub fn check_not_used(records: &[OwnerRecord], uid: &str, name: &str, pin: &std::path::Path, why: &str) -> Result<()> {
    match records.iter().find(|r| r.uid != uid && r.maps.iter().any(|m| m.pin_path == pin)) {
        Some(user) => Err(mismatch(format!(
            "map {name} would be recreated ({why}), but BpfProgram {} uses it (spec.maps[].from): a shared map \
             keeps its shape; change or remove its users first",
            user.name
        ))),
        None => Ok(()),
    }
}
