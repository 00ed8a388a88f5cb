//! Pinned maps as the kernel shows them, and moving a recreated map into place. aya
//! reopens a pinned map by path without comparing it to the ELF's definition, so
//! `apply_plan::maps` compares the two shapes before anything is loaded.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use crds::names::OwnerUid;
use crds::pins::PinLayout;
use crds::revision::Revision;

use crate::elf::MapDef;
use crate::error::{AgentError, Reason, Result};

/// The shape of the map pinned at `path`.
pub fn pinned_def(path: &Path, name: &str) -> Result<MapDef> {
    let info = MapInfo::from_pin(path).map_err(|e| {
        AgentError::new(
            Reason::MapMismatch,
            format!("cannot open pinned map {name} at {}: {e}; remove the pin or the BpfProgram", path.display()),
        )
    })?;
    Ok(MapDef {
        // The raw kernel type number, so unknown types compare too.
        map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Where a revision's recreated maps wait for its commit: inside the revision's
/// directory, so a failed apply takes them away with the rest.
pub fn staging_dir(layout: &PinLayout, owner: &OwnerUid, revision: &Revision) -> PathBuf {
    layout.revision_dir(owner, revision).join("maps")
}

/// Move a revision's recreated maps over the owner's pins (at its commit, or at start-up
/// when the agent died between the commit and the move). A rename in bpffs replaces the
/// old pin atomically; the previous revision's programs keep their map by reference.
pub fn promote_staged(layout: &PinLayout, owner: &OwnerUid, revision: &Revision) -> std::io::Result<Vec<String>> {
    let staging = staging_dir(layout, owner, revision);
    let entries = match std::fs::read_dir(&staging) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut moved = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        std::fs::rename(entry.path(), layout.maps_dir(owner).join(&name))?;
        moved.push(name.to_string_lossy().to_string());
    }
    std::fs::remove_dir(&staging)?;
    Ok(moved)
}

pub mod dump;
pub mod info;
pub mod shared;
