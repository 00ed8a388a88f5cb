//! Validation of a `BpfProgramSpec` in Rust, mirroring the schema's patterns, bounds and
//! CEL rules. The API server enforces the schema; the agent runs this too, because
//! standalone mode and gRPC callers never went through an API server. The output is
//! typed: once validated, a program's attach settings cannot disagree with its type.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::limits::{MAX_BYTECODE_BYTES, MAX_GLOBAL_BYTES, MAX_GLOBALS, MAX_HOOKS, MAX_PROGRAMS};
use crate::names::{GlobalName, InterfaceName, ProgramName};
use crate::program::{BpfProgramSpec, BytecodeSource, ConfigMapBytecode, Direction, ProgramSpec, ProgramType, XdpMode};
use crate::revision::Sha256Digest;

/// One problem with a spec: where, and what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path below `spec`, e.g. `programs[0].xdp.interfaces[1]`.
    pub field: String,
    pub message: String,
}

/// Every problem found in a spec (validation does not stop at the first).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<FieldError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "spec.{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// Where a validated object's bytes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Bytecode {
    Inline(Vec<u8>),
    ConfigMap(ConfigMapBytecode),
    /// A node-local file and, when given, the digest it must have.
    Path {
        path: PathBuf,
        digest: Option<Sha256Digest>,
    },
    /// An OCI image (resolved and pulled by the operator).
    Image(crate::program::ImageBytecode),
}

/// A program's hooks, typed by program type.
#[derive(Clone, Debug, PartialEq)]
pub enum Attach {
    /// `in_pods`: the interfaces are inside each selected pod's network namespace.
    Xdp {
        interfaces: Vec<InterfaceName>,
        mode: XdpMode,
        in_pods: bool,
    },
    Tc {
        interfaces: Vec<InterfaceName>,
        direction: Direction,
        priority: u16,
        in_pods: bool,
    },
    Tracepoint {
        names: Vec<TracepointName>,
    },
    RawTracepoint {
        names: Vec<String>,
    },
    Fentry {
        function: String,
    },
    Fexit {
        function: String,
    },
    Kprobe {
        function: String,
        offset: u64,
    },
    Kretprobe {
        function: String,
    },
    /// `containers`: the target is inside the containers of each selected pod, these
    /// by name (every container of the pod when empty); `None`: on the node.
    Uprobe {
        probe: UprobeTarget,
        ret: bool,
        containers: Option<Vec<String>>,
    },
    CgroupSkb {
        cgroup: PathBuf,
        direction: Direction,
    },
    Lsm {
        hook: String,
    },
}

impl Attach {
    pub fn program_type(&self) -> ProgramType {
        match self {
            Attach::Xdp { .. } => ProgramType::Xdp,
            Attach::Tc { .. } => ProgramType::Tc,
            Attach::Tracepoint { .. } => ProgramType::Tracepoint,
            Attach::RawTracepoint { .. } => ProgramType::RawTracepoint,
            Attach::Fentry { .. } => ProgramType::Fentry,
            Attach::Fexit { .. } => ProgramType::Fexit,
            Attach::Kprobe { .. } => ProgramType::Kprobe,
            Attach::Kretprobe { .. } => ProgramType::Kretprobe,
            Attach::Uprobe { ret: false, .. } => ProgramType::Uprobe,
            Attach::Uprobe { ret: true, .. } => ProgramType::Uretprobe,
            Attach::CgroupSkb { .. } => ProgramType::CgroupSkb,
            Attach::Lsm { .. } => ProgramType::Lsm,
        }
    }
}

/// `category/name` of a tracepoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracepointName {
    pub category: String,
    pub name: String,
}

impl fmt::Display for TracepointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.category, self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct UprobeTarget {
    pub target: PathBuf,
    pub symbol: Option<String>,
    pub offset: u64,
    pub pid: Option<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValidProgram {
    pub name: ProgramName,
    pub attach: Attach,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub bytecode: Bytecode,
    pub globals: Vec<(GlobalName, Vec<u8>)>,
    pub programs: Vec<ValidProgram>,
}

/// Collects errors with their field paths.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
}

/// Validate a whole spec.
pub fn validate_spec(spec: &BpfProgramSpec) -> Result<ValidSpec, SpecErrors> {
    let mut errs = Errors::default();
    let bytecode = validate_bytecode(&spec.bytecode, &mut errs);
    let globals = validate_globals(spec.global_data.iter(), &mut errs);
    let programs = validate_programs_into(&spec.programs, Source::Spec, &mut errs);
    validate_rollout(spec, &mut errs);
    match (bytecode, errs.0.is_empty()) {
        (Some(bytecode), true) => Ok(ValidSpec { bytecode, globals, programs }),
        _ => Err(SpecErrors(errs.0)),
    }
}

/// `spec.rollout` (steps, amounts, pauses, ranges, resume, health gates),
/// `revisionHistoryLimit` and `spec.maps`: the CRD's schema and CEL rules again, so that
/// the operator's InvalidSpec backstop refuses what an API server without those rules
/// (or none: standalone mode) let through, naming the same field.
fn validate_rollout(spec: &BpfProgramSpec, errs: &mut Errors) {
    let rollout = spec.rollout.iter().flat_map(crate::rollout::validate);
    let history = crate::rollout::validate_history(spec.revision_history_limit, &spec.maps);
    let metrics = crate::metrics::problems(&spec.metrics);
    for (field, message) in rollout.chain(history).chain(metrics) {
        errs.push(field, message);
    }
}

/// Validate only the program list (what the agent receives over gRPC).
pub fn validate_programs(programs: &[ProgramSpec]) -> Result<Vec<ValidProgram>, SpecErrors> {
    let mut errs = Errors::default();
    let out = validate_programs_into(programs, Source::Wire, &mut errs);
    if errs.0.is_empty() { Ok(out) } else { Err(SpecErrors(errs.0)) }
}

/// Validate global data given as raw bytes (what the agent receives over gRPC).
pub fn validate_global_bytes<'a, V: AsRef<[u8]> + 'a>(
    globals: impl Iterator<Item = (&'a String, V)>,
) -> Result<Vec<(GlobalName, Vec<u8>)>, SpecErrors> {
    let mut errs = Errors::default();
    let mut out = Vec::new();
    for (k, v) in globals {
        check_global(k, v.as_ref(), &mut errs, &mut out);
    }
    if out.len() > MAX_GLOBALS as usize {
        errs.push("globalData", format!("at most {MAX_GLOBALS} variables may be set"));
    }
    if errs.0.is_empty() { Ok(out) } else { Err(SpecErrors(errs.0)) }
}

fn validate_bytecode(src: &BytecodeSource, errs: &mut Errors) -> Option<Bytecode> {
    let set = [src.inline.is_some(), src.config_map.is_some(), src.path.is_some(), src.image.is_some()];
    if set.iter().filter(|x| **x).count() != 1 {
        errs.push("bytecode", "bytecode must set exactly one of inline, configMap, path or image");
        return None;
    }
    if src.digest.is_some() && src.image.is_some() {
        errs.push(
            "bytecode.digest",
            "digest does not apply to image bytecode: pin the image with bytecode.image.digest",
        );
        return None;
    }
    let digest = match src.digest.as_deref().map(Sha256Digest::parse) {
        None => None,
        Some(Some(d)) => Some(d),
        Some(None) => {
            errs.push("bytecode.digest", "must be sha256: followed by 64 lowercase hex characters (sha256sum FILE)");
            return None;
        }
    };
    if let Some(b64) = &src.inline {
        return match B64.decode(b64.trim()) {
            Ok(bytes) if bytes.len() > MAX_BYTECODE_BYTES => {
                errs.push(
                    "bytecode.inline",
                    format!(
                        "object is {} bytes, the limit is {MAX_BYTECODE_BYTES}; use configMap or path",
                        bytes.len()
                    ),
                );
                None
            }
            // Checked here, where the bytes are decoded, so every reader of a ValidSpec
            // (the operator, the standalone agent) holds bytes the digest pins.
            Ok(bytes) => match digest.filter(|pinned| *pinned != Sha256Digest::of(&bytes)) {
                Some(pinned) => {
                    errs.push("bytecode.digest", inline_digest_mismatch(&Sha256Digest::of(&bytes), &pinned));
                    None
                }
                None => Some(Bytecode::Inline(bytes)),
            },
            Err(e) => {
                errs.push("bytecode.inline", format!("not valid base64: {e}"));
                None
            }
        };
    }
    if let Some(cm) = &src.config_map {
        let before = errs.0.len();
        if !is_dns_subdomain(&cm.name) {
            errs.push("bytecode.configMap.name", "must be a DNS subdomain (lowercase letters, digits, '-', '.')");
        }
        if !is_dns_label(&cm.namespace) {
            errs.push("bytecode.configMap.namespace", "must be a DNS label (lowercase letters, digits, '-')");
        }
        if cm.key.is_empty()
            || cm.key.len() > 253
            || !cm.key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            errs.push("bytecode.configMap.key", "must be 1-253 characters of letters, digits, '-', '.', '_'");
        }
        return (errs.0.len() == before).then(|| Bytecode::ConfigMap(cm.clone()));
    }
    if let Some(image) = &src.image {
        let before = errs.0.len();
        if image.url.is_empty() || image.url.len() > 1024 || image.url.chars().any(|c| c.is_whitespace()) {
            errs.push("bytecode.image.url", "must be an image reference such as registry.example/repo:tag");
        }
        if image.digest.as_deref().is_some_and(|d| Sha256Digest::parse(d).is_none()) {
            errs.push("bytecode.image.digest", "must be sha256: followed by 64 lowercase hex characters");
        }
        if image.pull_secret.as_deref().is_some_and(|n| !is_dns_subdomain(n)) {
            errs.push("bytecode.image.pullSecret", "must be the name of a Secret (a DNS subdomain)");
        }
        return (errs.0.len() == before).then(|| Bytecode::Image(image.clone()));
    }
    let path = src.path.as_deref().unwrap_or_default();
    check_abs_path(path, "bytecode.path", errs).map(|path| Bytecode::Path { path, digest })
}

/// What a user reads when `bytecode.inline` is not the object `bytecode.digest` pins.
pub fn inline_digest_mismatch(found: &Sha256Digest, pinned: &Sha256Digest) -> String {
    format!(
        "bytecode.inline has digest {found}, but bytecode.digest pins {pinned}; correct whichever of the two is wrong"
    )
}

fn validate_globals<'a>(
    globals: impl Iterator<Item = (&'a String, &'a String)>,
    errs: &mut Errors,
) -> Vec<(GlobalName, Vec<u8>)> {
    let mut out = Vec::new();
    let mut count = 0;
    for (k, v) in globals {
        count += 1;
        match B64.decode(v.trim()) {
            Ok(bytes) => check_global(k, &bytes, errs, &mut out),
            Err(e) => errs.push(format!("globalData.{k}"), format!("not valid base64: {e}")),
        }
    }
    if count > MAX_GLOBALS as usize {
        errs.push("globalData", format!("at most {MAX_GLOBALS} variables may be set"));
    }
    out
}

fn check_global(k: &str, bytes: &[u8], errs: &mut Errors, out: &mut Vec<(GlobalName, Vec<u8>)>) {
    match GlobalName::new(k) {
        Err(e) => errs.push(format!("globalData.{k}"), e.to_string()),
        Ok(_) if bytes.is_empty() || bytes.len() > MAX_GLOBAL_BYTES => errs.push(
            format!("globalData.{k}"),
            format!("value is {} bytes; it must be 1-{MAX_GLOBAL_BYTES} bytes", bytes.len()),
        ),
        Ok(name) => out.push((name, bytes.to_vec())),
    }
}

/// Where a program list comes from, for the one rule that differs: `pods.namespace`.
/// A spec (a manifest, what the operator validates) must name the pods' namespace: the
/// operator selects pods in it. The wire carries no namespace (`Xdp.in_pods` with the
/// interfaces only): the operator has resolved the pods already and sends them by uid in
/// `ApplyRequest.pods`, so an agent takes an empty one (and still refuses one that is not
/// a namespace name). Everything else is checked alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Spec,
    Wire,
}

fn validate_programs_into(programs: &[ProgramSpec], source: Source, errs: &mut Errors) -> Vec<ValidProgram> {
    if programs.is_empty() {
        errs.push("programs", "at least one program is required");
    }
    if programs.len() > MAX_PROGRAMS {
        errs.push("programs", format!("at most {MAX_PROGRAMS} programs are allowed, got {}", programs.len()));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in programs.iter().enumerate() {
        let at = format!("programs[{i}]");
        if !seen.insert(p.name.as_str()) {
            errs.push(format!("{at}.name"), format!("duplicate program name {:?}", p.name));
        }
        let name = match ProgramName::new(&p.name) {
            Ok(n) => Some(n),
            Err(e) => {
                errs.push(format!("{at}.name"), e.to_string());
                None
            }
        };
        if let (Some(name), Some(attach)) = (name, validate_attach(p, &at, source, errs)) {
            out.push(ValidProgram { name, attach });
        }
    }
    out
}

/// The names of the attach blocks present on a program.
fn blocks_present(p: &ProgramSpec) -> Vec<ProgramType> {
    let present = [
        (ProgramType::Xdp, p.xdp.is_some()),
        (ProgramType::Tc, p.tc.is_some()),
        (ProgramType::Tracepoint, p.tracepoint.is_some()),
        (ProgramType::RawTracepoint, p.raw_tracepoint.is_some()),
        (ProgramType::Fentry, p.fentry.is_some()),
        (ProgramType::Fexit, p.fexit.is_some()),
        (ProgramType::Kprobe, p.kprobe.is_some()),
        (ProgramType::Kretprobe, p.kretprobe.is_some()),
        (ProgramType::Uprobe, p.uprobe.is_some()),
        (ProgramType::Uretprobe, p.uretprobe.is_some()),
        (ProgramType::CgroupSkb, p.cgroup_skb.is_some()),
        (ProgramType::Lsm, p.lsm.is_some()),
    ];
    present.into_iter().filter(|(_, on)| *on).map(|(t, _)| t).collect()
}

fn validate_attach(p: &ProgramSpec, at: &str, source: Source, errs: &mut Errors) -> Option<Attach> {
    let t = p.program_type;
    let present = blocks_present(p);
    let mut ok = true;
    for other in present.iter().filter(|o| **o != t) {
        errs.push(
            format!("{at}.{}", other.block_field()),
            format!("the {} block must be set exactly when type is {other}, but type is {t}", other.block_field()),
        );
        ok = false;
    }
    if !present.contains(&t) {
        errs.push(format!("{at}.{}", t.block_field()), format!("type {t} needs a {} block", t.block_field()));
        return None;
    }
    let before = errs.0.len();
    let attach = match t {
        ProgramType::Xdp => {
            let x = p.xdp.as_ref()?;
            let (interfaces, in_pods) = where_on(&x.interfaces, x.pods.as_ref(), &format!("{at}.xdp"), source, errs);
            Attach::Xdp { interfaces, mode: x.mode, in_pods }
        }
        ProgramType::Tc => {
            let x = p.tc.as_ref()?;
            if !(1..=1000).contains(&x.priority) {
                errs.push(format!("{at}.tc.priority"), format!("must be 1-1000, got {}", x.priority));
            }
            let (interfaces, in_pods) = where_on(&x.interfaces, x.pods.as_ref(), &format!("{at}.tc"), source, errs);
            Attach::Tc { interfaces, in_pods, direction: x.direction, priority: x.priority.clamp(1, 1000) as u16 }
        }
        ProgramType::Tracepoint => {
            let x = p.tracepoint.as_ref()?;
            let field = format!("{at}.tracepoint.names");
            hook_count(x.names.len(), &field, errs);
            let names = x
                .names
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    let parsed = n.split_once('/').filter(|(c, n)| {
                        is_word(c, 128)
                            && !n.is_empty()
                            && n.len() <= 128
                            && n.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
                    });
                    if parsed.is_none() {
                        errs.push(
                            format!("{field}[{i}]"),
                            format!("{n:?} must be category/name, e.g. syscalls/sys_enter_openat"),
                        );
                    }
                    parsed.map(|(c, n)| TracepointName { category: c.into(), name: n.into() })
                })
                .collect();
            Attach::Tracepoint { names }
        }
        ProgramType::RawTracepoint => {
            let x = p.raw_tracepoint.as_ref()?;
            let field = format!("{at}.rawTracepoint.names");
            hook_count(x.names.len(), &field, errs);
            for (i, n) in x.names.iter().enumerate() {
                if !is_word(n, 128) {
                    errs.push(format!("{field}[{i}]"), format!("{n:?} must be a raw tracepoint name like sys_enter"));
                }
            }
            Attach::RawTracepoint { names: x.names.clone() }
        }
        ProgramType::Fentry => {
            Attach::Fentry { function: kfunc(&p.fentry.as_ref()?.function, &format!("{at}.fentry"), errs) }
        }
        ProgramType::Fexit => {
            Attach::Fexit { function: kfunc(&p.fexit.as_ref()?.function, &format!("{at}.fexit"), errs) }
        }
        ProgramType::Kprobe => {
            let x = p.kprobe.as_ref()?;
            Attach::Kprobe { function: kfunc(&x.function, &format!("{at}.kprobe"), errs), offset: x.offset }
        }
        ProgramType::Kretprobe => {
            let x = p.kretprobe.as_ref()?;
            if x.offset != 0 {
                errs.push(format!("{at}.kretprobe.offset"), "a kretprobe fires on return; offset must be 0");
            }
            Attach::Kretprobe { function: kfunc(&x.function, &format!("{at}.kretprobe"), errs) }
        }
        ProgramType::Uprobe | ProgramType::Uretprobe => {
            let ret = t == ProgramType::Uretprobe;
            let field = format!("{at}.{}", t.block_field());
            let x = if ret { p.uretprobe.as_ref()? } else { p.uprobe.as_ref()? };
            let target = check_abs_path(&x.target, &format!("{field}.target"), errs);
            if x.symbol.is_none() && x.offset.is_none() {
                errs.push(field.clone(), "uprobe needs a symbol, an offset, or both");
            }
            if let Some(s) = &x.symbol
                && (s.is_empty()
                    || s.len() > 256
                    || s.starts_with(|c: char| c.is_ascii_digit())
                    || !s.chars().all(|c| c.is_ascii_alphanumeric() || "_.@$".contains(c)))
            {
                errs.push(format!("{field}.symbol"), format!("{s:?} is not a valid symbol name"));
            }
            if let Some(pid) = x.pid
                && pid < 1
            {
                errs.push(format!("{field}.pid"), format!("must be a positive process id, got {pid}"));
            }
            let containers = x.containers.as_ref().map(|c| in_containers(c, x.pid, &field, source, errs));
            Attach::Uprobe {
                probe: UprobeTarget {
                    target: target.unwrap_or_default(),
                    symbol: x.symbol.clone(),
                    offset: x.offset.unwrap_or(0),
                    pid: x.pid,
                },
                ret,
                containers,
            }
        }
        ProgramType::CgroupSkb => {
            let x = p.cgroup_skb.as_ref()?;
            let cgroup = check_abs_path(&x.cgroup_path, &format!("{at}.cgroupSkb.cgroupPath"), errs);
            Attach::CgroupSkb { cgroup: cgroup.unwrap_or_default(), direction: x.direction }
        }
        ProgramType::Lsm => {
            let hook = &p.lsm.as_ref()?.hook;
            if hook.is_empty()
                || hook.len() > 64
                || !hook.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                || !hook.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                errs.push(format!("{at}.lsm.hook"), format!("{hook:?} must be an LSM hook name like file_open"));
            }
            Attach::Lsm { hook: hook.clone() }
        }
    };
    (ok && errs.0.len() == before).then_some(attach)
}

fn hook_count(n: usize, field: &str, errs: &mut Errors) {
    if n == 0 || n > MAX_HOOKS {
        errs.push(field, format!("must list 1-{MAX_HOOKS} entries, got {n}"));
    }
}

/// The interfaces of an XDP or TC block: the node's, or (`pods`) those inside each pod.
fn where_on(
    node: &[String],
    pods: Option<&crate::program::PodInterfaces>,
    at: &str,
    source: Source,
    errs: &mut Errors,
) -> (Vec<InterfaceName>, bool) {
    match pods {
        None => (interfaces(node, at, errs), false),
        Some(p) => {
            if !node.is_empty() {
                errs.push(
                    format!("{at}.interfaces"),
                    "set either interfaces (the node's) or pods (inside each selected pod), not both".to_string(),
                );
            }
            let resolved = source == Source::Wire && p.namespace.is_empty();
            if !resolved && !is_dns_label(&p.namespace) {
                errs.push(format!("{at}.pods.namespace"), format!("{:?} is not a namespace name", p.namespace));
            }
            (interfaces(&p.interfaces, &format!("{at}.pods"), errs), true)
        }
    }
}

/// The containers of a uprobe block's `containers`: their names (every container when
/// empty), checked, with the namespace checked as `where_on` does.
fn in_containers(
    c: &crate::program::ContainerSelector,
    pid: Option<i32>,
    at: &str,
    source: Source,
    errs: &mut Errors,
) -> Vec<String> {
    if pid.is_some() {
        errs.push(
            format!("{at}.pid"),
            "pid is a process id on the node: leave it out with containers (the probe fires in every process \
             of the selected containers)",
        );
    }
    let resolved = source == Source::Wire && c.namespace.is_empty();
    if !resolved && !is_dns_label(&c.namespace) {
        errs.push(format!("{at}.containers.namespace"), format!("{:?} is not a namespace name", c.namespace));
    }
    if c.container_names.len() > crate::limits::MAX_CONTAINER_NAMES {
        errs.push(
            format!("{at}.containers.containerNames"),
            format!("at most {} names, got {}", crate::limits::MAX_CONTAINER_NAMES, c.container_names.len()),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, n) in c.container_names.iter().enumerate() {
        if !is_dns_label(n) {
            errs.push(format!("{at}.containers.containerNames[{i}]"), format!("{n:?} is not a container name"));
        } else if !seen.insert(n) {
            errs.push(format!("{at}.containers.containerNames[{i}]"), format!("container {n:?} is listed twice"));
        }
    }
    c.container_names.clone()
}

fn interfaces(list: &[String], at: &str, errs: &mut Errors) -> Vec<InterfaceName> {
    hook_count(list.len(), &format!("{at}.interfaces"), errs);
    let mut seen = BTreeSet::new();
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            if !seen.insert(s) {
                errs.push(format!("{at}.interfaces[{i}]"), format!("interface {s:?} is listed twice"));
            }
            InterfaceName::new(s).map_err(|e| errs.push(format!("{at}.interfaces[{i}]"), e.to_string())).ok()
        })
        .collect()
}

fn kfunc(f: &str, at: &str, errs: &mut Errors) -> String {
    let ok = !f.is_empty()
        && f.len() <= 128
        && f.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !ok {
        errs.push(format!("{at}.function"), format!("{f:?} is not a kernel function name"));
    }
    f.to_string()
}

fn is_word(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An absolute path without `.`/`..` segments or NUL bytes.
fn check_abs_path(p: &str, field: &str, errs: &mut Errors) -> Option<PathBuf> {
    let ok = p.len() >= 2
        && p.len() <= 4096
        && p.starts_with('/')
        && !p.contains('\0')
        && !p.split('/').any(|seg| seg == "." || seg == "..");
    if ok {
        Some(PathBuf::from(p))
    } else {
        errs.push(field, format!("{p:?} must be an absolute path without '.' or '..' segments"));
        None
    }
}

/// A DNS label (a namespace's name): 1-63 lowercase letters, digits and '-', starting and
/// ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS subdomain (most objects' names): DNS labels joined by '.', at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}
