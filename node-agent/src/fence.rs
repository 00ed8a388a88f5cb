//! Leadership fencing. Every Apply and Remove carries the sender's leadership epoch
//! (the operator's leader Lease transition count). The agent remembers the newest epoch
//! it has seen, in a file of its state directory so a restart does not forget it, and
//! refuses requests from an older one: a deposed leader whose request arrives late
//! cannot undo what its successor did.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{AgentError, Reason, Result};

const FILE: &str = "leader-epoch";

pub struct EpochFence {
    newest: Mutex<u64>,
    file: Option<PathBuf>,
}

impl EpochFence {
    /// The fence persisted in `state_dir` (created on first use). An unreadable file
    /// counts as epoch 0 (logged): the next leader's request sets it again.
    pub fn open(state_dir: &Path) -> Self {
        let file = state_dir.join(FILE);
        let newest = match std::fs::read_to_string(&file) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(file = %file.display(), "leader epoch file is not a number; starting from 0");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the leader epoch; starting from 0");
                0
            }
        };
        Self { newest: Mutex::new(newest), file: Some(file) }
    }

    /// A fence that forgets on restart (tests, standalone).
    pub fn in_memory() -> Self {
        Self { newest: Mutex::new(0), file: None }
    }

    pub fn newest(&self) -> u64 {
        *self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admit a request of `epoch` for `what` (e.g. "Apply of xdp-counter"), or refuse it.
    /// A newer epoch is recorded before the request runs.
    pub fn admit(&self, epoch: u64, what: &str) -> Result<()> {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if epoch < *newest {
            return Err(AgentError::new(
                Reason::StaleLeaderEpoch,
                format!(
                    "{what} refused: it comes from leadership epoch {epoch}, but this agent has already served \
                     epoch {}; the sender is no longer the leader operator",
                    *newest
                ),
            ));
        }
        if epoch > *newest {
            if let Some(file) = &self.file {
                persist(file, epoch).map_err(|e| {
                    AgentError::internal(format!("cannot record leader epoch in {}: {e}", file.display()))
                })?;
            }
            tracing::info!(epoch, previous = *newest, "new operator leadership epoch");
            *newest = epoch;
        }
        Ok(())
    }
}

fn persist(file: &Path, epoch: u64) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{epoch}\n"))?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epochs_are_refused_newer_ones_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let fence = EpochFence::open(dir.path());
        fence.admit(0, "Apply").unwrap();
        fence.admit(3, "Apply").unwrap();
        fence.admit(3, "Remove").unwrap();
        let e = fence.admit(2, "Remove of xdp").unwrap_err();
        assert_eq!(e.reason, Reason::StaleLeaderEpoch);
        assert!(e.message.contains("epoch 2") && e.message.contains("epoch 3"), "{}", e.message);
        assert!(fence.admit(0, "Apply").is_err(), "an unelected sender is older than any leader");
        // A restarted agent still knows epoch 3.
        let again = EpochFence::open(dir.path());
        assert_eq!(again.newest(), 3);
        assert!(again.admit(2, "Apply").is_err());
        again.admit(5, "Apply").unwrap();
        assert_eq!(EpochFence::open(dir.path()).newest(), 5);
    }
}
