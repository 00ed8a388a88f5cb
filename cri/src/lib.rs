//! A read-only client of the node's container runtime over its CRI socket (containerd's
//! `/run/containerd/containerd.sock`), for an agent that holds no Kubernetes credentials
//! yet must find where a pod lives on its node:
//!
//! - [`Cri::pod_sandbox`]: a pod's sandbox, by pod uid, with the path of its network
//!   namespace (to attach XDP/TC to the pod's own interfaces);
//! - [`Cri::containers`]: the sandbox's containers, each with its process and root file
//!   system (to resolve a uprobe target inside the container and nowhere else);
//! - [`Cri::pod_uids`]: the pods with a ready sandbox on this node;
//! - [`Cri::version`]: which runtime answers.
//!
//! Every call is bounded ([`Options`]: a timeout, a largest answer, a most containers per
//! sandbox) and every failure is a [`CriError`] that says what to fix. Nothing here
//! creates, stops or removes anything.
//!
//! The pod-level facts come from the CRI API (`runtime.v1`, a subset in
//! `proto/runtime/v1/runtime.proto`); where things are on the node comes from the
//! runtime-specific verbose info, read for containerd (see [`info`]). Paths are the
//! node's, as the runtime names them: an agent in a container resolves them inside its
//! view of the host's root, and needs the runtime's state directory (`/run/containerd`)
//! mounted with host-to-container propagation to see new pods' mounts.
//!
//! ```no_run
//! # async fn example() -> Result<(), cri::CriError> {
//! let cri = cri::Cri::connect(cri::DEFAULT_SOCKET).await?;
//! if let Some(sandbox) = cri.pod_sandbox("6c8f1d2e-3b4a-4c5d-9e6f-7a8b9c0d1e2f").await? {
//!     println!("netns: {:?}", sandbox.network_namespace_path);
//!     for c in cri.containers(&sandbox.id).await? {
//!         println!("{}: pid {:?}, root {:?}", c.name, c.pid, c.rootfs);
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
pub mod convert;
mod error;
pub mod info;
mod model;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The generated CRI subset (`runtime.v1`). Callers use [`Cri`]; the wire types are public
/// for tests that serve a fake runtime (feature `testing` adds the server trait).
#[allow(clippy::all)]
pub mod wire {
    tonic::include_proto!("runtime.v1");
}

pub use client::{Cri, DEFAULT_CONTAINERD_STATE_DIR, DEFAULT_SOCKET, Options};
pub use convert::POD_UID_LABEL;
pub use error::{CriError, Result, SOCKET_HINT};
pub use model::{Container, ContainerState, PodSandbox, RuntimeVersion, SandboxState};
