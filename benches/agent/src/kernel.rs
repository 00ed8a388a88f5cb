//! Program ids straight from the bpf(2) syscall, so the bench can prove that each run's
//! programs are gone before the next run starts, whoever loaded them.

use std::collections::HashSet;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf<T>(cmd: libc::c_long, attr: &T) -> libc::c_long {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd` and outlives the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) }
}

/// The kernel id of the program behind `fd`.
pub fn program_id(fd: RawFd) -> Option<u32> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // bpf_prog_info starts with `__u32 type; __u32 id;`; the kernel fills at most info_len.
    let mut info = [0u32; 2];
    let attr = InfoAttr { bpf_fd: fd as u32, info_len: 8, info: info.as_mut_ptr() as u64 };
    (bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) == 0).then_some(info[1])
}

/// Whether a program with this id is still loaded.
fn program_exists(id: u32) -> bool {
    #[repr(C)]
    struct GetFdAttr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &GetFdAttr { prog_id: id, next_id: 0, open_flags: 0 });
    if fd >= 0 {
        // SAFETY: the fd was just returned to us and is closed once.
        unsafe { libc::close(fd as RawFd) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// Wait until none of `ids` is loaded. Unpinning (and closing the last fd) releases a
/// program from a kernel work queue, after its links are detached; a run that starts
/// before that finishes would find the hook half torn down and be timed unfairly.
pub fn wait_gone(ids: &HashSet<u32>, timeout: Duration) -> Result<Duration, Vec<u32>> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = ids.iter().copied().filter(|id| program_exists(*id)).collect();
        if left.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(left);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
