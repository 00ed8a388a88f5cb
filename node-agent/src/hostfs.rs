//! Files named by a spec (`bytecode.path`, uprobe targets) are files of the node, not of
//! the agent's container. In the chart the host's root is mounted read-only into the
//! agent (`--host-root /host`); every such path is resolved inside that root with
//! `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks (absolute ones included) stay inside
//! it, exactly as the host would resolve them. Only regular files are opened, and without
//! blocking: a FIFO or a device (`/sys/kernel/tracing/trace_pipe`) is refused before a
//! read could wait on it.
//!
//! A process-mode agent (on the host itself) uses `/`, the default.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{AgentError, Reason};

/// The host's root as this process sees it.
#[derive(Debug)]
pub struct HostRoot {
    path: PathBuf,
    dir: OwnedFd,
}

static HOST_ROOT: OnceLock<HostRoot> = OnceLock::new();

/// Use `path` as the host's root for every node path from now on. Call once, at start,
/// before any request; later calls fail.
pub fn set_host_root(path: &Path) -> anyhow::Result<()> {
    let root = HostRoot::at(path)?;
    HOST_ROOT.set(root).map_err(|_| anyhow::anyhow!("the host root is already set"))
}

/// The host root in use (`/` unless `set_host_root` was called).
pub fn host_root() -> &'static HostRoot {
    HOST_ROOT.get_or_init(|| HostRoot::at(Path::new("/")).expect("/ can be opened"))
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
}

/// A node file, open. For aya and the kernel, which take paths, [`NodeFile::fd_path`]
/// names this very file (`/proc/self/fd/N`) for as long as it stays open.
#[derive(Debug)]
pub struct NodeFile {
    file: File,
}

impl NodeFile {
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }
}

impl HostRoot {
    fn at(path: &Path) -> anyhow::Result<HostRoot> {
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
        Ok(HostRoot { path: path.to_path_buf(), dir })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the node's regular file `path` (absolute, as the node names it) for reading,
    /// resolved inside this root. Errors name the node path and say what to fix; they
    /// never tell more about a file that fails the checks than that it fails them.
    pub fn open(&self, path: &Path, what: Use) -> Result<NodeFile, AgentError> {
        let shown = path.display();
        if !path.is_absolute() {
            return Err(AgentError::new(Reason::InvalidSpec, format!("{} {shown} must be absolute", what.noun())));
        }
        let Some(c) = cstring(path) else {
            return Err(AgentError::new(Reason::InvalidSpec, format!("{} {shown} contains a NUL byte", what.noun())));
        };
        let how = OpenHow {
            flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        let fd = loop {
            // SAFETY: `how` is a valid open_how of the size passed; `c` is NUL-terminated.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.dir.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd >= 0 {
                break fd as i32;
            }
            let err = std::io::Error::last_os_error();
            let message = match err.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                    format!("{} {shown} does not exist on this node", what.noun())
                }
                Some(libc::EACCES) | Some(libc::EPERM) => {
                    format!("{} {shown} on this node cannot be read by the agent", what.noun())
                }
                Some(libc::ELOOP) => {
                    format!("{} {shown} on this node resolves through too many or /proc-style links", what.noun())
                }
                Some(libc::ENOSYS) => {
                    "this kernel lacks openat2 (Linux 5.6 or newer is needed to resolve node paths safely)".to_string()
                }
                _ => format!("cannot open {} {shown} on this node: {err}", what.noun()),
            };
            let reason = match err.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => what.missing(),
                _ => Reason::InvalidSpec,
            };
            return Err(AgentError::new(reason, message));
        };
        // SAFETY: `fd` is a new descriptor this process owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = file
            .metadata()
            .map_err(|e| AgentError::new(Reason::InvalidSpec, format!("cannot stat {} {shown}: {e}", what.noun())))?;
        if !meta.file_type().is_file() {
            return Err(AgentError::new(
                what.missing(),
                format!("{} {shown} on this node is not a regular file", what.noun()),
            ));
        }
        Ok(NodeFile { file })
    }

    /// Read at most `limit + 1` bytes of the node's regular file `path` (the caller
    /// refuses what is over its limit without holding more).
    pub fn read(&self, path: &Path, what: Use, limit: usize) -> Result<Vec<u8>, AgentError> {
        let mut f = self.open(path, what)?;
        let mut buf = Vec::new();
        f.file().take(limit as u64 + 1).read_to_end(&mut buf).map_err(|e| {
            AgentError::new(
                Reason::InvalidSpec,
                format!("cannot read {} {} on this node: {e}", what.noun(), path.display()),
            )
        })?;
        Ok(buf)
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

    use super::*;

    fn root() -> (tempfile::TempDir, HostRoot) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/tool"), b"inside").unwrap();
        let r = HostRoot::at(dir.path()).unwrap();
        (dir, r)
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
        let e = r.read(Path::new(&format!("/../../{name}")), Use::Bytecode, 100).unwrap_err();
        assert_eq!(e.reason, Reason::BytecodeNotFound, "{e}");
        // An absolute symlink is resolved against the root, not the agent's /.
        symlink(&outside, d.path().join("usr/bin/abs")).unwrap();
        let e = r.read(Path::new("/usr/bin/abs"), Use::Bytecode, 100).unwrap_err();
        assert_eq!(e.reason, Reason::BytecodeNotFound, "{e}");
        symlink("/usr/bin/tool", d.path().join("usr/bin/link")).unwrap();
        assert_eq!(r.read(Path::new("/usr/bin/link"), Use::Bytecode, 100).unwrap(), b"inside");
        std::fs::remove_file(outside).unwrap();
    }

    #[test]
    fn only_regular_files_open_and_nothing_blocks() {
        let (d, r) = root();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO with no writer would block a blocking open or read forever.
        let e = r.read(Path::new("/fifo"), Use::Bytecode, 100).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        let e = r.read(Path::new("/usr/bin"), Use::Bytecode, 100).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        let e = r.read(Path::new("/usr/bin/none"), Use::UprobeTarget, 100).unwrap_err();
        assert_eq!(e.reason, Reason::TargetNotFound);
        assert!(e.message.contains("uprobe target /usr/bin/none does not exist on this node"), "{e}");
        let e = r.read(Path::new("relative"), Use::Bytecode, 100).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidSpec);
    }

    #[test]
    fn the_fd_path_names_the_open_file() {
        let (_d, r) = root();
        let f = r.open(Path::new("/usr/bin/tool"), Use::UprobeTarget).unwrap();
        assert_eq!(std::fs::read(f.fd_path()).unwrap(), b"inside");
    }
}
