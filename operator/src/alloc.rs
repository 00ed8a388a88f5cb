//! Allocator tuning. glibc gives each thread that allocates its own heap arena; with a
//! multi-threaded runtime the arenas fragment and hold freed memory, which showed as
//! ~20 MiB of RSS above the heap actually in use at 1,000 BpfPrograms (benchmarks.md).
//! One arena: the process mostly waits on I/O, and at 1,000 programs × 50 nodes one arena
//! peaks ~4 MiB lower than two (48 against 52 MiB) for ~5 % more time at start-up.

/// Call first thing in `main`, before any thread exists.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a glibc tunable; M_ARENA_MAX = -8.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
