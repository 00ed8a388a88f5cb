//! bpfleet-agent-test: `bpfleet-agent` with the fault hooks of `agent::fault` armed, so
//! that `BPFLEET_FAULT` and `BPFLEET_PAUSE` act. For the process tests, the e2e harness
//! and the reliability trials; built only with the `test-support` feature, and never
//! shipped (`scripts/images.sh` builds and checks `bpfleet-agent` alone).

#[path = "../main.rs"]
mod shipped;

fn main() -> anyhow::Result<()> {
    agent::fault::arm_process_hooks();
    shipped::main()
}
