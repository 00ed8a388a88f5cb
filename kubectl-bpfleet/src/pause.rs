//! `rollout pause` and `rollout resume`: both are patches of `spec.rollout`, so what
//! holds or releases a rollout is in the spec for GitOps tools (and people) to see.

use std::io::Write;

use anyhow::Context as _;
use crds::BpfProgram;
use crds::revision::Revision;
use crds::rollout::{Phase, ResumeStep};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

pub fn pause_patch() -> Value {
    json!({"spec": {"rollout": {"paused": true}}})
}

/// What `resume` patches.
#[derive(Clone, Debug, PartialEq)]
pub struct ResumePlan {
    pub patch: Value,
    /// Set when the rollout waits on a pause step or is halted: lets `revision` go past
    /// `step`.
    pub resume: Option<ResumeStep>,
}

/// `paused: false`, and `resume: {revision, step}` when the rollout is held by something
/// `paused: false` alone does not release: a pause step without a duration (a timed
/// pause ends by itself and the operator does not cut it short), or a halt.
pub fn resume_plan(p: &BpfProgram) -> ResumePlan {
    let rollout = p.status.as_ref().and_then(|s| s.rollout.as_ref());
    let resume = rollout.and_then(|r| {
        let revision = Revision::parse(r.update_revision.as_deref()?)?;
        let on_pause_step = r.phase == Phase::Paused && {
            let steps = p.spec.rollout.as_ref().map(|s| s.steps.as_slice()).unwrap_or_default();
            usize::try_from(r.step)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| steps.get(i))
                .is_some_and(|s| s.pause.as_ref().is_some_and(|p| p.duration.is_none()))
        };
        (on_pause_step || r.phase == Phase::Halted)
            .then(|| ResumeStep { revision: revision.as_str().to_string(), step: r.step.max(1) })
    });
    let mut rollout_patch = json!({"paused": false});
    if let Some(r) = &resume {
        rollout_patch["resume"] = json!(r);
    }
    ResumePlan { patch: json!({"spec": {"rollout": rollout_patch}}), resume }
}

fn params(field_manager: &str) -> PatchParams {
    PatchParams { field_manager: Some(field_manager.to_string()), ..Default::default() }
}

pub async fn pause(api: Api<BpfProgram>, name: &str, field_manager: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    api.patch(name, &params(field_manager), &Patch::Merge(&pause_patch()))
        .await
        .with_context(|| format!("cannot pause BpfProgram {name}"))?;
    writeln!(out, "bpfprogram.bpfleet.dev/{name} paused (spec.rollout.paused=true)")?;
    Ok(())
}

pub async fn resume(api: Api<BpfProgram>, name: &str, field_manager: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let program = api.get(name).await.with_context(|| format!("cannot read BpfProgram {name}"))?;
    let plan = resume_plan(&program);
    api.patch(name, &params(field_manager), &Patch::Merge(&plan.patch))
        .await
        .with_context(|| format!("cannot resume BpfProgram {name}"))?;
    match &plan.resume {
        Some(r) => writeln!(
            out,
            "bpfprogram.bpfleet.dev/{name} resumed (spec.rollout.paused=false, spec.rollout.resume={{revision: {}, step: {}}})",
            r.revision, r.step
        )?,
        None => writeln!(out, "bpfprogram.bpfleet.dev/{name} resumed (spec.rollout.paused=false)")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: &str = "0123456789abcdef";

    fn program(steps: Value, phase: Option<&str>, step: i32) -> BpfProgram {
        let status = phase.map(|ph| {
            json!({"rollout": {"phase": ph, "updateRevision": REV, "stableRevision": "fedcba9876543210",
                               "step": step, "totalSteps": 3}})
        });
        serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
            "metadata": {"name": "xdp-counter"},
            "spec": {"bytecode": {"path": "/opt/x.o"}, "programs": [], "rollout": {"paused": true, "steps": steps}},
            "status": status,
        }))
        .unwrap()
    }

    fn steps() -> Value {
        json!([{"nodes": 1, "pause": {}}, {"nodes": "50%"}, {"nodes": "100%"}])
    }

    #[test]
    fn pause_sets_paused_only() {
        assert_eq!(pause_patch(), json!({"spec": {"rollout": {"paused": true}}}));
    }

    #[test]
    fn resume_on_a_pause_step_lets_that_step_go() {
        let plan = resume_plan(&program(steps(), Some("Paused"), 1));
        assert_eq!(plan.patch, json!({"spec": {"rollout": {"paused": false, "resume": {"revision": REV, "step": 1}}}}));
    }

    #[test]
    fn resume_of_a_halted_rollout_restarts_it_at_its_step() {
        let plan = resume_plan(&program(steps(), Some("Halted"), 2));
        assert_eq!(plan.resume, Some(ResumeStep { revision: REV.into(), step: 2 }));
    }

    #[test]
    fn resume_when_only_paused_by_the_spec_clears_paused_only() {
        // Paused on step 2, which has no pause of its own: spec.rollout.paused held it.
        for (phase, step) in [(Some("Paused"), 2), (Some("Progressing"), 1), (Some("Complete"), 3), (None, 0)] {
            let plan = resume_plan(&program(steps(), phase, step));
            assert_eq!(plan.patch, json!({"spec": {"rollout": {"paused": false}}}), "{phase:?} {step}");
        }
        // A timed pause ends by itself.
        let timed = json!([{"nodes": 1, "pause": {"duration": "5m"}}, {"nodes": "100%"}]);
        assert_eq!(resume_plan(&program(timed, Some("Paused"), 1)).resume, None);
        // The implicit last step (beyond the listed ones) has no pause either.
        assert_eq!(resume_plan(&program(json!([{"nodes": 1, "pause": {}}]), Some("Paused"), 2)).resume, None);
    }
}
