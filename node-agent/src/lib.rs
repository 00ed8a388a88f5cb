//! bpfleet-agent: the privileged per-node half of bpfleet. It loads ELF objects with
//! aya, attaches and pins their programs, and answers the operator over mTLS gRPC.

pub mod alloc;
pub mod apply_plan;
pub mod attach;
pub mod csi;
pub mod elf;
pub mod error;
pub mod export;
pub mod fault;
pub mod fence;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod health;
pub mod hostfs;
pub mod kernel;
pub mod loader;
pub mod manager;
pub mod maps;
pub mod metrics;
pub mod netlink;
pub mod pods;
pub mod probe;
pub mod recovery;
pub mod request;
pub mod server;
pub mod standalone;
pub mod stats;
pub mod store;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;
