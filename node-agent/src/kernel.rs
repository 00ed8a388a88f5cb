//! Host checks at start-up.

use std::path::Path;

use anyhow::bail;

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
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        bail!("cannot stat {}: {}", probe.display(), std::io::Error::last_os_error());
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpf filesystem: mount one (mount -t bpf bpf /sys/fs/bpf) or pass --bpffs-root below a bpffs mount",
            probe.display()
        );
    }
    Ok(())
}

pub fn hostname() -> anyhow::Result<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(s.trim().to_lowercase())
}
