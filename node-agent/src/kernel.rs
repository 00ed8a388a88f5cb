//! Host checks at start-up.

use std::path::Path;

use anyhow::{Context, bail};

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Kernels >= 5.11 charge BPF memory to the memory cgroup and ignore RLIMIT_MEMLOCK;
/// older ones need it raised. Failing to raise it is therefore only a warning.
pub fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot raise RLIMIT_MEMLOCK; fine on kernels >= 5.11 (memory cgroup accounting)"
        );
    }
}

/// Raise the soft limit of open files to the hard one: every connection, program, map
/// and link is a descriptor, and a node's default soft limit (often 1024) is below what
/// the connection bounds of `tls` allow.
pub fn raise_nofile() {
    if let Err(error) = proto::limits::raise_nofile() {
        tracing::warn!(%error, "cannot raise RLIMIT_NOFILE");
    }
}

/// The bpffs root must be on a bpf filesystem (or below a directory that is), or pins
/// would silently fail.
pub fn check_bpffs(root: &Path) -> anyhow::Result<()> {
    let mut probe = root;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    if !is_bpffs(probe)? {
        bail!(
            "{} is not on a bpf filesystem: mount one (mount -t bpf bpf /sys/fs/bpf) or pass --bpffs-root below a bpffs mount",
            probe.display()
        );
    }
    Ok(())
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!("cannot stat {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Mount a bpf filesystem at `path` (created if missing) unless one is there already.
/// Returns whether it mounted one.
pub fn mount_bpffs(path: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    if is_bpffs(path)? {
        return Ok(false);
    }
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let (source, fstype, data) = (c"bpf", c"bpf", c"mode=0700");
    // SAFETY: every argument is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if rc != 0 {
        bail!(
            "cannot mount bpffs at {}: {} (the container needs CAP_SYS_ADMIN and a Bidirectional mount)",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(true)
}

static HOST_PID: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Say whether this agent runs in the host's PID namespace (the chart's `--host-pid`).
/// Unset, it is read from `/proc/self/status` (see [`in_host_pid_namespace`]).
pub fn set_host_pid(host: bool) {
    let _ = HOST_PID.set(host);
}

/// Whether process ids this agent sees are the host's: as set by `--host-pid`, else
/// whether this process is in its first PID namespace (its `NSpid` has one entry; in a
/// container without hostPID it has two).
pub fn in_host_pid_namespace() -> bool {
    *HOST_PID.get_or_init(|| std::fs::read_to_string("/proc/self/status").map_or(true, |s| first_pid_namespace(&s)))
}

/// From `/proc/PID/status`: the process has one pid (`NSpid: 4242`), not one per nested
/// namespace (`NSpid: 4242 1`). A kernel without the line (before 4.1) says nothing: yes.
fn first_pid_namespace(status: &str) -> bool {
    status.lines().find(|l| l.starts_with("NSpid:")).is_none_or(|l| l.split_whitespace().count() == 2)
}

#[cfg(test)]
mod pid_namespace_tests {
    #[test]
    fn nested_pid_namespaces_show_in_nspid() {
        assert!(super::first_pid_namespace("Name:\tbpfleet-agent\nNSpid:\t4242\n"));
        assert!(!super::first_pid_namespace("Name:\tbpfleet-agent\nNSpid:\t4242\t1\n"));
        assert!(super::first_pid_namespace("Name:\tx\n"));
        // This test process runs on the host.
        assert!(super::in_host_pid_namespace());
    }
}

pub fn hostname() -> anyhow::Result<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(s.trim().to_lowercase())
}

/// A bpf_link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLink {
    pub link_type: u32,
    pub id: u32,
    pub program_id: u32,
    /// For XDP and TCX links: the interface it is attached to (0: detached, e.g. the
    /// interface was deleted).
    pub ifindex: Option<u32>,
}

pub const BPF_LINK_TYPE_XDP: u32 = 6;
pub const BPF_LINK_TYPE_TCX: u32 = 11;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// BPF_LINK_UPDATE only if the link still runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

/// A file descriptor of the BPF object (program, link, map) pinned at `path`.
pub fn obj_get(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd (zero-padded).
    let get: [u64; 3] = [c.as_ptr() as u64, 0, 0];
    // SAFETY: a zero-padded bpf_attr with the path pointer first; `c` outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, get.as_ptr(), std::mem::size_of_val(&get)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Make a link run another program, atomically (BPF_LINK_UPDATE): every event the hook
/// sees runs either the old program or the new one. With `expected`, only if the link
/// still runs that program (EPERM otherwise), so a swap never replaces someone else's.
pub fn link_update(
    link: std::os::fd::BorrowedFd<'_>,
    program: std::os::fd::BorrowedFd<'_>,
    expected: Option<std::os::fd::BorrowedFd<'_>>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // struct { link_fd; new_prog_fd; flags; old_prog_fd; } of union bpf_attr.
    let attr: [u32; 4] = [
        link.as_raw_fd() as u32,
        program.as_raw_fd() as u32,
        if expected.is_some() { BPF_F_REPLACE } else { 0 },
        expected.map(|e| e.as_raw_fd() as u32).unwrap_or(0),
    ];
    // SAFETY: a valid BPF_LINK_UPDATE attribute of the given size; the fds are borrowed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the kernel says of the link pinned at `path` (BPF_OBJ_GET, then
/// BPF_OBJ_GET_INFO_BY_FD): read from the kernel, not from our records.
pub fn pinned_link(path: &Path) -> std::io::Result<KernelLink> {
    #[repr(C)]
    #[derive(Default)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose XDP and
    // TCX members start with the ifindex.
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        union: [u64; 8],
    }
    let fd = obj_get(path)?;
    let mut info = LinkInfo::default();
    let attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: `info` is writable for `info_len` bytes for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, std::mem::size_of::<InfoByFd>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ifindex = matches!(info.link_type, BPF_LINK_TYPE_XDP | BPF_LINK_TYPE_TCX).then_some(info.union[0] as u32);
    Ok(KernelLink { link_type: info.link_type, id: info.id, program_id: info.prog_id, ifindex })
}

/// The current index of interface `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The kernel id of the program pinned at `path`.
pub fn pinned_program_id(path: &Path) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let fd = obj_get(path)?;
    // struct bpf_prog_info starts with type and id; the kernel fills what fits.
    let mut info = [0u32; 64];
    let attr: [u64; 2] =
        [u64::from(fd.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32), info.as_mut_ptr() as u64];
    // SAFETY: `info` is writable for the length given in the attribute.
    let r =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info[1])
}

/// Every network interface of this namespace: (name, index).
pub fn interfaces() -> Vec<(String, u32)> {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let idx = std::fs::read_to_string(e.path().join("ifindex")).ok()?.trim().parse().ok()?;
            Some((name, idx))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifindex_names_the_kernels_interfaces_and_nothing_else() {
        // Loopback is index 1 in every network namespace.
        assert_eq!(ifindex("lo"), Some(1));
        assert_eq!(ifindex("bpfleet-none0"), None);
        assert_eq!(ifindex(""), None);
        assert_eq!(ifindex("lo\0x"), None);
        assert_eq!(ifindex(&"x".repeat(libc::IFNAMSIZ)), None, "longer than the kernel allows");
        for (name, idx) in interfaces() {
            assert_eq!(ifindex(&name), Some(idx), "{name}");
        }
    }
}
