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

/// The newest owner-record format this agent reads. A record of a newer format (written
/// by a newer agent, before a downgrade) is set aside, never guessed at.
///
/// Format 2 adds `pods` (links inside pods). A record is written in the oldest format that
/// holds it (see [`OwnerRecord::format`]): one without pods stays format 1, which agents
/// from before pods read as ever; one with pods is format 2, which they set aside (keeping
/// every pin) rather than run an owner whose pod links they cannot see or detach.
pub const SCHEMA_VERSION: u32 = 2;

fn first_schema() -> u32 {
    1
}

/// Everything of one owner that is running on this node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRecord {
    /// Format of this record (records from before the field existed are version 1).
    #[serde(default = "first_schema")]
    pub schema: u32,
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
    /// Maps this revision could not take over from the one it replaced and started
    /// empty, with why (e.g. "counts: value size 8 -> 16, recreated empty").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps_recreated: Vec<String>,
    /// The pods of the last Apply that programs with `pods` attach in, with their links
    /// (under `<revision>/pods/<pod-uid>/`) or why not (format 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodRecord>,
    /// `spec.metrics` of this revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<crds::metrics::MetricSpec>,
}

impl OwnerRecord {
    /// The oldest record format that holds this record (see [`SCHEMA_VERSION`]).
    pub fn format(&self) -> u32 {
        if self.pods.is_empty() { 1 } else { 2 }
    }
}

/// One pod an owner's programs attach in, as the last Apply (or recovery) left it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// metadata.uid (a `PodUid`: it names the pod's pin directory).
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The owner's programs the request named for this pod, in request order.
    pub programs: Vec<String>,
    /// The pod's containers the request named, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// The pod's network namespace as the container runtime named it when the links were
    /// made; a clsact filter (no pin) is removed by entering it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<PodLinkRecord>,
    /// Why not every program named is attached on each of its interfaces; None when they
    /// all are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<PodFailure>,
}

/// One link of a program inside a pod: the program, the interface's index in its list
/// (a container's, in the pod's), and the link as on the node (`hook` is the pod's
/// interface name, or the container's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodLinkRecord {
    pub program: String,
    pub index: usize,
    pub link: LinkRecord,
    /// A uprobe's: the runtime's id of the container it probes. The probe goes when that
    /// container stops (a restarted container has a new id, and gets a new probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Why a pod is not (fully) attached: a `Reason` name and words.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodFailure {
    pub reason: String,
    pub message: String,
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
        let mut value = serde_json::to_value(record)?;
        value["schema"] = record.format().into();
        f.write_all(&serde_json::to_vec_pretty(&value)?)?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(&uid))?;
        fs::File::open(&self.dir)?.sync_all()
    }

    pub fn delete(&self, uid: &OwnerUid) -> std::io::Result<()> {
        self.forget_set_aside(uid);
        match fs::remove_file(self.path(uid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable record, and the owners whose record could not be used: unreadable,
    /// corrupt, or of a newer format. Those files are moved to `set-aside/` (kept for a
    /// person to look at), and their owners' pins must stay: a record is never a reason
    /// to detach.
    pub fn load_all(&self) -> std::io::Result<Loaded> {
        let mut out = Loaded::default();
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
            let Ok(uid) = OwnerUid::new(name.trim_end_matches(".json")) else {
                tracing::warn!(path = %path.display(), "a file in the state directory that names no owner; ignored");
                continue;
            };
            match parse_record(&path) {
                Ok(r) if r.uid == uid.as_str() => out.records.push(r),
                Ok(r) => out.set_aside.push(self.set_aside(uid, &path, format!("it names owner {:?}", r.uid))),
                Err(why) => out.set_aside.push(self.set_aside(uid, &path, why)),
            }
        }
        // Owners set aside by an earlier start stay set aside (their pins are still not
        // ours to remove) until a new record is written for them or they are removed.
        for (uid, kept) in self.set_aside_files() {
            if out.records.iter().any(|r| r.uid == uid.as_str()) || out.set_aside.iter().any(|s| s.uid == uid) {
                continue;
            }
            let reason = format!(
                "its owner record was set aside at an earlier start (kept at {}); its pins were left in place",
                kept.display()
            );
            out.set_aside.push(SetAside { uid, reason });
        }
        Ok(out)
    }

    /// Set-aside records: (owner, file).
    fn set_aside_files(&self) -> Vec<(OwnerUid, PathBuf)> {
        let Ok(rd) = fs::read_dir(self.dir.join("set-aside")) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let uid = OwnerUid::new(name.split(".json").next()?).ok()?;
                Some((uid, e.path()))
            })
            .collect()
    }

    /// The owner was removed (or got a new record): its set-aside records are no longer a
    /// claim on anything.
    pub fn forget_set_aside(&self, uid: &OwnerUid) {
        for (u, path) in self.set_aside_files() {
            if &u == uid {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Move an unusable record out of the way and say why.
    fn set_aside(&self, uid: OwnerUid, path: &Path, why: String) -> SetAside {
        let dir = self.dir.join("set-aside");
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let kept = dir.join(format!("{uid}.json.{stamp}"));
        let moved = fs::create_dir_all(&dir).and_then(|_| fs::rename(path, &kept));
        let where_ = match moved {
            Ok(()) => kept.display().to_string(),
            Err(_) => path.display().to_string(),
        };
        let reason = format!("its owner record cannot be used ({why}); kept at {where_}; its pins were left in place");
        tracing::error!(uid = %uid, %reason, "owner record set aside");
        SetAside { uid, reason }
    }
}

/// What `load_all` found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<OwnerRecord>,
    pub set_aside: Vec<SetAside>,
}

/// An owner whose record could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    pub uid: OwnerUid,
    pub reason: String,
}

/// Read one record: its format version first, so a newer format is named as such
/// rather than misread.
fn parse_record(path: &Path) -> Result<OwnerRecord, String> {
    let bytes = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    parse_record_bytes(&bytes)
}

/// A record file's contents as a record, or why it cannot be used.
pub fn parse_record_bytes(bytes: &[u8]) -> Result<OwnerRecord, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("corrupt: {e}"))?;
    let schema = value.get("schema").and_then(|v| v.as_u64()).unwrap_or(1);
    if schema > u64::from(SCHEMA_VERSION) {
        return Err(format!("format {schema} is newer than this agent's {SCHEMA_VERSION}"));
    }
    serde_json::from_value(value).map_err(|e| format!("corrupt: {e}"))
}
