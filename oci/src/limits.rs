//! Size limits. Bytecode images are small; these bound what a hostile or broken
//! registry can make us download, hold or inflate.

/// A manifest, index or image config.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The compressed layer as downloaded.
pub const MAX_LAYER_BYTES: u64 = 16 << 20;
/// The ELF object, decompressed.
pub const MAX_ELF_BYTES: u64 = 16 << 20;
/// Everything in the layer's tar stream, decompressed (the object, headers, other files).
pub const MAX_LAYER_UNPACKED_BYTES: u64 = 2 * MAX_ELF_BYTES;
/// A cosign simple-signing payload.
pub const MAX_SIGNATURE_PAYLOAD_BYTES: u64 = 1 << 20;
/// Signature layers of one `.sig` manifest read at most: each is a blob request, and a
/// registry could list thousands. A repository signed more often than this keeps its
/// signatures in an index or prunes old ones.
pub const MAX_SIGNATURE_LAYERS: usize = 16;
