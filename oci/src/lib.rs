//! eBPF bytecode in OCI images.
//!
//! - [`Reference`] parses `registry/repository[:tag][@sha256:…]`.
//! - [`Client`]: a registry client (HTTPS with system roots and an optional CA, or plain
//!   HTTP for loopback registries; anonymous, Basic or Bearer-token auth from
//!   [`Credentials`], e.g. a `kubernetes.io/dockerconfigjson` Secret's bytes).
//! - [`Client::resolve`] a tag to a digest, [`Client::pull`] a pinned image for a
//!   [`Platform`] into an [`Image`] (the ELF object and the labels), every blob checked
//!   against its digest and every size bounded ([`limits`]).
//! - [`Client::verify`] cosign-format signatures offline against [`PublicKey`]s.
//! - [`build_image`], [`write_layout`]/[`read_layout`], [`Client::push`] and
//!   [`Client::sign`] for tools that make images.
//!
//! Against hostile registries: [`policy`] (where redirects and token realms may lead),
//! [`PullBudget`] (pulls and bytes in flight, process-wide), a deadline per image, and
//! a cap on signature layers ([`limits`]).
//!
//! Errors are one [`Error`] enum; [`Error::kind`] names what went wrong for status
//! reasons, and the message says what to fix.

pub mod auth;
pub mod budget;
pub mod build;
pub mod client;
pub mod digest;
pub mod dns;
pub mod elf;
pub mod error;
pub mod labels;
pub mod layer;
pub mod limits;
pub mod manifest;
pub mod platform;
pub mod policy;
pub mod reference;
pub mod registry;
pub mod sign;
#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{BasicAuth, Credentials};
pub use budget::PullBudget;
pub use build::{BuiltImage, ImageBundle, build_image, build_index, read_layout, write_layout};
pub use client::{Client, ClientOptions};
pub use digest::Digest;
pub use elf::{ElfContents, describe};
pub use error::{Error, ErrorKind, Result};
pub use labels::{LabelsMismatch, check_programs};
pub use platform::Platform;
pub use policy::Cidr;
pub use reference::Reference;
pub use registry::Image;
pub use sign::{PublicKey, SigningKey, Verified, generate_key_pair};
