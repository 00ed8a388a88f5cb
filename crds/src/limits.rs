//! Bounds on user input, shared by the schema, the operator and the agent.

/// Largest ELF object accepted inline or from a ConfigMap, decoded (1 MiB).
pub const MAX_BYTECODE_BYTES: usize = 1 << 20;
/// Largest ELF object accepted from an OCI image (16 MiB).
pub const MAX_IMAGE_BYTECODE_BYTES: usize = 16 << 20;
/// Most global variables one BpfProgram may set.
pub const MAX_GLOBALS: u32 = 64;
/// Largest value of one global variable, in bytes.
pub const MAX_GLOBAL_BYTES: usize = 4096;
/// Most programs (functions) in one BpfProgram.
pub const MAX_PROGRAMS: usize = 64;
/// Most hooks (interfaces, tracepoints) one program attaches to.
pub const MAX_HOOKS: usize = 32;
/// Most container names a uprobe's `containers.containerNames` lists.
pub const MAX_CONTAINER_NAMES: usize = 16;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;
/// Entries kept in `BpfProgram.status.failures`.
pub const MAX_STATUS_FAILURES: usize = 16;
/// Largest Apply request on the wire: the largest object, every global variable at its
/// largest, and room for the program list, names and framing. Both sides set their gRPC
/// message limits from this, so a request within the documented limits always fits.
/// The program list at its largest: 64 programs × 32 hooks of 128 characters, or 64
/// uprobe targets of 4096 characters, with their framing, stays under 1 MiB.
pub const MAX_APPLY_MESSAGE_BYTES: usize =
    MAX_IMAGE_BYTECODE_BYTES + MAX_GLOBALS as usize * MAX_GLOBAL_BYTES + (1 << 20);
/// Applies one ApplyBatch carries at most (the agent refuses more); the operator also
/// keeps a batch under [`MAX_APPLY_MESSAGE_BYTES`] in all.
pub const MAX_APPLY_BATCH: usize = 32;
/// Applies of one ApplyBatch an agent carries out at once; the operator gives a batch as
/// many call timeouts as it has rounds of these.
pub const APPLY_BATCH_PARALLEL: usize = 4;
/// A List page stays under this, however many owners a node runs (the rest come in the
/// next pages).
pub const MAX_LIST_PAGE_BYTES: usize = 1 << 20;
/// Owners per List page when the caller does not say.
pub const DEFAULT_LIST_PAGE_SIZE: usize = 500;
/// Largest answer an agent sends (a List page, a Watch event, an Apply's state): the
/// agent encodes under it and the operator refuses to decode more.
pub const MAX_ANSWER_BYTES: usize = MAX_LIST_PAGE_BYTES + (64 << 10);
/// Owners one agent may report. Far above any real cluster's BpfPrograms; an agent
/// reporting more is refused before anything enters the operator's index.
pub const MAX_OWNERS_PER_NODE: usize = 10_000;
/// Pods one Apply may name for one owner (`ApplyRequest.pods`): the pods of one node a
/// BpfProgram attaches in. An owner's answer carries one `PodState` per pod (some 500 bytes
/// each with one program on one interface), so its List entry stays far below a page.
pub const MAX_PODS_PER_OWNER: usize = 512;
