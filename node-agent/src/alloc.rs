//! Allocator tuning for a process that runs on every node, so each MiB is paid once per
//! node (figures: docs/benchmarks.md, node agent memory). glibc gives every thread that
//! allocates an arena of its own and keeps freed memory for reuse; the agent mostly waits,
//! so one arena costs little time, and what a burst of work (a parsed kernel BTF, a large
//! object, many Applies) freed is given back instead of staying resident.

/// Call first thing in `main`, before any thread exists.
pub fn tune() {
    // SAFETY: mallopt only sets glibc tunables.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Blocks this large come from mmap and go back to the kernel when freed (a fixed
        // threshold: glibc would otherwise raise it after the first large free).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        // Free memory at the top of the heap past this goes back at once.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 * 1024);
    }
}

/// Gives the free pages malloc holds back to the kernel (also from the middle of the
/// heap): after work that freed much, e.g. a removal or a released kernel BTF.
pub fn trim() {
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The glibc tunable that turns the per-thread caches off.
const NO_THREAD_CACHES: &str = "glibc.malloc.tcache_count=0";

/// glibc's per-thread caches keep up to 7 freed chunks of each small size in every thread
/// that ever allocated, counted as in use: over thousands of Applies, run on whichever
/// runtime or blocking thread picks them up, they filled to ~1 MiB (the soak in
/// docs/reliability.md). They can only be turned off by a tunable read at start-up, so the
/// agent starts itself again once with it set (same process id, arguments and the rest of
/// the environment); where that is impossible it runs on with the caches. Call first
/// thing in `main`.
pub fn without_thread_caches() {
    use std::os::unix::process::CommandExt;
    // Once only, whatever the new process sees: a process with file capabilities (secure
    // execution) has glibc drop tunables it does not trust.
    const STARTED_AGAIN: &str = "BPFLEET_AGENT_NO_THREAD_CACHES";
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.tcache_count") || std::env::var_os(STARTED_AGAIN).is_some() {
        return;
    }
    let tunables =
        if current.is_empty() { NO_THREAD_CACHES.to_string() } else { format!("{current}:{NO_THREAD_CACHES}") };
    let mut args = std::env::args_os();
    let Some(argv0) = args.next() else { return };
    // Returns only if the exec failed.
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(STARTED_AGAIN, "1")
        .exec();
    eprintln!("bpfleet-agent: cannot start again without glibc's thread caches ({error}); running with them");
}
