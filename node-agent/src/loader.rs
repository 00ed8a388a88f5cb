//! Loading an object into the kernel with aya. The kernel's BTF is parsed when a load
//! needs it and kept while loads keep coming (parsing it costs more than many loads, and
//! holding it more memory than the rest of the agent: see docs/benchmarks.md, node
//! agent), and every aya error becomes an `AgentError` that says
//! what failed in words.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aya::programs::ProgramError;
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};
use crds::ProgramType;
use crds::names::GlobalName;

use crate::error::{AgentError, Reason, Result};

/// Longest verifier excerpt put in a message (the end of the log says why).
const VERIFIER_EXCERPT_LINES: usize = 20;
const VERIFIER_EXCERPT_BYTES: usize = 2048;

/// How long a parsed kernel BTF is kept after the last load that used it: a burst of
/// Applies parses it once, and an idle agent does not carry it (~13 MiB, more than the
/// rest of the agent: docs/benchmarks.md, node agent).
pub const KEEP_PARSED_BTF: Duration = Duration::from_secs(30);

/// The kernel's BTF: the file is opened once (before aya is kept from it, see
/// [`hide_kernel_btf_from_aya`]), parsed only when a load needs it (CO-RE relocations,
/// Fentry/Fexit/Lsm) and let go once no load used it for [`KEEP_PARSED_BTF`].
pub struct KernelBtf {
    file: Option<std::fs::File>,
    parsed: Mutex<Option<(Arc<Btf>, Instant)>>,
}

/// The process's one [`KernelBtf`].
pub fn kernel_btf() -> &'static KernelBtf {
    static BTF: OnceLock<KernelBtf> = OnceLock::new();
    BTF.get_or_init(|| {
        let file = match std::fs::File::open("/sys/kernel/btf/vmlinux") {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "kernel BTF unavailable: CO-RE relocations and Fentry/Fexit/Lsm will fail");
                None
            }
        };
        KernelBtf { file, parsed: Mutex::new(None) }
    })
}

impl KernelBtf {
    pub fn available(&self) -> bool {
        self.file.is_some()
    }

    /// The parsed BTF (parsed now if it is not held); None when the node has none or it
    /// cannot be parsed (logged).
    pub fn get(&self) -> Option<Arc<Btf>> {
        let file = self.file.as_ref()?;
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((btf, used)) = parsed.as_mut() {
            *used = Instant::now();
            return Some(btf.clone());
        }
        match read_all(file)
            .map_err(|e| e.to_string())
            .and_then(|data| Btf::parse(&data, aya::Endianness::default()).map_err(|e| e.to_string()))
        {
            Ok(btf) => {
                let btf = Arc::new(btf);
                *parsed = Some((btf.clone(), Instant::now()));
                Some(btf)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot parse the kernel BTF");
                None
            }
        }
    }

    /// Drops the parsed BTF if no load used it for `idle` (and gives the memory back to
    /// the system); whether it did.
    /// Never waits (a parse in progress holds the lock: nothing to let go then), and keeps
    /// a copy a load still holds.
    pub fn release_idle(&self, idle: Duration) -> bool {
        let mut parsed = match self.parsed.try_lock() {
            Ok(parsed) => parsed,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        if parsed.as_ref().is_none_or(|(btf, used)| used.elapsed() < idle || Arc::strong_count(btf) > 1) {
            return false;
        }
        *parsed = None;
        drop(parsed);
        crate::alloc::trim();
        true
    }

    /// Whether a parsed copy is held now.
    pub fn is_parsed(&self) -> bool {
        self.parsed.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// The whole of a sysfs file read through its descriptor (the path itself may be hidden).
fn read_all(file: &std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = Vec::with_capacity(file.metadata().map(|m| m.len() as usize).unwrap_or(0).max(1 << 20));
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = file.read_at(&mut chunk, data.len() as u64)?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// aya 0.14's `EbpfLoader::new()` parses the kernel's BTF itself on every load, even
/// when a parsed one is given afterwards (aya-rs/aya#1172): that alone made each load
/// much slower than libbpf (docs/benchmarks.md, "The BTF fix"). This hides `/sys/kernel/btf/vmlinux` from this process
/// only — a private mount namespace with `/dev/null` bound over the file — after
/// [`kernel_btf()`] has opened it, so aya's own attempt fails at once and the copy
/// [`KernelBtf::get`] parses is used. Mounts made on the host still reach the agent (slave propagation); pins
/// are on the same bpffs either way. Must run before the process starts threads.
pub fn hide_kernel_btf_from_aya() -> std::result::Result<(), String> {
    use std::ffi::CString;
    if !kernel_btf().available() {
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

/// Loads objects, with the kernel BTF when they need it.
#[derive(Default)]
pub struct Loader;

impl Loader {
    pub fn new() -> Self {
        Self
    }

    /// Parse the object, patch globals, create (or reuse) pinned maps. Programs are
    /// loaded one by one afterwards, so a failure names the program. `btf`: the kernel's,
    /// for objects with CO-RE relocations (see [`crate::elf::ElfInfo::needs_kernel_btf`]).
    pub fn load(
        &self,
        bytes: &[u8],
        globals: &[(GlobalName, Vec<u8>)],
        map_pins: &BTreeMap<String, PathBuf>,
        btf: Option<&Btf>,
    ) -> Result<Ebpf> {
        let mut loader = EbpfLoader::new();
        loader.btf(btf);
        for (name, value) in globals {
            loader.override_global(name.as_str(), value.as_slice(), true);
        }
        for (name, path) in map_pins {
            loader.map_pin_path(name.as_str(), Cow::Borrowed(path.as_path()));
        }
        loader.load(bytes).map_err(classify_ebpf_error)
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
