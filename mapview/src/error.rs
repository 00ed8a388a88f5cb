//! What can go wrong, worded for the person running `kubectl bpfleet maps` or reading the
//! exporter's log: each message names the type or field involved and, where there is one,
//! what to do about it.

/// Why a BTF blob could not be parsed, or a value could not be decoded with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The blob does not start with the BTF magic at all.
    #[error("not BTF: the blob starts with {found:#06x}, BTF starts with 0xeb9f")]
    BadMagic { found: u16 },

    /// The magic is byte-swapped: BTF of a big-endian target.
    #[error("the BTF is big-endian; only little-endian BTF (x86_64, arm64, `clang -target bpf` on those) can be read")]
    BigEndian,

    /// A header field is out of range (version, lengths, section bounds).
    #[error("bad BTF header: {0}")]
    BadHeader(String),

    /// The blob ends before something it announces.
    #[error("BTF truncated: {0}")]
    Truncated(String),

    /// A type record uses a kind this crate does not know (a newer kernel or compiler).
    #[error("BTF type {id} has unknown kind {kind}; this BTF is newer than mapview understands")]
    UnknownKind { id: u32, kind: u8 },

    /// A type record is well framed but its content is invalid.
    #[error("bad BTF type {id}: {reason}")]
    BadType { id: u32, reason: String },

    /// More types than [`crate::MAX_TYPES`]: refused rather than allocated.
    #[error("BTF has more than {limit} types")]
    TooManyTypes { limit: usize },

    /// A type id that is not in this BTF.
    #[error("no BTF type with id {0}; is this the BTF of the map being read?")]
    NoSuchType(u32),

    /// Types nest deeper than [`crate::MAX_DEPTH`], usually a reference cycle.
    #[error("type `{type_name}` nests more than {limit} levels deep (a reference cycle in the BTF?)")]
    TooDeep { type_name: String, limit: u32 },

    /// A type with no layout (void, a forward declaration, a function) was asked for a value.
    #[error("`{type_name}` has no known layout, so a value of it cannot be shown")]
    NoLayout { type_name: String },

    /// The bytes given are fewer than the type needs.
    #[error("`{type_name}` needs {need} bytes but the value has {have}; is this the right map and type?")]
    ShortValue { type_name: String, need: u64, have: u64 },

    /// A value would expand into more JSON values, or a type into more fields, than its
    /// size justifies (hostile BTF).
    #[error("`{type_name}` expands into more values than its size allows; the BTF looks corrupt")]
    TooLarge { type_name: String },

    /// A field path that cannot be parsed.
    #[error("bad field path `{path}`: {reason}")]
    BadPath { path: String, reason: String },

    /// A field path names a field the type does not have.
    #[error("`{type_name}` has no field `{field}`; its fields are: {}", list(.fields))]
    NoSuchField { type_name: String, field: String, fields: Vec<String> },

    /// A field path steps into something that is not a struct or union. `path` is the part
    /// of the path before that step, empty at the start.
    #[error("{}`{type_name}` is not a struct or union, so it has no field `{field}`", subject(.path))]
    NotComposite { path: String, type_name: String, field: String },

    /// A field path indexes something that is not an array, or past its end.
    #[error("{}`{type_name}` has no element [{index}]", subject(.path))]
    BadIndex { path: String, type_name: String, index: u64 },

    /// A number was asked of a field that is not an integer or enum.
    #[error("`{type_name}` is not an integer or enum; pick a numeric field for a metric value")]
    NotAnInteger { type_name: String },

    /// A number was asked of a field that does not fit in a `u64`.
    #[error("`{type_name}` holds {value}, which does not fit a metric value (0 ..= 2^64-1)")]
    OutOfRange { type_name: String, value: String },
}

/// Which part of a field path a message is about: nothing for the whole value.
fn subject(path: &str) -> String {
    if path.is_empty() { String::new() } else { format!("`{path}`: ") }
}

fn list(fields: &[String]) -> String {
    if fields.is_empty() { "(none)".to_string() } else { fields.join(", ") }
}

impl Error {
    pub(crate) fn bad_type(id: u32, reason: impl Into<String>) -> Self {
        Error::BadType { id, reason: reason.into() }
    }
}
