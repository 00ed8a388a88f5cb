//! Revisions: a content hash of what a node must run. Same content, same revision, on
//! every node and in every process, so `Apply` can be idempotent.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::program::BpfProgramSpec;

/// 16 lowercase hex characters (64 bits of SHA-256).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(String);

/// What identifies the bytecode when computing a revision.
#[derive(Clone, Copy, Debug)]
pub enum BytecodeIdentity<'a> {
    /// The bytes themselves are known (inline, ConfigMap, or a file read by the agent).
    Bytes(&'a [u8]),
    /// Only a node-local path is known (the operator never reads node files), with
    /// the digest the spec pins it to, if any.
    Path(&'a str, Option<&'a Sha256Digest>),
}

/// A SHA-256 content digest as written in specs and reports: `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(String);

impl Sha256Digest {
    pub const PREFIX: &'static str = "sha256:";

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("{}{}", Self::PREFIX, hex::encode(Sha256::digest(bytes))))
    }

    /// Accept only the canonical form.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(Self::PREFIX)?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Revision {
    pub const LEN: usize = 16;

    /// Hash the parts of the spec that change what runs on a node: bytecode, programs
    /// and their attach settings, global data. The node selector is not part of it.
    pub fn compute(spec: &BpfProgramSpec, bytecode: BytecodeIdentity<'_>) -> Revision {
        let mut h = Sha256::new();
        h.update(b"bpfleet.revision.v1\0");
        match bytecode {
            BytecodeIdentity::Bytes(b) => {
                h.update(b"bytes\0");
                h.update(Sha256::digest(b));
            }
            BytecodeIdentity::Path(p, digest) => {
                h.update(b"path\0");
                h.update(p.as_bytes());
                // Only when set, so revisions of specs without a digest stay as they were.
                if let Some(d) = digest {
                    h.update(b"\0digest\0");
                    h.update(d.as_str().as_bytes());
                }
            }
        }
        // serde_json serialises struct fields in declaration order and BTreeMap keys
        // sorted, so this encoding is canonical for a given spec.
        let programs = serde_json::to_vec(&spec.programs).unwrap_or_default();
        h.update((programs.len() as u64).to_le_bytes());
        h.update(&programs);
        let globals = serde_json::to_vec(&spec.global_data).unwrap_or_default();
        h.update(&globals);
        // Only when set, so revisions of specs without map policies stay as they were.
        if !spec.maps.is_empty() {
            h.update(b"\0maps\0");
            h.update(serde_json::to_vec(&spec.maps).unwrap_or_default());
        }
        // What is exported is part of what runs: a new metric set is a new revision, rolled
        // out like any other. Only when set, as above.
        if !spec.metrics.is_empty() {
            h.update(b"\0metrics\0");
            h.update(serde_json::to_vec(&spec.metrics).unwrap_or_default());
        }
        Revision(hex::encode(&h.finalize()[..Self::LEN / 2]))
    }

    /// Accept a revision received from elsewhere (gRPC, bpffs) only if well-formed.
    pub fn parse(s: &str) -> Option<Revision> {
        (s.len() == Self::LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Revision(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> BpfProgramSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = r#"
bytecode: {path: /opt/x.o}
programs:
  - {name: count_packets, type: XDP, xdp: {interfaces: [eth0]}}
"#;

    #[test]
    fn stable_and_sensitive() {
        let a = spec(BASE);
        let r1 = Revision::compute(&a, BytecodeIdentity::Bytes(b"elf"));
        assert_eq!(r1, Revision::compute(&a.clone(), BytecodeIdentity::Bytes(b"elf")));
        assert_eq!(r1.as_str().len(), 16);
        assert!(Revision::parse(r1.as_str()).is_some());
        assert_ne!(r1, Revision::compute(&a, BytecodeIdentity::Bytes(b"elf2")));
        let path = Revision::compute(&a, BytecodeIdentity::Path("/opt/x.o", None));
        assert_ne!(r1, path);
        // A digest on path bytecode enters the revision: a new file, a new revision.
        let (d1, d2) = (Sha256Digest::of(b"v1"), Sha256Digest::of(b"v2"));
        let with_d1 = Revision::compute(&a, BytecodeIdentity::Path("/opt/x.o", Some(&d1)));
        assert_ne!(path, with_d1);
        assert_ne!(with_d1, Revision::compute(&a, BytecodeIdentity::Path("/opt/x.o", Some(&d2))));
        assert_eq!(with_d1, Revision::compute(&a, BytecodeIdentity::Path("/opt/x.o", Some(&d1))));

        let mut b = a.clone();
        b.programs[0].xdp.as_mut().unwrap().interfaces.push("eth1".into());
        assert_ne!(r1, Revision::compute(&b, BytecodeIdentity::Bytes(b"elf")));

        let mut c = a.clone();
        c.global_data.insert("X".into(), "AQ==".into());
        assert_ne!(r1, Revision::compute(&c, BytecodeIdentity::Bytes(b"elf")));

        // A map policy changes what runs: a new revision.
        let mut m = a.clone();
        m.maps.push(crate::rollout::MapPolicy {
            name: "counts".into(),
            on_upgrade: crate::rollout::MapUpgrade::Recreate,
            from: None,
        });
        assert_ne!(r1, Revision::compute(&m, BytecodeIdentity::Bytes(b"elf")));

        // How it rolls out does not.
        let mut r = a.clone();
        r.rollout = Some(crate::rollout::RolloutSpec { paused: true, ..Default::default() });
        r.revision_history_limit = Some(3);
        assert_eq!(r1, Revision::compute(&r, BytecodeIdentity::Bytes(b"elf")));

        // The node selector decides where, not what: same revision.
        let mut d = a.clone();
        d.node_selector.match_labels = Some([("a".to_string(), "b".to_string())].into());
        assert_eq!(r1, Revision::compute(&d, BytecodeIdentity::Bytes(b"elf")));
    }

    #[test]
    fn digests_are_canonical() {
        let d = Sha256Digest::of(b"");
        assert_eq!(d.as_str(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Sha256Digest::parse(d.as_str()), Some(d.clone()));
        for bad in ["", "sha256:", "sha512:e3b0", &d.as_str().to_uppercase(), &d.as_str()[..70]] {
            assert!(Sha256Digest::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn parse_rejects_paths_and_junk() {
        for bad in ["", "..", "0123456789ABCDEF", "0123456789abcde/", "0123456789abcdef0"] {
            assert!(Revision::parse(bad).is_none(), "{bad}");
        }
    }
}
