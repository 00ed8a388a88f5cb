//! The owners a trial plays with: one XDP, one TC and one tracepoint owner, each with a
//! few revisions, built as the operator builds its Apply requests.

use std::path::{Path, PathBuf};

use anyhow::Context;
use crds::BpfProgramSpec;
use crds::revision::{BytecodeIdentity, Revision};
use proto::v1;

/// One revision of an owner: what the request carries and what the kernel must show.
#[derive(Clone, Debug)]
pub struct Variant {
    pub request: v1::ApplyRequest,
    pub revision: String,
    /// Program names of the revision, each with its number of links (hooks).
    pub programs: Vec<(String, usize)>,
    /// The interface hook kinds its programs take (`xdp`, `tcx/ingress`, `clsact/egress`, …).
    pub hooks: Vec<(String, u32)>,
}

#[derive(Clone, Debug)]
pub struct Owner {
    pub uid: String,
    pub variants: Vec<Variant>,
    /// Maps pinned under `<uid>/maps`.
    pub maps: Vec<String>,
}

/// How TC programs are attached this trial (the agent's `--tc-backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcBackend {
    Tcx,
    Clsact,
}

impl TcBackend {
    pub fn flag(self) -> &'static str {
        match self {
            TcBackend::Tcx => "tcx",
            TcBackend::Clsact => "clsact",
        }
    }
}

fn variant(
    uid: &str,
    objects: &Path,
    object: &str,
    programs_yaml: &str,
    hooks: Vec<(String, u32)>,
) -> anyhow::Result<Variant> {
    let path = objects.join(object);
    let bytes = std::fs::read(&path).with_context(|| format!("{} (run examples/build.sh)", path.display()))?;
    let spec: BpfProgramSpec =
        serde_yaml::from_str(&format!("bytecode: {{path: /unused.o}}\nprograms:\n{programs_yaml}"))?;
    let revision = Revision::compute(&spec, BytecodeIdentity::Bytes(&bytes));
    let programs = spec
        .programs
        .iter()
        .map(|p| {
            let n = p.tracepoint.as_ref().map(|t| t.names.len()).unwrap_or(1);
            (p.name.to_string(), n)
        })
        .collect();
    let request = v1::ApplyRequest {
        owner: Some(v1::Owner { uid: uid.into(), name: format!("{uid}-name") }),
        revision: revision.as_str().into(),
        bytecode: Some(v1::apply_request::Bytecode::Elf(bytes.into())),
        programs: spec.programs.iter().map(proto::program_to_wire).collect(),
        ..Default::default()
    };
    Ok(Variant { request, revision: revision.as_str().to_string(), programs, hooks })
}

/// The three owners on interface `dev`.
pub fn pool(objects: &Path, dev: &str, tc: TcBackend) -> anyhow::Result<Vec<Owner>> {
    let xdp = |o: &str| {
        variant(
            "rel-xdp",
            objects,
            o,
            &format!("  - {{name: count_packets, type: XDP, xdp: {{interfaces: [{dev}], mode: Auto}}}}\n"),
            vec![("xdp".into(), 0)],
        )
    };
    let tc_hook = |dir: &str, prio: u32| match tc {
        TcBackend::Tcx => (format!("tcx/{}", dir.to_lowercase()), 0),
        TcBackend::Clsact => (format!("clsact/{}", dir.to_lowercase()), prio),
    };
    let tc_variant = |dir: &str, prio: u32| {
        variant(
            "rel-tc",
            objects,
            "tc_counter.o",
            &format!(
                "  - {{name: count_tc, type: TC, tc: {{interfaces: [{dev}], direction: {dir}, priority: {prio}}}}}\n"
            ),
            vec![tc_hook(dir, prio)],
        )
    };
    let tp = |names: &str| {
        variant(
            "rel-tp",
            objects,
            "tracepoint_openat.o",
            &format!("  - {{name: count_openat, type: Tracepoint, tracepoint: {{names: [{names}]}}}}\n"),
            vec![],
        )
    };
    Ok(vec![
        Owner {
            uid: "rel-xdp".into(),
            // v2 counts twice per packet: an in-place replacement of the XDP link's program.
            variants: vec![xdp("xdp_counter.o")?, xdp("xdp_counter_v2.o")?],
            maps: vec!["packet_count".into()],
        },
        Owner {
            uid: "rel-tc".into(),
            // Same hook at another priority, then the other direction.
            variants: vec![tc_variant("Ingress", 10)?, tc_variant("Ingress", 20)?, tc_variant("Egress", 10)?],
            maps: vec!["tc_packet_count".into()],
        },
        Owner {
            uid: "rel-tp".into(),
            variants: vec![
                tp("syscalls/sys_enter_openat")?,
                tp("syscalls/sys_enter_openat, syscalls/sys_enter_openat2")?,
            ],
            maps: vec!["openat_count".into()],
        },
    ])
}

/// Where the example objects are: `BPFLEET_EXAMPLES` or the repository's build directory.
pub fn objects_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BPFLEET_EXAMPLES") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bpf/build")
}
