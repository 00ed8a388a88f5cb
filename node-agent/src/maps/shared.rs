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
        match btf_types(elf, &p.name, &pin) {
            Ok(None) => {}
            Ok(Some((ours, theirs))) if ours.layouts == theirs.layouts => {}
            Ok(Some((ours, theirs))) => {
                return Err(mismatch(format!(
                    "spec.maps[{i}]: {}",
                    describe(&format!(
                        "their BTF types differ (key {} and value {} here, key {} and value {} there)",
                        ours.names.0, ours.names.1, theirs.names.0, theirs.names.1
                    ))
                )));
            }
            Err(why) => return Err(mismatch(format!("spec.maps[{i}]: {}", describe(&why)))),
        }
        out.insert(p.name.clone(), pin);
    }
    Ok(out)
}

/// A map's key and value types: their names (for messages) and layouts (compared).
struct Types {
    names: (String, String),
    layouts: (String, String),
}

fn types_of(btf: &mapview::Btf, key: u32, value: u32) -> std::result::Result<Types, String> {
    let layout = |id| btf.layout(id).map_err(|e| format!("its BTF cannot be compared: {e}"));
    Ok(Types { names: (btf.type_name(key), btf.type_name(value)), layouts: (layout(key)?, layout(value)?) })
}

/// The key and value types of map `name` in the object's BTF and of the map pinned at
/// `pin` in its kernel BTF; None when either side was made without BTF key and value types
/// (then the shapes alone are compared). BTF that one side has but that cannot be read
/// or compared is an error: a share is never let through unchecked.
fn btf_types(elf: &[u8], name: &str, pin: &std::path::Path) -> std::result::Result<Option<(Types, Types)>, String> {
    let Some(ours) = crate::elf::btf(elf)? else { return Ok(None) };
    let Some((Some(key), Some(value))) = ours.map_types(name) else { return Ok(None) };
    let fd = crate::kernel::obj_get(pin).map_err(|e| format!("the owner's map does not open: {e}"))?;
    let k = info::map_info(fd.as_fd()).map_err(|e| format!("the owner's map: {e}"))?;
    if k.btf_id == 0 || k.btf_key_type_id == 0 || k.btf_value_type_id == 0 {
        return Ok(None);
    }
    let blob = info::btf_blob(k.btf_id).map_err(|e| format!("the owner's map BTF: {e}"))?;
    let theirs = mapview::Btf::parse(&blob).map_err(|e| format!("the owner's map BTF: {e}"))?;
    Ok(Some((types_of(&ours, key, value)?, types_of(&theirs, k.btf_key_type_id, k.btf_value_type_id)?)))
}

/// Refuse to recreate or drop a map of `uid` pinned at `pin` that another owner uses;
/// `change` says what would happen to it ("would be recreated (…)", "is not in this revision").
pub fn check_not_used(
    records: &[OwnerRecord],
    uid: &str,
    name: &str,
    pin: &std::path::Path,
    change: &str,
) -> Result<()> {
    match records.iter().find(|r| r.uid != uid && r.maps.iter().any(|m| m.pin_path == pin)) {
        Some(user) => Err(mismatch(format!(
            "map {name} {change}, but BpfProgram {} uses it (spec.maps[].from): a shared map stays as it is \
             while used; change or remove its users first",
            user.name
        ))),
        None => Ok(()),
    }
}
