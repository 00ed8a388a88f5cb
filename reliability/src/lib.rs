//! Reliability campaigns of the node agent that need a real kernel: crash trials
//! (`crash`) and the soak (`soak`). Every verdict is read from the kernel and bpffs
//! (`kernel`, `converge`), never from the agent's own answers. See docs/reliability.md.

pub mod abuse;
pub mod converge;
pub mod crash;
pub mod kernel;
pub mod owners;
pub mod process;
pub mod rng;
pub mod soak;
