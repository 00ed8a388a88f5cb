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
