//! bpfleet-operator: reconciles BpfPrograms across the fleet through the node agents.
//! The pure core (`targets`, `plan`, `status`, `drift`) decides; the edges (kube, gRPC)
//! only carry out and observe.

pub mod admission;
pub mod agent_tls;
pub mod agent_watch;
pub mod agents;
pub mod alloc;
pub mod answers;
pub mod ascending;
pub mod bpfnode;
pub mod bpfnode_follow;
pub mod bytecode;
pub mod controller;
pub mod dispatch;
pub mod drift;
pub mod events;
pub mod gates;
pub mod history;
pub mod https;
pub mod image;
pub mod index;
pub mod intern;
pub mod leader;
pub mod maps;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod plan;
pub mod pod_watch;
pub mod pods;
pub mod prometheus;
pub mod reachable;
pub mod reports;
pub mod resync;
pub mod rollout;
pub mod sends;
pub mod shared_maps;
pub mod sources;
pub mod status;
pub mod targets;
pub mod tenant;
pub mod tls;
pub mod uninstall;
pub mod work;
