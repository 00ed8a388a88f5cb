//! The bpffs layout, in one place for the agent, its recovery and the tests:
//!
//! ```text
//! <root>/<owner-uid>/owner.json                 metadata, written atomically
//! <root>/<owner-uid>/maps/<map>                 maps, kept across revisions
//! <root>/<owner-uid>/<revision>/progs/<program>
//! <root>/<owner-uid>/<revision>/links/<program>/<n>
//! <root>/<owner-uid>/<revision>/pods/<pod-uid>/<program>/<n>
//! ```
//!
//! bpffs refuses names containing '.', so no component has one.
//! Links inside pods (`xdp.pods`, `tc.pods`) live in their revision too, one directory
//! per pod: a pod that goes takes its directory with it, and a revision that goes takes
//! every pod's links with it. `<n>` is the interface's index in the program's list, as
//! for the node's links (interface names may hold '.').
//! Maps live at the owner level so a new revision keeps the counters and state of the
//! old one (a pinned map is reused only if its definition matches).

use std::path::{Path, PathBuf};

use crate::names::{MapName, OwnerUid, PodUid, ProgramName};
use crate::revision::Revision;

/// Default bpffs root of an agent.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/bpfleet";
/// Name of the per-owner metadata file.
pub const OWNER_METADATA: &str = "owner.json";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn owner_dir(&self, owner: &OwnerUid) -> PathBuf {
        self.root.join(owner.as_str())
    }

    pub fn metadata(&self, owner: &OwnerUid) -> PathBuf {
        self.owner_dir(owner).join(OWNER_METADATA)
    }

    pub fn maps_dir(&self, owner: &OwnerUid) -> PathBuf {
        self.owner_dir(owner).join("maps")
    }

    pub fn map(&self, owner: &OwnerUid, map: &MapName) -> PathBuf {
        self.maps_dir(owner).join(map.as_str())
    }

    pub fn revision_dir(&self, owner: &OwnerUid, rev: &Revision) -> PathBuf {
        self.owner_dir(owner).join(rev.as_str())
    }

    pub fn program(&self, owner: &OwnerUid, rev: &Revision, prog: &ProgramName) -> PathBuf {
        self.revision_dir(owner, rev).join("progs").join(prog.as_str())
    }

    pub fn links_dir(&self, owner: &OwnerUid, rev: &Revision) -> PathBuf {
        self.revision_dir(owner, rev).join("links")
    }

    /// The `index`-th link of a program (one per interface or tracepoint).
    pub fn link(&self, owner: &OwnerUid, rev: &Revision, prog: &ProgramName, index: usize) -> PathBuf {
        self.links_dir(owner, rev).join(prog.as_str()).join(index.to_string())
    }

    /// Every pod's links of one revision.
    pub fn pods_dir(&self, owner: &OwnerUid, rev: &Revision) -> PathBuf {
        self.revision_dir(owner, rev).join("pods")
    }

    /// One pod's links of one revision.
    pub fn pod_dir(&self, owner: &OwnerUid, rev: &Revision, pod: &PodUid) -> PathBuf {
        self.pods_dir(owner, rev).join(pod.as_str())
    }

    /// The link of a program on the `index`-th interface of its list, inside a pod.
    pub fn pod_link(
        &self,
        owner: &OwnerUid,
        rev: &Revision,
        pod: &PodUid,
        prog: &ProgramName,
        index: usize,
    ) -> PathBuf {
        self.pod_dir(owner, rev, pod).join(prog.as_str()).join(index.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_rooted_and_structured() {
        let l = PinLayout::new("/sys/fs/bpf/t");
        let o = OwnerUid::new("abc-1").unwrap();
        let r = Revision::parse("0123456789abcdef").unwrap();
        let p = ProgramName::new("count").unwrap();
        assert_eq!(l.program(&o, &r, &p), Path::new("/sys/fs/bpf/t/abc-1/0123456789abcdef/progs/count"));
        assert_eq!(l.link(&o, &r, &p, 2), Path::new("/sys/fs/bpf/t/abc-1/0123456789abcdef/links/count/2"));
        assert_eq!(l.map(&o, &MapName::new("m").unwrap()), Path::new("/sys/fs/bpf/t/abc-1/maps/m"));
        assert_eq!(l.metadata(&o), Path::new("/sys/fs/bpf/t/abc-1/owner.json"));
        let pod = PodUid::new("0b8e4f4c-7a51").unwrap();
        assert_eq!(
            l.pod_link(&o, &r, &pod, &p, 0),
            Path::new("/sys/fs/bpf/t/abc-1/0123456789abcdef/pods/0b8e4f4c-7a51/count/0")
        );
        assert_eq!(l.pod_dir(&o, &r, &pod).parent(), Some(l.pods_dir(&o, &r).as_path()));
    }
}
