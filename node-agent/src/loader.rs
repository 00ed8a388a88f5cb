//! Loading an object into the kernel with aya. The kernel's BTF is parsed once per
//! process (every load needs it, and parsing it costs more than many loads: see
//! docs/benchmarks.md, node agent), and every aya error becomes an `AgentError` that says
//! what failed in words.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use aya::programs::ProgramError;
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};
use crds::ProgramType;
use crds::names::GlobalName;

use crate::error::{AgentError, Reason, Result};

/// Longest verifier excerpt put in a message (the end of the log says why).
const VERIFIER_EXCERPT_LINES: usize = 20;
const VERIFIER_EXCERPT_BYTES: usize = 2048;

/// The kernel's BTF, parsed once per process and shared (its time and memory:
/// docs/benchmarks.md, node agent).
pub fn kernel_btf() -> Option<&'static Btf> {
    static BTF: OnceLock<Option<Btf>> = OnceLock::new();
    BTF.get_or_init(|| match Btf::from_sys_fs() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "kernel BTF unavailable: CO-RE relocations and Fentry/Fexit/Lsm will fail");
            None
        }
    })
    .as_ref()
}

/// aya 0.14's `EbpfLoader::new()` parses the kernel's BTF itself on every load, even
/// when a parsed one is given afterwards (aya-rs/aya#1172): that alone made each load
/// much slower than libbpf (docs/benchmarks.md, "The BTF fix"). This hides `/sys/kernel/btf/vmlinux` from this process
/// only — a private mount namespace with `/dev/null` bound over the file — after
/// `kernel_btf()` has parsed it, so aya's own attempt fails at once and the shared copy
/// is used. Mounts made on the host still reach the agent (slave propagation); pins
/// are on the same bpffs either way. Must run before the process starts threads.
pub fn hide_kernel_btf_from_aya() -> std::result::Result<(), String> {
    use std::ffi::CString;
    if kernel_btf().is_none() {
        return Err("no kernel BTF to share".into());
    }
    let target = CString::new("/sys/kernel/btf/vmlinux").map_err(|e| e.to_string())?;
    let dev_null = CString::new("/dev/null").map_err(|e| e.to_string())?;
    let root = CString::new("/").map_err(|e| e.to_string())?;
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain syscalls with valid NUL-terminated strings and null optional args.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(err("unshare(CLONE_NEWNS)"));
        }
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(err("making mounts private to the agent"));
        }
        if libc::mount(dev_null.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
            return Err(err("bind-mounting /dev/null over /sys/kernel/btf/vmlinux"));
        }
    }
    Ok(())
}

/// Loads objects with the shared kernel BTF.
pub struct Loader {
    btf: Option<&'static Btf>,
}

impl Loader {
    pub fn new() -> Self {
        Self { btf: kernel_btf() }
    }

    pub fn btf(&self) -> Option<&'static Btf> {
        self.btf
    }

    /// Parse the object, patch globals, create (or reuse) pinned maps. Programs are
    /// loaded one by one afterwards, so a failure names the program.
    pub fn load(
        &self,
        bytes: &[u8],
        globals: &[(GlobalName, Vec<u8>)],
        map_pins: &BTreeMap<String, PathBuf>,
    ) -> Result<Ebpf> {
        let mut loader = EbpfLoader::new();
        loader.btf(self.btf);
        for (name, value) in globals {
            loader.override_global(name.as_str(), value.as_slice(), true);
        }
        for (name, path) in map_pins {
            loader.map_pin_path(name.as_str(), Cow::Borrowed(path.as_path()));
        }
        loader.load(bytes).map_err(classify_ebpf_error)
    }
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

fn classify_ebpf_error(e: EbpfError) -> AgentError {
    use aya_obj::ParseError;
    match e {
        EbpfError::ParseError(ParseError::InvalidGlobalData { name, sym_size, data_size }) => AgentError::new(
            Reason::GlobalDataInvalid,
            format!(
                "globalData variable {name} is {sym_size} bytes in the object but the value given is {data_size} bytes"
            ),
        ),
        EbpfError::ParseError(ParseError::SymbolNotFound { name }) => {
            AgentError::new(Reason::GlobalDataInvalid, format!("globalData variable {name} is not in the object"))
        }
        EbpfError::ParseError(p) => AgentError::new(Reason::MalformedElf, format!("cannot parse the eBPF object: {p}")),
        EbpfError::BtfRelocationError(r) => AgentError::new(
            Reason::KernelUnsupported,
            format!("CO-RE relocation against this kernel's BTF failed: {r}"),
        ),
        EbpfError::MapError(m) => {
            AgentError::new(Reason::MapMismatch, format!("creating the object's maps failed: {m}"))
        }
        EbpfError::ProgramError(p) => classify_program_error("", None, p),
        other => AgentError::internal(format!("loading the object failed: {other}")),
    }
}

/// Turn an aya program error into words. `program_type` lets EPERM on a trampoline
/// program say that the kernel forbids the type instead of showing an errno.
pub fn classify_program_error(program: &str, program_type: Option<ProgramType>, e: ProgramError) -> AgentError {
    let at = |reason, msg: String| AgentError::for_program(reason, program, msg);
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            let errno = io_error.raw_os_error();
            let trampoline = matches!(program_type, Some(ProgramType::Fentry | ProgramType::Fexit | ProgramType::Lsm));
            if trampoline && matches!(errno, Some(libc::EPERM | 524 | libc::EOPNOTSUPP | libc::EINVAL)) {
                let t = program_type.map(|t| t.as_str()).unwrap_or_default();
                return at(
                    Reason::KernelUnsupported,
                    format!(
                        "this kernel does not allow {t} programs: loading needs BPF trampolines, which it refuses ({io_error})"
                    ),
                );
            }
            at(
                Reason::VerifierRejected,
                format!(
                    "the kernel verifier rejected the program ({io_error}); verifier log (end): {}",
                    excerpt(&verifier_log.to_string())
                ),
            )
        }
        ProgramError::UnknownInterface { name } => {
            at(Reason::InterfaceNotFound, format!("interface {name:?} does not exist on this node"))
        }
        other => at(Reason::AttachFailed, crate::error::chain(&other)),
    }
}

/// The last lines of a verifier log, bounded.
pub fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(VERIFIER_EXCERPT_LINES);
    let mut out = lines[start..].join(" | ");
    if out.len() > VERIFIER_EXCERPT_BYTES {
        let cut = out.len() - VERIFIER_EXCERPT_BYTES;
        let cut = (cut..out.len()).find(|i| out.is_char_boundary(*i)).unwrap_or(out.len());
        out = format!("…{}", &out[cut..]);
    }
    if out.is_empty() { "(empty)".into() } else { out }
}
