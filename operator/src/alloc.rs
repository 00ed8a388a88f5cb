//! Allocator tuning. glibc gives each thread that allocates its own heap arena; with a
//! multi-threaded runtime the arenas fragment and hold freed memory. One arena: the
//! process mostly waits on I/O, so sharing one costs little time and saves memory (the
//! figures are in docs/benchmarks.md, operator memory).

/// Call first thing in `main`, before any thread exists.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a glibc tunable; M_ARENA_MAX = -8.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
