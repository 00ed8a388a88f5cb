//! What the agent owns, written atomically next to bpffs so a new agent process can
//! adopt the pins a previous one left. bpffs holds only kernel objects (no regular
//! files), so the records live in a state directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crds::ProgramSpec;
use crds::names::OwnerUid;
use crds::program::{Direction, ProgramType};
use serde::{Deserialize, Serialize};

/// Everything of one owner that is running on this node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRecord {
    pub uid: String,
    pub name: String,
    pub revision: String,
    /// The programs as requested (for drift repair and for answering List).
    pub spec: Vec<ProgramSpec>,
    pub programs: Vec<ProgramRecord>,
    pub maps: Vec<MapRecord>,
    /// `sha256:<hex>` of the ELF object this revision was loaded from (absent in
    /// records written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytecode_digest: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgramRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub program_type: ProgramType,
    pub program_id: u32,
    pub pin: PathBuf,
    pub links: Vec<LinkRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinkRecord {
    /// The hook in words: an interface, `category/name`, `target:symbol`, a cgroup path.
    pub hook: String,
    pub link_id: u32,
    pub kind: LinkKind,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum LinkKind {
    /// A bpf_link pinned in bpffs.
    Pinned { path: PathBuf },
    /// A TCX link, pinned, with the priority used to order it.
    Tcx { path: PathBuf, interface: String, direction: Direction, priority: u16 },
    /// A clsact filter (no bpf_link exists on kernels without TCX): found again by
    /// interface, direction, priority and handle.
    TcNetlink { interface: String, direction: Direction, priority: u16, handle: u32 },
}

impl LinkKind {
    pub fn pin(&self) -> Option<&Path> {
        match self {
            LinkKind::Pinned { path } | LinkKind::Tcx { path, .. } => Some(path),
            LinkKind::TcNetlink { .. } => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MapRecord {
    pub name: String,
    pub pin_path: PathBuf,
}

/// Owner records, one JSON file each.
#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, uid: &OwnerUid) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    /// Replace the record atomically: a crash leaves either the old or the new one.
    pub fn save(&self, record: &OwnerRecord) -> std::io::Result<()> {
        let uid = OwnerUid::new(&record.uid).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{uid}.json.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(record)?)?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(&uid))?;
        fs::File::open(&self.dir)?.sync_all()
    }

    pub fn delete(&self, uid: &OwnerUid) -> std::io::Result<()> {
        match fs::remove_file(self.path(uid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable record; unreadable ones are reported and skipped (their pins are
    /// then unclaimed and cleaned up by recovery).
    pub fn load_all(&self) -> std::io::Result<Vec<OwnerRecord>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') {
                // An interrupted save: the rename never happened, the old record stands.
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<OwnerRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) if OwnerUid::new(&r.uid).is_ok() && name == format!("{}.json", r.uid) => out.push(r),
                Ok(_) => tracing::warn!(path = %path.display(), "owner record does not match its file name; ignored"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "unreadable owner record; ignored"),
            }
        }
        Ok(out)
    }
}
