//! One error type for everything this crate does. Each variant is a kind the operator
//! can map to a status reason ([`Error::kind`]); each message says what to fix.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::labels::LabelsMismatch;
use crate::platform::Platform;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("{reference} was not found in registry {registry}: check the repository name and the tag or digest")]
    ImageNotFound { registry: String, reference: String },

    #[error("registry {registry} refused access ({detail}): check the pull secret's credentials for {registry}")]
    Unauthorized { registry: String, detail: String },

    #[error("registry {registry} is unreachable: {detail}")]
    RegistryUnreachable { registry: String, detail: String },

    #[error("registry {registry} {reason}")]
    RedirectRefused { registry: String, reason: String },

    #[error("registry {registry} answered HTTP {status} to {what}: {detail}")]
    Registry { registry: String, status: u16, what: String, detail: String },

    #[error(
        "{what} {expected} does not match its content (the bytes served hash to {actual}): \
         the registry's storage is corrupt or was tampered with; push the image again"
    )]
    Tampered { what: String, expected: Digest, actual: Digest },

    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },

    #[error("the image holds no eBPF bytecode: {reason}")]
    NotBytecode { reason: String },

    #[error("the image is not a usable bytecode image: {reason}")]
    InvalidImage { reason: String },

    #[error("{0}")]
    LabelsMismatch(LabelsMismatch),

    #[error(
        "the image index has no manifest for {wanted}; it has: {}; push an image for {wanted} or pin a single-platform digest",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    PlatformNotFound { wanted: Platform, available: Vec<String> },

    #[error(
        "{reference} is not signed (no {tag} signature in the repository): sign it, e.g. `kubectl bpfleet image sign`"
    )]
    Unsigned { reference: String, tag: String },

    #[error("the signature of {reference} is invalid: {reason}")]
    SignatureInvalid { reference: String, reason: String },

    #[error(
        "{reference} has {signatures} signature(s) but none verifies with the {keys} trusted key(s): \
         it was signed with another key (or the signature was altered); sign it with a trusted key or trust its key"
    )]
    UnknownKey { reference: String, signatures: usize, keys: usize },

    #[error("invalid key: {reason}")]
    InvalidKey { reason: String },

    #[error("invalid registry credentials: {reason}")]
    InvalidCredentials { reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What went wrong, as a stable name (`ErrorKind::as_str`) for status reasons and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidReference,
    ImageNotFound,
    Unauthorized,
    RegistryUnreachable,
    RedirectRefused,
    RegistryError,
    Tampered,
    TooLarge,
    NotBytecode,
    InvalidImage,
    LabelsMismatch,
    PlatformNotFound,
    Unsigned,
    SignatureInvalid,
    UnknownKey,
    InvalidKey,
    InvalidCredentials,
    Io,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidReference => "InvalidReference",
            ErrorKind::ImageNotFound => "ImageNotFound",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::RegistryUnreachable => "RegistryUnreachable",
            ErrorKind::RedirectRefused => "RedirectRefused",
            ErrorKind::RegistryError => "RegistryError",
            ErrorKind::Tampered => "Tampered",
            ErrorKind::TooLarge => "TooLarge",
            ErrorKind::NotBytecode => "NotBytecode",
            ErrorKind::InvalidImage => "InvalidImage",
            ErrorKind::LabelsMismatch => "LabelsMismatch",
            ErrorKind::PlatformNotFound => "PlatformNotFound",
            ErrorKind::Unsigned => "Unsigned",
            ErrorKind::SignatureInvalid => "SignatureInvalid",
            ErrorKind::UnknownKey => "UnknownKey",
            ErrorKind::InvalidKey => "InvalidKey",
            ErrorKind::InvalidCredentials => "InvalidCredentials",
            ErrorKind::Io => "Io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. } => ErrorKind::InvalidReference,
            Error::ImageNotFound { .. } => ErrorKind::ImageNotFound,
            Error::Unauthorized { .. } => ErrorKind::Unauthorized,
            Error::RegistryUnreachable { .. } => ErrorKind::RegistryUnreachable,
            Error::RedirectRefused { .. } => ErrorKind::RedirectRefused,
            Error::Registry { .. } => ErrorKind::RegistryError,
            Error::Tampered { .. } => ErrorKind::Tampered,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::NotBytecode { .. } => ErrorKind::NotBytecode,
            Error::InvalidImage { .. } => ErrorKind::InvalidImage,
            Error::LabelsMismatch(_) => ErrorKind::LabelsMismatch,
            Error::PlatformNotFound { .. } => ErrorKind::PlatformNotFound,
            Error::Unsigned { .. } => ErrorKind::Unsigned,
            Error::SignatureInvalid { .. } => ErrorKind::SignatureInvalid,
            Error::UnknownKey { .. } => ErrorKind::UnknownKey,
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::InvalidCredentials { .. } => ErrorKind::InvalidCredentials,
            Error::Io { .. } => ErrorKind::Io,
        }
    }

    /// Worth trying again later without any change to the spec: the registry was down,
    /// overloaded or failing. Everything else needs a change (spec, secret, image).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::RegistryUnreachable { .. } => true,
            Error::Registry { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn invalid_image(reason: impl Into<String>) -> Error {
        Error::InvalidImage { reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}
