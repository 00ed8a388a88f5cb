//! `rollout pause`, `resume`, `promote [--full]`, `abort` and `retry`.
//!
//! `pause` is a patch of the spec (`spec.rollout.paused: true`): holding a rollout is a
//! wish that belongs in Git. The others are requests to the operator, carried by the
//! `bpfleet.dev/rollout-action` annotation, which the operator carries out for the
//! current `updateRevision`, records in `status.rollout` and removes. Nothing but the
//! manifest is then in Git, and no revision hash is ever written into it.

use std::io::Write;

use anyhow::Context as _;
use crds::BpfProgram;
use crds::rollout::{ACTION_ANNOTATION, Action, Phase};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

pub fn pause_patch() -> Value {
    json!({"spec": {"rollout": {"paused": true}}})
}

/// What an action request sends.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub action: Action,
    /// The merge patch: the annotation, and for `resume` of a program whose spec holds
    /// it (`spec.rollout.paused: true`), `paused: false` as well.
    pub patch: Value,
    /// `resume` also edits the spec.
    pub unpauses_spec: bool,
    /// `spec.rollout.paused` is true and keeps holding the rollout after this action.
    pub still_paused_by_spec: bool,
    /// An action still on the program that the operator has not carried out yet, which
    /// this request replaces.
    pub replaces: Option<String>,
}

/// The request for `action` on `p`, or why it makes no sense for the rollout's state
/// (`status.rollout.phase`, and `aborted`).
pub fn request(p: &BpfProgram, action: Action) -> Result<Request, String> {
    let spec_paused = p.spec.rollout.as_ref().is_some_and(|r| r.paused);
    let unpauses_spec = action == Action::Resume && spec_paused;
    // Clearing a pause the spec holds always means something.
    if !unpauses_spec && let Some(why) = refusal(p, action) {
        return Err(why);
    }
    let mut patch = json!({"metadata": {"annotations": {ACTION_ANNOTATION: action.as_str()}}});
    if unpauses_spec {
        patch["spec"] = json!({"rollout": {"paused": false}});
    }
    let replaces = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACTION_ANNOTATION))
        .filter(|pending| pending.as_str() != action.as_str())
        .cloned();
    Ok(Request { action, patch, unpauses_spec, still_paused_by_spec: spec_paused && !unpauses_spec, replaces })
}

/// Why `action` makes no sense now, if it does not; what to run instead where there is
/// something.
fn refusal(p: &BpfProgram, action: Action) -> Option<String> {
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let status = p.status.as_ref();
    let Some(r) = status.and_then(|s| s.rollout.as_ref()) else {
        return Some(format!(
            "BpfProgram {name} has no rollout status yet: the operator has not reported on it. Wait for it \
             (kubectl bpfleet rollout status {name}), then try again"
        ));
    };
    let revision = r.update_revision.as_deref().unwrap_or("?");
    // A status of an older generation still names the phase it had; say so, since the
    // new generation's rollout may be about to start.
    let stale = match (p.metadata.generation, status.and_then(|s| s.observed_generation)) {
        (Some(g), o) if o != Some(g) => format!(
            " (this status is of generation {}, the spec is at {g}: the operator has not started the new \
             generation's rollout yet; try again once it has)",
            o.map_or("none".to_string(), |o| o.to_string())
        ),
        _ => String::new(),
    };
    let state = match (r.phase, r.aborted) {
        (_, true) => format!("the rollout of revision {revision} was aborted"),
        (Phase::Complete, _) => format!("the rollout of revision {revision} is Complete"),
        (Phase::Paused, _) => format!("the rollout of revision {revision} is paused"),
        (phase, _) => format!("the rollout of revision {revision} is {phase:?}"),
    };
    let why = match (action, r.phase, r.aborted) {
        (Action::Retry, Phase::Halted | Phase::RolledBack | Phase::Degraded, _) | (Action::Retry, _, true) => {
            return None;
        }
        (Action::Retry, _, _) => {
            format!("only a Halted, RolledBack, Degraded or aborted rollout can be retried, and {state}")
        }
        (_, _, true) => format!("{state}; `kubectl bpfleet rollout retry {name}` starts it again from step 1"),
        (Action::Resume, Phase::Paused | Phase::Halted, _) => return None,
        (Action::Resume, Phase::Complete | Phase::Progressing, _) => format!("{state}: nothing holds it"),
        (Action::Resume, _, _) => {
            format!("{state}; `kubectl bpfleet rollout retry {name}` starts it again from step 1")
        }
        (Action::Promote | Action::PromoteFull, Phase::Progressing | Phase::Paused, _) => return None,
        (Action::Promote | Action::PromoteFull, Phase::Complete, _) => {
            format!("{state}: every node runs it already, there is no step left to promote")
        }
        (Action::Promote | Action::PromoteFull, Phase::Halted, _) => format!(
            "{state}: `kubectl bpfleet rollout resume {name}` lets it go on once its failed nodes are within \
             failureThreshold, `kubectl bpfleet rollout retry {name}` starts it again from step 1"
        ),
        (Action::Promote | Action::PromoteFull, _, _) => {
            format!("{state}; `kubectl bpfleet rollout retry {name}` starts it again from step 1")
        }
        (Action::Abort, Phase::Complete, _) => format!(
            "{state}: there is no rollout to abort; `kubectl bpfleet rollout undo {name}` goes back to an \
             earlier revision"
        ),
        (Action::Abort, Phase::RolledBack, _) => format!("{state}: its nodes are back on the stable revision already"),
        (Action::Abort, _, _) if r.stable_revision.is_none() => format!(
            "{state} and there is no stable revision to return to (this is the program's first rollout); \
             `kubectl bpfleet rollout pause {name}` holds it, deleting the BpfProgram removes it"
        ),
        (Action::Abort, _, _) => return None,
    };
    Some(format!("cannot {} BpfProgram {name}: {why}{stale}", action.as_str()))
}

fn params(field_manager: &str) -> PatchParams {
    PatchParams { field_manager: Some(field_manager.to_string()), ..Default::default() }
}

pub async fn pause(api: Api<BpfProgram>, name: &str, field_manager: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    api.patch(name, &params(field_manager), &Patch::Merge(&pause_patch()))
        .await
        .with_context(|| format!("cannot pause BpfProgram {name}"))?;
    writeln!(out, "bpfprogram.bpfleet.dev/{name} paused (spec.rollout.paused=true)")?;
    writeln!(
        out,
        "note: this edits the spec; a GitOps tool reverts it at its next sync unless Git says spec.rollout.paused: \
         true too"
    )?;
    Ok(())
}

/// Read `name`, check that `action` makes sense for its rollout, and send the request.
pub async fn request_action(
    api: Api<BpfProgram>,
    name: &str,
    action: Action,
    field_manager: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let program = api.get(name).await.with_context(|| format!("cannot read BpfProgram {name}"))?;
    let req = request(&program, action).map_err(anyhow::Error::msg)?;
    api.patch(name, &params(field_manager), &Patch::Merge(&req.patch))
        .await
        .with_context(|| format!("cannot {} BpfProgram {name}", action.as_str()))?;
    confirm(name, &req, out)?;
    Ok(())
}

/// What a user is told after the patch went through.
pub fn confirm(name: &str, req: &Request, out: &mut dyn Write) -> std::io::Result<()> {
    let a = req.action.as_str();
    if let Some(pending) = &req.replaces {
        writeln!(out, "note: replaces the pending action {pending:?}, which the operator had not carried out yet")?;
    }
    if req.unpauses_spec {
        writeln!(
            out,
            "bpfprogram.bpfleet.dev/{name} {a} requested ({ACTION_ANNOTATION}={a}, spec.rollout.paused=false)"
        )?;
        writeln!(
            out,
            "note: spec.rollout.paused=false edits the spec; a GitOps tool puts paused: true back at its next \
             sync unless Git says false too"
        )?;
    } else {
        writeln!(out, "bpfprogram.bpfleet.dev/{name} {a} requested ({ACTION_ANNOTATION}={a})")?;
    }
    if req.still_paused_by_spec {
        writeln!(
            out,
            "note: spec.rollout.paused is true and still holds the rollout: set it false in Git, or run \
             `kubectl bpfleet rollout resume {name}`"
        )?;
    }
    writeln!(out, "follow it with: kubectl bpfleet rollout status {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: &str = "0123456789abcdef";

    /// A program of generation 2 whose status (of `observed`) has a rollout in `phase`.
    fn program(phase: Option<&str>, spec_paused: bool, extra: Value) -> BpfProgram {
        let mut status = phase.map(|ph| {
            json!({"observedGeneration": 2, "rollout": {"phase": ph, "updateRevision": REV,
                   "stableRevision": "fedcba9876543210", "step": 1, "totalSteps": 3}})
        });
        if let (Some(s), Value::Object(extra)) = (status.as_mut(), extra) {
            for (k, v) in extra {
                s["rollout"][k] = v;
            }
        }
        serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
            "metadata": {"name": "xdp-counter", "generation": 2},
            "spec": {"bytecode": {"path": "/opt/x.o"}, "programs": [],
                     "rollout": {"paused": spec_paused, "steps": [{"nodes": 1, "pause": {}}, {"nodes": "100%"}]}},
            "status": status,
        }))
        .unwrap()
    }

    fn annotation(a: &str) -> Value {
        json!({"metadata": {"annotations": {"bpfleet.dev/rollout-action": a}}})
    }

    /// For each action, the phases where it is sent and where it is refused.
    #[test]
    fn each_action_is_sent_only_where_it_makes_sense() {
        let all = ["Progressing", "Paused", "Halted", "RolledBack", "Complete", "Degraded"];
        let allowed = |a: Action| -> &[&str] {
            match a {
                Action::Resume => &["Paused", "Halted"],
                Action::Promote | Action::PromoteFull => &["Progressing", "Paused"],
                Action::Abort => &["Progressing", "Paused", "Halted", "Degraded"],
                Action::Retry => &["Halted", "RolledBack", "Degraded"],
            }
        };
        for action in Action::ALL {
            for phase in all {
                let got = request(&program(Some(phase), false, json!({})), action);
                if allowed(action).contains(&phase) {
                    assert_eq!(got.unwrap().patch, annotation(action.as_str()), "{action:?} on {phase}");
                } else {
                    let why = got.unwrap_err();
                    assert!(why.starts_with(&format!("cannot {} BpfProgram xdp-counter: ", action.as_str())), "{why}");
                }
            }
        }
    }

    #[test]
    fn refusals_say_what_to_run_instead() {
        let why = |phase, action, extra| request(&program(Some(phase), false, extra), action).unwrap_err();
        assert_eq!(
            why("Complete", Action::Promote, json!({})),
            format!(
                "cannot promote BpfProgram xdp-counter: the rollout of revision {REV} is Complete: every node runs \
                 it already, there is no step left to promote"
            )
        );
        assert!(why("Complete", Action::Abort, json!({})).contains("kubectl bpfleet rollout undo xdp-counter"));
        assert!(why("RolledBack", Action::Resume, json!({})).contains("kubectl bpfleet rollout retry xdp-counter"));
        assert!(why("Halted", Action::PromoteFull, json!({})).contains("rollout resume xdp-counter"));
        let retry = why("Progressing", Action::Retry, json!({}));
        assert!(retry.contains("only a Halted, RolledBack, Degraded or aborted rollout can be retried"), "{retry}");
        // No rollout status at all.
        let none = request(&program(None, false, json!({})), Action::Promote).unwrap_err();
        assert!(none.contains("has no rollout status yet"), "{none}");
    }

    #[test]
    fn an_aborted_rollout_can_only_be_retried() {
        for phase in ["RolledBack", "Halted", "Paused"] {
            let p = program(Some(phase), false, json!({"aborted": true}));
            assert_eq!(request(&p, Action::Retry).unwrap().patch, annotation("retry"));
            for a in [Action::Resume, Action::Promote, Action::PromoteFull, Action::Abort] {
                let why = request(&p, a).unwrap_err();
                assert!(why.contains("was aborted") && why.contains("rollout retry xdp-counter"), "{why}");
            }
        }
    }

    #[test]
    fn abort_of_a_first_rollout_is_refused() {
        let p = program(Some("Progressing"), false, json!({"stableRevision": null}));
        let why = request(&p, Action::Abort).unwrap_err();
        assert!(why.contains("no stable revision to return to"), "{why}");
    }

    #[test]
    fn resume_of_a_spec_pause_also_edits_the_spec() {
        // Held by spec.rollout.paused, whatever the phase says: resume clears it.
        for phase in [Some("Paused"), Some("Progressing"), Some("Complete"), None] {
            let req = request(&program(phase, true, json!({})), Action::Resume).unwrap();
            assert!(req.unpauses_spec);
            assert_eq!(
                req.patch,
                json!({"metadata": {"annotations": {"bpfleet.dev/rollout-action": "resume"}},
                       "spec": {"rollout": {"paused": false}}}),
                "{phase:?}"
            );
        }
        // Other actions never touch the spec, and say that the spec still holds it.
        let req = request(&program(Some("Paused"), true, json!({})), Action::Promote).unwrap();
        assert_eq!(req.patch, annotation("promote"));
        let mut out = Vec::new();
        confirm("xdp-counter", &req, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("note: spec.rollout.paused is true and still holds the rollout"), "{out}");
    }

    #[test]
    fn a_stale_status_is_named_in_the_refusal() {
        let mut p = program(Some("Complete"), false, json!({}));
        p.metadata.generation = Some(3);
        let why = request(&p, Action::Promote).unwrap_err();
        assert!(why.ends_with("try again once it has)") && why.contains("generation 2, the spec is at 3"), "{why}");
    }

    #[test]
    fn a_pending_action_is_reported_as_replaced() {
        let mut p = program(Some("Paused"), false, json!({}));
        p.metadata.annotations = Some([(ACTION_ANNOTATION.to_string(), "promote".to_string())].into());
        let req = request(&p, Action::PromoteFull).unwrap();
        assert_eq!(req.replaces.as_deref(), Some("promote"));
        assert_eq!(request(&p, Action::Promote).unwrap().replaces, None);
        let mut out = Vec::new();
        confirm("xdp-counter", &req, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "note: replaces the pending action \"promote\", which the operator had not carried out yet\n\
             bpfprogram.bpfleet.dev/xdp-counter promote-full requested (bpfleet.dev/rollout-action=promote-full)\n\
             follow it with: kubectl bpfleet rollout status xdp-counter\n"
        );
    }

    #[test]
    fn pause_sets_paused_only() {
        assert_eq!(pause_patch(), json!({"spec": {"rollout": {"paused": true}}}));
    }
}
