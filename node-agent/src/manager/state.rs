//! What runs of each owner, as the API reports it (a BpfNode's program entries).

use crds::node::{AttachedProgram, PinnedMap};
use crds::{Health, NodeProgramStatus};

use super::Manager;
use crate::store::OwnerRecord;

/// An owner with nothing running.
pub(super) fn bare_state(uid: &str, name: String) -> NodeProgramStatus {
    NodeProgramStatus {
        owner: name,
        owner_uid: uid.to_string(),
        revision: String::new(),
        health: Health::Failed,
        attached: vec![],
        maps: vec![],
        last_error: None,
        bytecode_digest: None,
        maps_recreated: vec![],
        pods: vec![],
        pods_total: 0,
        pods_failed: 0,
        metrics_limited: vec![],
    }
}

impl Manager {
    /// What runs of one owner, as the API reports it (BpfNode's per-program truth).
    pub fn state_of(&self, uid: &str) -> Option<NodeProgramStatus> {
        let e = self.entry(uid)?;
        let mut state = bare_state(uid, e.name.clone());
        if let Some(r) = &e.record {
            let (h, why) = self.check_health(r);
            state.revision = r.revision.clone();
            state.health = h;
            state.last_error = why;
            state.bytecode_digest = r.bytecode_digest.clone();
            state.maps_recreated = r.maps_recreated.clone();
            state.metrics_limited = e.metrics_notes.clone();
            state.attached = r
                .programs
                .iter()
                .map(|p| AttachedProgram {
                    name: p.name.clone(),
                    program_type: p.program_type,
                    program_id: p.program_id,
                    link_ids: p.links.iter().map(|l| l.link_id).collect(),
                })
                .collect();
            state.maps = r
                .maps
                .iter()
                .map(|m| PinnedMap { name: m.name.clone(), pin_path: m.pin_path.display().to_string() })
                .collect();
            // Every pod of the last Apply (at most MAX_PODS_PER_OWNER), attached or why not:
            // a pod's failure is the pod's, never the owner's health.
            state.pods = r.pods.iter().map(crate::pods::attachment).collect();
        }
        if let Some((rev, err)) = &e.failure {
            state.health = Health::Failed;
            state.last_error = Some(format!("revision {rev}: {err}"));
        }
        if let Some(why) = &e.set_aside {
            state.health = Health::Degraded;
            state.last_error = Some(why.clone());
        }
        Some(state)
    }

    pub(super) fn state_or_bare(&self, uid: &str) -> NodeProgramStatus {
        self.state_of(uid).unwrap_or_else(|| bare_state(uid, String::new()))
    }

    /// Every owner, ordered by uid.
    pub fn list(&self) -> Vec<NodeProgramStatus> {
        let uids: Vec<String> = self.entries.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        uids.iter().filter_map(|u| self.state_of(u)).collect()
    }

    /// The record of what one owner runs, if it runs anything (for Probe).
    pub fn record_of(&self, uid: &str) -> Option<OwnerRecord> {
        self.entry(uid)?.record
    }

    /// Records of everything running (for metrics and standalone mode).
    pub fn records(&self) -> Vec<OwnerRecord> {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).values().filter_map(|e| e.record.clone()).collect()
    }
}
