//! Files named by a spec (`bytecode.path`, uprobe targets) are files of the node, not of
//! the agent's container. In the chart the host's root is mounted read-only into the
//! agent (`--host-root /host`); every such path is resolved inside that root with
//! `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks (absolute ones included) stay inside
//! it, exactly as the host would resolve them.
//!
//! What a node path may reach, and how long it may take:
//! - It is first opened `O_PATH`, which runs no driver code and cannot wait on a FIFO.
//!   Only a regular file on a disk-backed file system passes: FIFOs, devices, directories
//!   and the kernel's pseudo file systems (`/proc`, `/sys`, tracefs with its `trace_pipe`,
//!   debugfs, bpffs, cgroupfs, …) are refused before anything reads them.
//! - With `--allowed-path-prefix`, the file's resolved location (after every symlink)
//!   must lie under one of the prefixes.
//! - Only then is that very inode opened for reading, non-blocking.
//! - Each open or read runs on a thread of its own and is waited for at most
//!   [`DEADLINE`]: a hung file system costs the caller that long, never a runtime worker
//!   (callers are off the async runtime already), and at most [`MAX_IN_FLIGHT`] such
//!   threads exist at once.
//! - A file that fails a check is reported in one message whatever the check was, so a
//!   status tells nobody whether some path exists, what it is, or what it holds. The
//!   agent's log says which check failed.
//!
//! A process-mode agent (on the host itself) uses `/`, the default.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::{AgentError, Reason};

/// How long opening and reading one node file may take before the request is refused.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Node-file opens and reads in flight at once. A read that a hung file system never
/// answers keeps its thread; past this many, new ones are refused at once instead of
/// piling up threads.
pub const MAX_IN_FLIGHT: usize = 16;

/// The host's root as this process sees it, and the prefixes node paths must lie under.
#[derive(Clone, Debug)]
pub struct HostRoot {
    inner: Arc<Root>,
}

#[derive(Debug)]
struct Root {
    /// As configured (`--host-root`).
    path: PathBuf,
    /// Where the root really is in this process's view (symlinks resolved): stripped
    /// from an opened file's location to give the node's path.
    seen_as: PathBuf,
    dir: OwnedFd,
    /// Empty: any path in the root.
    allowed: Vec<PathBuf>,
}

static HOST_ROOT: OnceLock<HostRoot> = OnceLock::new();

/// Use `root` as the host's root for every node path from now on, admitting only files
/// under `allowed` (node paths; empty admits every file). Call once, at start, before
/// any request; later calls fail.
pub fn configure(root: &Path, allowed: &[PathBuf]) -> anyhow::Result<()> {
    let r = HostRoot::at(root, allowed)?;
    HOST_ROOT.set(r).map_err(|_| anyhow::anyhow!("the host root is already set"))
}

/// The host root in use (`/`, every path allowed, unless `configure` was called).
pub fn host_root() -> &'static HostRoot {
    HOST_ROOT.get_or_init(|| HostRoot::at(Path::new("/"), &[]).expect("/ can be opened"))
}

/// What a node path is for, in error messages.
#[derive(Clone, Copy, Debug)]
pub enum Use {
    Bytecode,
    UprobeTarget,
}

impl Use {
    fn noun(self) -> &'static str {
        match self {
            Use::Bytecode => "bytecode path",
            Use::UprobeTarget => "uprobe target",
        }
    }

    fn missing(self) -> Reason {
        match self {
            Use::Bytecode => Reason::BytecodeNotFound,
            Use::UprobeTarget => Reason::TargetNotFound,
        }
    }

    fn fix(self) -> &'static str {
        match self {
            Use::Bytecode => "put the object there as a regular file, or correct bytecode.path",
            Use::UprobeTarget => "install the binary there as a regular file, or correct the uprobe's target",
        }
    }
}

/// The one answer for a file that fails any check (missing, not a regular file on a
/// disk file system, unreadable, outside the allowed prefixes): the same words whichever
/// it was. `cause` goes to the agent's log only.
fn hidden(path: &Path, what: Use, cause: &str) -> AgentError {
    tracing::info!(path = %path.display(), cause, "refused a node path");
    AgentError::new(
        what.missing(),
        format!(
            "{} {} on this node is missing, not a regular file, unreadable, or outside the allowed paths \
             (--allowed-path-prefix): {}",
            what.noun(),
            path.display(),
            what.fix()
        ),
    )
}

/// A node file, open. For aya and the kernel, which take paths, [`NodeFile::fd_path`]
/// names this very file (`/proc/self/fd/N`) for as long as it stays open.
#[derive(Debug)]
pub struct NodeFile {
    file: File,
}

impl NodeFile {
    pub fn fd_path(&self) -> PathBuf {
        fd_path(self.file.as_raw_fd())
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }
}

fn fd_path(fd: i32) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// Pseudo file systems whose "regular files" are kernel interfaces: reading them may
/// block forever (`trace_pipe`), change state or expose the kernel's. `statfs` magic
/// numbers (linux/magic.h).
const PSEUDO_FILESYSTEMS: &[(u32, &str)] = &[
    (0x9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x7472_6163, "tracefs"),
    (0x6462_6720, "debugfs"),
    (0x7363_6673, "securityfs"),
    (0xcafe_4a11, "bpf"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0x6265_6570, "configfs"),
    (0x1cd1, "devpts"),
    (0x6165_676c, "pstore"),
    (0xde5e_81e4, "efivarfs"),
    (0xf97c_ff8c, "selinuxfs"),
    (0x4341_5d53, "smackfs"),
    (0x4249_4e4d, "binfmt_misc"),
    (0x6573_5543, "fusectl"),
    (0x6e73_6673, "nsfs"),
    (0x6759_6969, "rpc_pipefs"),
];

impl HostRoot {
    fn at(path: &Path, allowed: &[PathBuf]) -> anyhow::Result<HostRoot> {
        let c = cstring(path).ok_or_else(|| anyhow::anyhow!("host root {} contains a NUL byte", path.display()))?;
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            anyhow::bail!(
                "cannot open the host root {}: {} (mount the host's / there, read-only, or pass --host-root /)",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `fd` is a new descriptor this process owns.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let seen_as = std::fs::read_link(fd_path(dir.as_raw_fd())).map_err(|e| {
            anyhow::anyhow!("cannot tell where the host root {} is: {e} (is /proc mounted?)", path.display())
        })?;
        let allowed = allowed.iter().map(|p| prefix(p)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(HostRoot { inner: Arc::new(Root { path: path.to_path_buf(), seen_as, dir, allowed }) })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The prefixes node paths must lie under (empty: any).
    pub fn allowed(&self) -> &[PathBuf] {
        &self.inner.allowed
    }

    /// Open the node's regular file `path` (absolute, as the node names it) for reading,
    /// resolved inside this root, within [`DEADLINE`].
    pub fn open(&self, path: &Path, what: Use) -> Result<NodeFile, AgentError> {
        let (root, owned) = (self.clone(), path.to_path_buf());
        bounded(path, what, DEADLINE, move || root.open_now(&owned, what))
    }

    /// Read at most `limit + 1` bytes of the node's regular file `path` (the caller
    /// refuses what is over its limit without holding more), within [`DEADLINE`].
    pub fn read(&self, path: &Path, what: Use, limit: usize) -> Result<Vec<u8>, AgentError> {
        let (root, owned) = (self.clone(), path.to_path_buf());
        bounded(path, what, DEADLINE, move || {
            let mut f = root.open_now(&owned, what)?;
            let mut buf = Vec::new();
            // O_NONBLOCK: a file that would wait answers EAGAIN, refused like the rest.
            f.file().take(limit as u64 + 1).read_to_end(&mut buf).map_err(|e| hidden(&owned, what, &e.to_string()))?;
            Ok(buf)
        })
    }

    /// `open` without the deadline: may block as long as the file system does.
    fn open_now(&self, path: &Path, what: Use) -> Result<NodeFile, AgentError> {
        let shown = path.display();
        if !path.is_absolute() {
            return Err(AgentError::new(Reason::InvalidSpec, format!("{} {shown} must be absolute", what.noun())));
        }
        let Some(c) = cstring(path) else {
            return Err(AgentError::new(Reason::InvalidSpec, format!("{} {shown} contains a NUL byte", what.noun())));
        };
        // O_PATH: resolution only, nothing of the file (a FIFO, a device) is opened yet.
        let how = OpenHow {
            flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        let located = loop {
            // SAFETY: `how` is a valid open_how of the size passed; `c` is NUL-terminated.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.inner.dir.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` is a new descriptor this process owns.
                break unsafe { OwnedFd::from_raw_fd(fd as i32) };
            }
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                Some(libc::ENOSYS) => AgentError::new(
                    Reason::KernelUnsupported,
                    "this kernel lacks openat2 (Linux 5.6 or newer is needed to resolve node paths safely)",
                ),
                // The agent's own limits, nothing about the file.
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) => {
                    AgentError::internal(format!("cannot open {} {shown}: {err}", what.noun()))
                }
                _ => hidden(path, what, &format!("openat2: {err}")),
            });
        };
        self.check(&located, path, what)?;
        // The very inode checked, now for reading; non-blocking, so nothing can wait.
        let reopen = cstring(&fd_path(located.as_raw_fd())).expect("no NUL in a /proc path");
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
        // SAFETY: `reopen` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::open(reopen.as_ptr(), flags) };
        if fd < 0 {
            return Err(hidden(path, what, &format!("open for reading: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `fd` is a new descriptor this process owns.
        Ok(NodeFile { file: unsafe { File::from_raw_fd(fd) } })
    }

    /// A regular file on a disk file system, under an allowed prefix.
    fn check(&self, fd: &OwnedFd, path: &Path, what: Use) -> Result<(), AgentError> {
        // SAFETY: fstat/fstatfs fill the zeroed structs; results are checked.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(hidden(path, what, &format!("fstat: {}", std::io::Error::last_os_error())));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(hidden(path, what, &format!("not a regular file (mode {:o})", st.st_mode & libc::S_IFMT)));
        }
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0 {
            return Err(hidden(path, what, &format!("fstatfs: {}", std::io::Error::last_os_error())));
        }
        if let Some((_, name)) = PSEUDO_FILESYSTEMS.iter().find(|(magic, _)| *magic == fs.f_type as u32) {
            return Err(hidden(path, what, &format!("on the {name} pseudo file system")));
        }
        if self.inner.allowed.is_empty() {
            return Ok(());
        }
        let at = std::fs::read_link(fd_path(fd.as_raw_fd()))
            .map_err(|e| hidden(path, what, &format!("cannot tell where the file resolved: {e}")))?;
        match self.node_path(&at) {
            Some(p) if self.inner.allowed.iter().any(|a| p.starts_with(a)) => Ok(()),
            Some(p) => Err(hidden(path, what, &format!("resolves to {}, outside --allowed-path-prefix", p.display()))),
            None => Err(hidden(path, what, &format!("resolves to {} outside the host root", at.display()))),
        }
    }

    /// The node's path of `at`, a location in this process's view inside the root.
    fn node_path(&self, at: &Path) -> Option<PathBuf> {
        at.strip_prefix(&self.inner.seen_as).ok().map(|rest| Path::new("/").join(rest))
    }
}

/// An allowed prefix as given: absolute, without `..`; `.`, doubled and trailing `/` go.
fn prefix(p: &Path) -> anyhow::Result<PathBuf> {
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        anyhow::bail!("--allowed-path-prefix {} must be an absolute path without '..'", p.display());
    }
    Ok(p.components().collect())
}

/// Run `work` (an open or read of the node file `path`) on a thread of its own and wait
/// for it at most `deadline`. A late result is dropped (its file closed) when it comes.
fn bounded<T: Send + 'static>(
    path: &Path,
    what: Use,
    deadline: Duration,
    work: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    struct Slot;
    impl Drop for Slot {
        fn drop(&mut self) {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let shown = path.display();
    if IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        return Err(AgentError::new(
            what.missing(),
            format!(
                "{} {shown} was not opened: {MAX_IN_FLIGHT} earlier reads of node files have not finished (a hung \
                 file system?); fix the node's file system, then retry",
                what.noun()
            ),
        ));
    }
    let slot = Slot;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("node-file".into())
        .spawn(move || {
            let _slot = slot;
            // Test builds can hold a read here to stand in for a hung file system.
            crate::fault::point("node-file-read", "any");
            let _ = tx.send(work());
        })
        .map_err(|e| AgentError::internal(format!("cannot start a thread to read {} {shown}: {e}", what.noun())))?;
    match rx.recv_timeout(deadline) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(AgentError::new(
            what.missing(),
            format!(
                "{} {shown} on this node could not be opened and read within {} s (a hung or slow file system?); \
                 the agent stopped waiting: fix the file system or use a path on another one",
                what.noun(),
                deadline.as_secs_f32()
            ),
        )),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(AgentError::internal(format!("reading {} {shown} failed unexpectedly", what.noun())))
        }
    }
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstring(path: &Path) -> Option<std::ffi::CString> {
    // Inside the root: the leading '/' is resolved against it (RESOLVE_IN_ROOT).
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::time::Instant;

    use super::*;

    const UNIFORM: &str = "on this node is missing, not a regular file, unreadable, or outside the allowed paths \
                           (--allowed-path-prefix)";

    fn root_with(allowed: &[&str]) -> (tempfile::TempDir, HostRoot) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/tool"), b"inside").unwrap();
        let allowed: Vec<PathBuf> = allowed.iter().map(PathBuf::from).collect();
        let r = HostRoot::at(dir.path(), &allowed).unwrap();
        (dir, r)
    }

    fn root() -> (tempfile::TempDir, HostRoot) {
        root_with(&[])
    }

    /// Refused with the one message, naming the path, and nothing else about the file.
    fn refused(r: &HostRoot, path: &str, what: Use) -> AgentError {
        let e = r.read(Path::new(path), what, 100).unwrap_err();
        assert_eq!(e.reason, what.missing(), "{e}");
        assert_eq!(e.message, format!("{} {path} {UNIFORM}: {}", what.noun(), what.fix()), "{e}");
        e
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let (_d, r) = root();
        assert_eq!(r.read(Path::new("/usr/bin/tool"), Use::UprobeTarget, 100).unwrap(), b"inside");
        assert_eq!(r.read(Path::new("/usr/../usr/bin/tool"), Use::UprobeTarget, 100).unwrap(), b"inside");
    }

    #[test]
    fn dotdot_and_symlinks_cannot_leave_the_root() {
        let (d, r) = root();
        // The file outside the root is the tempdir's sibling; '..' past the root stays at it.
        let outside =
            d.path().parent().unwrap().join(format!("{}-outside", d.path().file_name().unwrap().to_string_lossy()));
        std::fs::write(&outside, b"outside").unwrap();
        let name = outside.file_name().unwrap().to_string_lossy().to_string();
        refused(&r, &format!("/../../{name}"), Use::Bytecode);
        // An absolute symlink is resolved against the root, not the agent's /.
        symlink(&outside, d.path().join("usr/bin/abs")).unwrap();
        refused(&r, "/usr/bin/abs", Use::Bytecode);
        symlink("/usr/bin/tool", d.path().join("usr/bin/link")).unwrap();
        assert_eq!(r.read(Path::new("/usr/bin/link"), Use::Bytecode, 100).unwrap(), b"inside");
        std::fs::remove_file(outside).unwrap();
    }

    /// Missing, FIFO, directory: one message, whichever it was.
    #[test]
    fn what_fails_a_check_reads_alike_and_nothing_blocks() {
        let (d, r) = root();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO with no writer would block a blocking open or read forever.
        let started = Instant::now();
        refused(&r, "/fifo", Use::Bytecode);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        refused(&r, "/usr/bin", Use::Bytecode);
        refused(&r, "/usr/bin/none", Use::UprobeTarget);
        let e = refused(&r, "/usr/bin/none", Use::Bytecode);
        assert!(!e.message.contains("os error") && !e.message.contains("bytes"), "{e}");
        let e = r.read(Path::new("relative"), Use::Bytecode, 100).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
    }

    /// The kernel's own files are regular files on pseudo file systems: refused unread.
    /// (Root `/`: the test needs the real /proc and /sys.)
    #[test]
    fn pseudo_file_systems_are_refused() {
        let r = HostRoot::at(Path::new("/"), &[]).unwrap();
        refused(&r, "/proc/version", Use::Bytecode);
        refused(&r, "/sys/kernel/btf/vmlinux", Use::Bytecode);
        // /proc's magic links (a root with /proc in it, as the chart's /host has) are not followed.
        refused(&r, "/proc/self/root/etc/hostname", Use::Bytecode);
        refused(&r, "/proc/self/exe", Use::UprobeTarget);
        for tracefs in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            let pipe = format!("{tracefs}/trace_pipe");
            if Path::new(&pipe).exists() {
                let started = Instant::now();
                refused(&r, &pipe, Use::Bytecode);
                assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
            }
        }
    }

    #[test]
    fn allowed_prefixes_admit_what_resolves_under_them() {
        let (d, r) = root_with(&["/opt/bpf", "/usr/lib/"]);
        for dir in ["opt/bpf/sub", "opt/bpfx", "usr/lib"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        for f in ["opt/bpf/a.o", "opt/bpf/sub/b.o", "opt/bpfx/c.o", "usr/lib/libc.so"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        assert_eq!(r.allowed(), [PathBuf::from("/opt/bpf"), PathBuf::from("/usr/lib")]);
        for ok in ["/opt/bpf/a.o", "/opt/bpf/sub/b.o", "/opt/bpf/./sub/../a.o", "/usr/lib/libc.so"] {
            assert_eq!(r.read(Path::new(ok), Use::Bytecode, 10).unwrap(), b"x", "{ok}");
        }
        // Outside, a sibling whose name merely starts alike, and a symlink from inside
        // to outside: refused as if missing.
        refused(&r, "/usr/bin/tool", Use::UprobeTarget);
        refused(&r, "/opt/bpfx/c.o", Use::Bytecode);
        symlink("/usr/bin/tool", d.path().join("opt/bpf/escape")).unwrap();
        refused(&r, "/opt/bpf/escape", Use::UprobeTarget);
        symlink("../bpfx", d.path().join("opt/bpf/dir-escape")).unwrap();
        refused(&r, "/opt/bpf/dir-escape/c.o", Use::Bytecode);
        // A symlink from outside to inside is judged by where it resolves: admitted.
        symlink("/opt/bpf/a.o", d.path().join("usr/bin/into")).unwrap();
        assert_eq!(r.read(Path::new("/usr/bin/into"), Use::Bytecode, 10).unwrap(), b"x");
        // `open` (uprobe targets) applies the same checks.
        assert!(r.open(Path::new("/opt/bpf/a.o"), Use::UprobeTarget).is_ok());
        assert_eq!(r.open(Path::new("/opt/bpfx/c.o"), Use::UprobeTarget).unwrap_err().reason, Reason::TargetNotFound);
        // The root itself as "/" strips nothing.
        let whole = HostRoot::at(Path::new("/"), &[d.path().join("opt/bpf")]).unwrap();
        assert!(whole.read(&d.path().join("opt/bpf/a.o"), Use::Bytecode, 10).is_ok());
        refused(&whole, &d.path().join("opt/bpfx/c.o").display().to_string(), Use::Bytecode);
    }

    #[test]
    fn prefixes_must_be_absolute_without_dotdot() {
        for bad in ["opt/bpf", "/opt/../etc", ""] {
            assert!(HostRoot::at(Path::new("/"), &[PathBuf::from(bad)]).is_err(), "{bad:?}");
        }
        let r = HostRoot::at(Path::new("/"), &[PathBuf::from("//opt//bpf/./")]).unwrap();
        assert_eq!(r.allowed(), [PathBuf::from("/opt/bpf")]);
    }

    /// A read that never finishes costs its caller the deadline, then a clear refusal.
    #[test]
    fn a_hung_read_is_abandoned_at_the_deadline() {
        let started = Instant::now();
        let e = bounded(Path::new("/slow/x.o"), Use::Bytecode, Duration::from_millis(200), || {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        })
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(e.reason, Reason::BytecodeNotFound);
        assert!(e.message.contains("/slow/x.o") && e.message.contains("within 0.2 s"), "{e}");
        // A quick one answers as it is.
        assert_eq!(bounded(Path::new("/x"), Use::Bytecode, Duration::from_secs(1), || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn the_fd_path_names_the_open_file() {
        let (_d, r) = root();
        let f = r.open(Path::new("/usr/bin/tool"), Use::UprobeTarget).unwrap();
        assert_eq!(std::fs::read(f.fd_path()).unwrap(), b"inside");
    }
}
