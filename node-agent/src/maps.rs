//! Pinned-map reuse. aya reopens a pinned map by path without comparing it to the ELF's
//! definition; a program then runs against a map of the wrong shape. Refuse that.

use std::path::Path;

use aya::maps::MapInfo;

use crate::elf::MapDef;
use crate::error::{AgentError, Reason, Result};

pub fn check_pinned(path: &Path, name: &str, want: &MapDef) -> Result<()> {
    let info = MapInfo::from_pin(path).map_err(|e| {
        AgentError::new(Reason::MapMismatch, format!("cannot open pinned map {name} at {}: {e}", path.display()))
    })?;
    // The raw kernel type number, so unknown types compare too.
    let have_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    let have = MapDef {
        map_type: have_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    };
    let mut diffs = Vec::new();
    let mut cmp = |what: &str, pinned: u32, elf: u32| {
        if pinned != elf {
            diffs.push(format!("{what} {pinned} pinned vs {elf} in the object"));
        }
    };
    cmp("type", have.map_type, want.map_type);
    cmp("key size", have.key_size, want.key_size);
    cmp("value size", have.value_size, want.value_size);
    cmp("max entries", have.max_entries, want.max_entries);
    if diffs.is_empty() {
        return Ok(());
    }
    Err(AgentError::new(
        Reason::MapMismatch,
        format!(
            "map {name} is already pinned at {} with a different definition ({}); remove the BpfProgram first or rename the map",
            path.display(),
            diffs.join(", ")
        ),
    ))
}
