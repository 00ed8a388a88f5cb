//! The open-file limit both ends of the contract live under: every agent connection is a
//! descriptor in the operator, and every connection, program, map and link is one in the
//! agent. A container's default soft limit is often 1024 (containerd 2 no longer raises
//! it), below what either side's connection bounds allow.

use std::io;

/// Raises the soft `RLIMIT_NOFILE` to the hard one and returns the soft limit now in force.
pub fn raise_nofile() -> io::Result<u64> {
    let mut rlim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if rlim.rlim_cur < rlim.rlim_max {
            let raised = libc::rlimit { rlim_cur: rlim.rlim_max, rlim_max: rlim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(io::Error::last_os_error());
            }
            rlim = raised;
        }
    }
    Ok(rlim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_ends_at_the_hard_one() {
        let soft = raise_nofile().unwrap();
        let mut rlim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) }, 0);
        assert_eq!(soft, rlim.rlim_cur);
        assert_eq!(rlim.rlim_cur, rlim.rlim_max);
    }
}
