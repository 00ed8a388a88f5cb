//! Bounds on user input, shared by the schema, the operator and the agent.

/// Largest ELF object accepted, decoded (1 MiB).
pub const MAX_BYTECODE_BYTES: usize = 1 << 20;
/// Most global variables one BpfProgram may set.
pub const MAX_GLOBALS: u32 = 64;
/// Largest value of one global variable, in bytes.
pub const MAX_GLOBAL_BYTES: usize = 4096;
/// Most programs (functions) in one BpfProgram.
pub const MAX_PROGRAMS: usize = 64;
/// Most hooks (interfaces, tracepoints) one program attaches to.
pub const MAX_HOOKS: usize = 32;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;
/// Entries kept in `BpfProgram.status.failures`.
pub const MAX_STATUS_FAILURES: usize = 16;
