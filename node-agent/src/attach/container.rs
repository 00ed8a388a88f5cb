//! Uprobes on a binary inside a container.
//!
//! The path a spec names is the container's: it is resolved inside the container's root
//! directory by the kernel (`openat2` with `RESOLVE_IN_ROOT`), so `..` stops at the root
//! and every symlink, absolute ones included, resolves as it would inside the container:
//! nothing leads out of it. `RESOLVE_NO_MAGICLINKS` refuses `/proc/…/fd`-style links.
//! The file is opened `O_PATH` (nothing of it runs or blocks: no FIFO, no device) and
//! must be a regular file. It stays open, and aya and the kernel get `/proc/self/fd/N`,
//! which names exactly that inode: nothing can swap the file between check and attach.
//!
//! aya reads the binary for a symbol's offset, and if the symbol is missing it follows
//! the binary's `.gnu_debuglink` to a debug file, resolved against the agent's own
//! filesystem (an absolute name, or one next to `/proc/self/fd/`). So a symbol is first
//! looked up here, in the same file: aya only ever reads a binary that has it.
//!
//! A uprobe is set on an inode: every process that maps that file hits it, in this
//! container or in any other sharing the image layer.
//!
//! The kernel keeps the path a uprobe was attached through, mount included. Through the
//! container's root (an overlay mount under containerd) that would keep the mount busy:
//! when the container stops, containerd cannot unmount it (EBUSY), fails the task's
//! cleanup, keeps reporting the container running, and never restarts it. So where the
//! root is an overlay, the probe is attached through the file the overlay shows, in its
//! layer on the node's own file system (`backing_file`: the same inode, checked), which
//! nothing ever unmounts; only a root that is no overlay (a plain directory) is attached
//! through directly. A [`ContainerRoot`] is held open only for the attach.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::programs::UProbe;
use aya::programs::uprobe::UProbeError;
use crds::names::ProgramName;
use crds::validate::UprobeTarget;

use super::keep_link;
use super::pod::{LinkPin, Place, PlaceKind, PodError};
use crate::error::{AgentError, Reason, chain};

/// A container's root directory, open.
#[derive(Debug)]
pub struct ContainerRoot {
    place: Place,
    dir: OwnedFd,
}

/// A regular file inside a container, open (`O_PATH`).
#[derive(Debug)]
pub struct ContainerFile {
    fd: OwnedFd,
    /// As the container names it.
    path: PathBuf,
}

impl ContainerFile {
    /// The path inside the container it was resolved from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `/proc/self/fd/N`: a path that names this very file, for APIs that take paths.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Whether the file (an ELF object) defines `symbol`, as aya looks it up: in its
    /// dynamic symbols, then its symbol table. Read lazily: a binary is never loaded whole.
    fn defines(&self, symbol: &str) -> Result<bool, String> {
        let file = File::open(self.fd_path()).map_err(|e| format!("cannot read it: {e}"))?;
        let cache = object::ReadCache::new(file);
        let elf = object::File::parse(&cache).map_err(|e| format!("it is not an ELF binary or library: {e}"))?;
        use object::{Object, ObjectSymbol};
        Ok(elf.dynamic_symbols().chain(elf.symbols()).any(|s| s.name() == Ok(symbol)))
    }
}

impl AsFd for ContainerFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// How often a resolution the kernel asks to retry (EAGAIN: a rename raced it) is tried.
const RESOLVE_ATTEMPTS: usize = 8;

impl ContainerRoot {
    /// Open the container's root directory as the node names it (containerd's
    /// `…/io.containerd.runtime.v2.task/k8s.io/<id>/rootfs`). `context` says whose it is
    /// in messages ("container app of pod team-a/web-7f…"). A root that does not exist
    /// is a container gone.
    pub fn open(path: impl Into<PathBuf>, context: impl Into<String>) -> Result<Self, PodError> {
        let place = Place::new(PlaceKind::ContainerRoot, path, context);
        let Ok(c) = CString::new(place.path().as_os_str().as_encoded_bytes()) else {
            return Err(failed(Reason::InvalidSpec, format!("{place} contains a NUL byte")));
        };
        // SAFETY: `c` is NUL-terminated; the result is checked.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => PodError::Gone(place),
                Some(libc::ENOTDIR) => failed(Reason::TargetNotFound, format!("{place} is not a directory")),
                _ => failed(Reason::TargetNotFound, format!("cannot open {place}: {e}")),
            });
        }
        // SAFETY: `fd` is a new descriptor this process owns.
        Ok(Self { place, dir: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Resolve `path` (absolute, as the container names it) inside this root to a
    /// regular file, held open. Fails if it is missing there, not a regular file, or
    /// reached through a link the kernel will not follow; `Gone` if the root itself went.
    pub fn resolve(&self, path: &Path) -> Result<ContainerFile, PodError> {
        self.resolve_now(path).map_err(|e| if self.still_there() { e } else { PodError::Gone(self.place.clone()) })
    }

    fn resolve_now(&self, path: &Path) -> Result<ContainerFile, PodError> {
        let shown = path.display();
        let place = &self.place;
        if !path.is_absolute() {
            return Err(failed(
                Reason::InvalidSpec,
                format!("{shown} must be an absolute path, as the container sees it (in {place})"),
            ));
        }
        let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return Err(failed(Reason::InvalidSpec, format!("{shown} contains a NUL byte")));
        };
        let how = OpenHow {
            flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        let mut attempts = 0;
        let fd = loop {
            attempts += 1;
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
                // SAFETY: `fd` is a new descriptor this process owns.
                break unsafe { OwnedFd::from_raw_fd(fd as i32) };
            }
            let e = std::io::Error::last_os_error();
            let message = match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN) if attempts < RESOLVE_ATTEMPTS => continue,
                Some(libc::ENOENT | libc::ENOTDIR) => format!(
                    "{shown} does not exist in {place} (its symlinks and '..' resolve inside the container): \
                     name the binary by its path inside the container"
                ),
                Some(libc::ELOOP) => format!(
                    "{shown} in {place} goes through a symlink loop or a /proc magic link, which are not followed: \
                     name the binary by its real path inside the container"
                ),
                Some(libc::EXDEV) => format!("{shown} resolves outside {place}: refused"),
                Some(libc::ENOSYS) => {
                    return Err(failed(
                        Reason::KernelUnsupported,
                        "this kernel lacks openat2 (Linux 5.6 or newer is needed to resolve paths inside containers safely)"
                            .into(),
                    ));
                }
                _ => format!("cannot open {shown} in {place}: {e}"),
            };
            return Err(failed(Reason::TargetNotFound, message));
        };
        let file = ContainerFile { fd, path: path.to_path_buf() };
        // stat follows the descriptor's link to the file itself (an O_PATH fstat, in effect).
        let meta = std::fs::metadata(file.fd_path())
            .map_err(|e| failed(Reason::Internal, format!("cannot inspect {shown} in {place}: {e}")))?;
        if !meta.is_file() {
            return Err(failed(
                Reason::TargetNotFound,
                format!("{shown} in {place} is {}, not a regular file: name the binary or library itself", kind(&meta)),
            ));
        }
        self.check_inside(&file)?;
        Ok(file)
    }

    /// The kernel resolved inside the root; say no anyway should the file's location
    /// not lie under the root's (a defence against a kernel or mount surprise).
    fn check_inside(&self, file: &ContainerFile) -> Result<(), PodError> {
        let location = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}"));
        match (location(self.dir.as_raw_fd()), location(file.fd.as_raw_fd())) {
            (Ok(root), Ok(at)) if at.starts_with(&root) => Ok(()),
            (Ok(_), Ok(at)) => Err(failed(
                Reason::TargetNotFound,
                format!("{} resolves to {}, outside {}: refused", file.path.display(), at.display(), self.place),
            )),
            (Err(e), _) | (_, Err(e)) => Err(failed(
                Reason::Internal,
                format!("cannot tell where {} in {} resolved: {e}", file.path.display(), self.place),
            )),
        }
    }

    /// The file `file` shows, in its overlay layer on the node's file system (the
    /// directories the root's overlay mount names, under `host_root`), when the root is
    /// an overlay mount and that layer's file is the very inode (number, size, mtime).
    /// `None` otherwise: the caller attaches through `file` itself.
    pub fn backing_file(&self, file: &ContainerFile, host_root: &Path) -> Option<ContainerFile> {
        let root = std::fs::read_link(format!("/proc/self/fd/{}", self.dir.as_raw_fd())).ok()?;
        let at = std::fs::read_link(file.fd_path()).ok()?;
        let relative = at.strip_prefix(&root).ok()?.to_path_buf();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let layers = overlay_layers(&mountinfo, &root)?;
        let shown = std::fs::metadata(file.fd_path()).ok()?;
        for layer in layers {
            // Relative layer paths (containerd's form for very long option strings) name
            // directories this cannot place: not found, rather than guessed.
            if !layer.is_absolute() {
                return None;
            }
            let dir = host_root.join(layer.strip_prefix("/").unwrap_or(&layer));
            let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else { return None };
            // SAFETY: `c` is NUL-terminated; the result is checked.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
            if fd < 0 {
                return None;
            }
            // SAFETY: a new descriptor this process owns.
            let layer_dir = unsafe { OwnedFd::from_raw_fd(fd) };
            let how = OpenHow {
                flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
                mode: 0,
                resolve: libc::RESOLVE_BENEATH
                    | libc::RESOLVE_NO_SYMLINKS
                    | libc::RESOLVE_NO_MAGICLINKS
                    | libc::RESOLVE_NO_XDEV,
            };
            let Ok(rel) = CString::new(relative.as_os_str().as_encoded_bytes()) else { return None };
            // SAFETY: `how` is a valid open_how of the size passed; `rel` is NUL-terminated.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    layer_dir.as_raw_fd(),
                    rel.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd < 0 {
                // Not in this layer: a lower one has it.
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                    continue;
                }
                return None;
            }
            // SAFETY: a new descriptor this process owns.
            let candidate = ContainerFile { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, path: file.path.clone() };
            // The topmost layer that has the name is the one the overlay shows.
            let real = std::fs::metadata(candidate.fd_path()).ok()?;
            let same = real.is_file()
                && real.ino() == shown.ino()
                && real.size() == shown.size()
                && (real.mtime(), real.mtime_nsec()) == (shown.mtime(), shown.mtime_nsec());
            return same.then_some(candidate);
        }
        None
    }

    /// Whether the root is an overlay mount (as containerd's are).
    pub fn is_overlay(&self) -> bool {
        let (Ok(root), Ok(mountinfo)) = (
            std::fs::read_link(format!("/proc/self/fd/{}", self.dir.as_raw_fd())),
            std::fs::read_to_string("/proc/self/mountinfo"),
        ) else {
            return false;
        };
        overlay_layers(&mountinfo, &root).is_some()
    }

    /// Whether the root's path still names the directory this root holds open.
    fn still_there(&self) -> bool {
        let held = std::fs::metadata(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
        match (std::fs::metadata(self.place.path()), held) {
            (Ok(now), Ok(held)) => now.dev() == held.dev() && now.ino() == held.ino() && held.nlink() > 0,
            _ => false,
        }
    }
}

/// Attach the loaded uprobe or uretprobe `up` to `probe` (its `target` a path inside
/// the container, resolved by [`ContainerRoot::resolve`]) and pin the link at `pin`, as
/// the agent pins every probe's link. `program` names it in messages.
pub fn attach_uprobe(
    up: &mut UProbe,
    program: &ProgramName,
    root: &ContainerRoot,
    probe: &UprobeTarget,
    pin: &Path,
) -> Result<LinkPin, PodError> {
    let hook = format!("{} in {}", super::probes::uprobe_hook(probe), root.place);
    let not_found = |message: String| AgentError::for_program(Reason::TargetNotFound, program.as_str(), message);
    let file = root.resolve(&probe.target).map_err(|e| match e {
        PodError::Failed(e) => PodError::Failed(AgentError { program: Some(program.to_string()), ..e }),
        gone => gone,
    })?;
    let file = match root.backing_file(&file, crate::hostfs::host_root().path()) {
        Some(backing) => backing,
        // Through an overlay root the probe would keep the container from being cleaned
        // up when it stops: not attached at all rather than that.
        None if root.is_overlay() => {
            return Err(not_found(format!(
                "uprobe {hook}: {} is not found as itself in the container's image layers on this node (a file \
                 copied up or changed in the container, or layers the agent cannot reach under its host root), and a \
                 probe through the container's root would keep the runtime from cleaning the container up when it \
                 stops: probe a file of the image as built",
                probe.target.display()
            ))
            .into());
        }
        None => file,
    };
    if let Some(symbol) = &probe.symbol {
        match file.defines(symbol) {
            Ok(true) => {}
            Ok(false) => {
                return Err(not_found(format!(
                    "uprobe {hook}: the binary has no symbol {symbol:?} (separate debug files are not read \
                     inside containers): probe a symbol the binary itself has, or give an offset"
                ))
                .into());
            }
            Err(why) => return Err(not_found(format!("uprobe {hook}: {why}")).into()),
        }
    }
    let (location, scope) = super::probes::uprobe_place(probe);
    let attach_err = |e: &(dyn std::error::Error + 'static)| {
        let reason = match e.downcast_ref::<aya::programs::ProgramError>() {
            Some(aya::programs::ProgramError::UProbeError(
                UProbeError::SymbolError { .. } | UProbeError::InvalidTarget { .. },
            )) => Reason::TargetNotFound,
            _ => Reason::AttachFailed,
        };
        AgentError::for_program(reason, program.as_str(), format!("attaching uprobe {hook}: {}", chain(e)))
    };
    let lid = up.attach(location, file.fd_path(), scope).map_err(|e| attach_err(&e))?;
    let link = up.take_link(lid).map_err(|e| attach_err(&e))?;
    let link = LinkPin { path: pin.to_path_buf(), link_id: keep_link(program.as_str(), link, pin)? };
    // The container stopped meanwhile: take the probe off again, as if it never was.
    if !root.still_there() {
        if let Err(e) = link.detach() {
            tracing::warn!(error = %e, "undoing a uprobe in a container that stopped");
        }
        return Err(PodError::Gone(root.place.clone()));
    }
    Ok(link)
}

/// The layers of the overlay mounted at `mount_point` per `mountinfo` (the topmost mount
/// there), top first: its `upperdir`, then its `lowerdir`s. `None` when no overlay is
/// mounted there.
fn overlay_layers(mountinfo: &str, mount_point: &Path) -> Option<Vec<PathBuf>> {
    let unescape = |s: &str| -> String {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' {
                let code: String = chars.by_ref().take(3).collect();
                match u8::from_str_radix(&code, 8) {
                    Ok(b) => out.push(b as char),
                    Err(_) => {
                        out.push(c);
                        out.push_str(&code);
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let mut found = None;
    for line in mountinfo.lines() {
        let Some((mount, fs)) = line.split_once(" - ") else { continue };
        let point = mount.split(' ').nth(4).map(unescape);
        if point.as_deref().map(Path::new) != Some(mount_point) {
            continue;
        }
        let mut fs = fs.split(' ');
        let (fstype, _source, options) = (fs.next(), fs.next(), fs.next());
        found = (fstype == Some("overlay")).then(|| options.unwrap_or_default().to_string());
    }
    let options = found?;
    let mut layers = Vec::new();
    let mut lower = Vec::new();
    for option in options.split(',') {
        if let Some(dir) = option.strip_prefix("upperdir=") {
            layers.push(PathBuf::from(unescape(dir)));
        } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
            lower.extend(dirs.split(':').map(|d| PathBuf::from(unescape(d))));
        }
    }
    layers.extend(lower);
    (!layers.is_empty()).then_some(layers)
}

fn failed(reason: Reason, message: String) -> PodError {
    PodError::Failed(AgentError::new(reason, message))
}

/// What a non-regular file is, in words.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_s_layers_are_read_from_mountinfo_top_first() {
        let info = "28 27 0:43 / /run/c/k8s.io/abc/rootfs rw,relatime shared:20 - overlay overlay \
                    rw,lowerdir=/var/lib/s/2/fs:/var/lib/s/1/fs,upperdir=/var/lib/s/9/fs,workdir=/var/lib/s/9/work\n\
                    29 27 0:44 / /run/c/k8s.io/d\\040e/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/u\n\
                    30 27 8:1 / /data rw - ext4 /dev/vda rw\n";
        let layers = overlay_layers(info, Path::new("/run/c/k8s.io/abc/rootfs")).unwrap();
        assert_eq!(layers, [PathBuf::from("/var/lib/s/9/fs"), "/var/lib/s/2/fs".into(), "/var/lib/s/1/fs".into()]);
        assert_eq!(overlay_layers(info, Path::new("/run/c/k8s.io/d e/rootfs")).unwrap().len(), 2, "escaped space");
        assert_eq!(overlay_layers(info, Path::new("/data")), None, "not an overlay");
        assert_eq!(overlay_layers(info, Path::new("/nowhere")), None);
    }
}
