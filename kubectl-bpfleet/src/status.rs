//! `rollout status`: one progress line per observed change of a BpfProgram's status, and
//! the verdict whether the rollout is done, failed, going on or held, which is
//! [`crds::standing::of_status`]'s: the same function the operator's conditions, Flux's
//! kstatus and the Argo CD health check in docs/install.md follow.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use crds::rollout::{Phase, RolloutStatus};
use crds::standing::{self, Standing};
use crds::{BpfProgram, BpfProgramStatus};
use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::Exit;

/// Where a program stands, and the sentence that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub standing: Standing,
    pub message: String,
}

impl Verdict {
    /// Done and failed end the command; in progress and held keep it waiting.
    pub fn exit(&self) -> Exit {
        match self.standing {
            Standing::Current => Exit::Ok,
            Standing::Failed => Exit::Failed,
            Standing::InProgress | Standing::Suspended => Exit::NotDone,
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self.standing, Standing::Current | Standing::Failed)
    }
}

/// The verdict on `p`'s current generation: where [`standing::of_status`] says it stands,
/// in words.
pub fn verdict(p: &BpfProgram) -> Verdict {
    let standing = standing::of_status(p.status.as_ref(), p.metadata.generation);
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let message = match &p.status {
        None => format!("waiting for the operator to report on BpfProgram {name}"),
        Some(s) if p.metadata.generation.is_some() && s.observed_generation != p.metadata.generation => format!(
            "waiting for the operator to observe generation {} (status is of generation {})",
            p.metadata.generation.unwrap_or_default(),
            s.observed_generation.map_or("none".to_string(), |g| g.to_string())
        ),
        Some(s) if s.conditions.is_empty() => {
            format!("waiting for the operator's conditions on BpfProgram {name}")
        }
        Some(s) => {
            let held_by_spec = p.spec.rollout.as_ref().is_some_and(|r| r.paused);
            describe(name, s, standing, held_by_spec)
        }
    };
    Verdict { standing, message }
}

/// The sentence for a status of the current generation with conditions.
fn describe(name: &str, s: &BpfProgramStatus, standing: Standing, held_by_spec: bool) -> String {
    let revision = s.revision.as_deref().unwrap_or("?");
    let condition = |t: &str| {
        s.conditions.iter().find(|c| c.type_ == t && c.status == "True").map(|c| c.message.as_str()).unwrap_or("")
    };
    let Some(r) = &s.rollout else {
        // An operator without rollouts: the conditions and node counts say it all.
        let nodes = format!("{}/{} node(s)", s.ready_nodes, s.target_nodes);
        return match standing {
            Standing::Current => format!("revision {revision} ready on {nodes}"),
            Standing::Failed => with_message(format!("revision {revision} failed"), condition("Stalled")),
            _ => with_message(format!("revision {revision}: {nodes} ready"), condition("Reconciling")),
        };
    };
    let rev = r.update_revision.as_deref().unwrap_or(revision);
    let at = format!("step {}/{}", r.step, r.total_steps);
    let message = r.message.as_deref().filter(|m| !m.is_empty());
    match standing {
        Standing::Current => {
            let mut line = format!("rollout of revision {rev} complete: {} node(s) updated", r.updated_nodes);
            if r.waiting_for_agent_nodes > 0 {
                line.push_str(&format!(", {} waiting for an agent", r.waiting_for_agent_nodes));
            }
            line
        }
        Standing::Failed => {
            let head = match r.phase {
                Phase::RolledBack => format!(
                    "rollout of revision {rev} {} and was rolled back to {}",
                    if r.aborted { "was aborted" } else { "failed" },
                    r.stable_revision.as_deref().unwrap_or("the stable revision")
                ),
                Phase::Halted => format!("rollout of revision {rev} halted at {at}"),
                Phase::Degraded => format!("rollout of revision {rev} degraded: {} node(s) failed", r.failed_nodes),
                _ => format!("rollout of revision {rev} stalled at {at}"),
            };
            with_message(head, message.unwrap_or(condition("Stalled")))
        }
        Standing::Suspended => {
            let how = if held_by_spec {
                format!(
                    "held by spec.rollout.paused; `kubectl bpfleet rollout resume {name}` lets it go on (it sets \
                     paused: false in the spec: do that in Git if Git manages the program)"
                )
            } else {
                format!(
                    "waiting for someone to act; `kubectl bpfleet rollout resume {name}` or `promote {name}` lets it \
                     go on, `promote {name} --full` skips every remaining step, `abort {name}` goes back"
                )
            };
            let head = with_message(format!("rollout of revision {rev} paused at {at}"), message.unwrap_or(""));
            format!("{head} ({how})")
        }
        Standing::InProgress => {
            let head = match (r.phase, &r.pause_start_time) {
                (Phase::Paused, Some(since)) => {
                    format!("rollout of revision {rev} pausing after {at} (a timed pause, since {})", since.0)
                }
                _ => format!("rollout of revision {rev} progressing: {at}"),
            };
            with_message(head, message.unwrap_or(condition("Reconciling")))
        }
    }
}

fn with_message(head: String, message: &str) -> String {
    if message.is_empty() { head } else { format!("{head}: {message}") }
}

/// One line of progress: phase, step, node counts, analysis, message.
pub fn progress_line(p: &BpfProgram) -> String {
    let Some(status) = &p.status else {
        return "Pending: no status yet".to_string();
    };
    let stale = match (p.metadata.generation, status.observed_generation) {
        (Some(g), Some(o)) if g != o => format!(" (status of generation {o}, spec is at {g})"),
        (Some(g), None) => format!(" (spec generation {g} not observed yet)"),
        _ => String::new(),
    };
    match &status.rollout {
        Some(r) => {
            let mut line = format!("{:?}: step {}/{}, {}", r.phase, r.step, r.total_steps, counts(r));
            if let Some(rev) = &r.update_revision {
                line.push_str(&format!(", revision {rev}"));
            }
            if let Some(a) = &r.analysis {
                line.push_str(&format!(
                    ", analysis of step {}: {} measurement(s), {} failed",
                    a.step, a.measurements, a.failures
                ));
                if let Some(last) = a.last.as_deref().filter(|l| !l.is_empty()) {
                    line.push_str(&format!(", last {last}"));
                }
            }
            line.push_str(&stale);
            if let Some(m) = r.message.as_deref().filter(|m| !m.is_empty()) {
                line.push_str(": ");
                line.push_str(m);
            }
            line
        }
        None => format!(
            "{} ready, {} failed, {} target node(s), revision {}{stale}",
            status.ready_nodes,
            status.failed_nodes,
            status.target_nodes,
            status.revision.as_deref().unwrap_or("?")
        ),
    }
}

/// The rollout's node counts, DaemonSet-style.
fn counts(r: &RolloutStatus) -> String {
    format!(
        "{} desired, {} updated, {} ready, {} available, {} unavailable, {} waiting for agent, {} failed",
        r.desired_nodes,
        r.updated_nodes,
        r.ready_nodes,
        r.available_nodes,
        r.unavailable_nodes,
        r.waiting_for_agent_nodes,
        r.failed_nodes
    )
}

/// What is shown for `p`: its progress line, and for a held rollout, what to run.
fn shown(p: &BpfProgram, v: &Verdict) -> String {
    let line = progress_line(p);
    if v.standing == Standing::Suspended { format!("{line}\n{}", v.message) } else { line }
}

/// Print progress until the verdict is final or `timeout` (None: no limit) passes.
pub async fn run(
    api: Api<BpfProgram>,
    name: &str,
    timeout: Option<Duration>,
    watch: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Exit> {
    // A plain GET first, so a missing program or missing rights fail at once and clearly.
    let first = api.get(name).await.with_context(|| format!("cannot read BpfProgram {name}"))?;
    if !watch {
        writeln!(out, "{}", progress_line(&first))?;
        return finish(&verdict(&first), out);
    }
    let follow = async {
        let mut last = String::new();
        let mut show = |p: &BpfProgram, out: &mut dyn Write| -> anyhow::Result<Option<Exit>> {
            let v = verdict(p);
            let text = shown(p, &v);
            if text != last {
                writeln!(out, "{text}")?;
                out.flush()?;
                last = text;
            }
            match v.is_final() {
                true => finish(&v, out).map(Some),
                false => Ok(None),
            }
        };
        if let Some(exit) = show(&first, out)? {
            return Ok(exit);
        }
        let mut stream = std::pin::pin!(watcher::watch_object(api, name).default_backoff());
        while let Some(event) = stream.next().await {
            match event {
                Ok(Some(p)) => {
                    if let Some(exit) = show(&p, out)? {
                        return Ok(exit);
                    }
                }
                Ok(None) => anyhow::bail!("BpfProgram {name} was deleted"),
                // The watcher retries with backoff; say why it is quiet.
                Err(e) => eprintln!("watch of BpfProgram {name} failed, retrying: {e}"),
            }
        }
        anyhow::bail!("the watch of BpfProgram {name} ended")
    };
    match timeout {
        None => follow.await,
        Some(t) => match tokio::time::timeout(t, follow).await {
            Ok(r) => r,
            Err(_) => {
                writeln!(out, "timed out after {}s waiting for the rollout of {name} to finish", t.as_secs())?;
                Ok(Exit::NotDone)
            }
        },
    }
}

fn finish(v: &Verdict, out: &mut dyn Write) -> anyhow::Result<Exit> {
    match v.standing {
        Standing::Failed => writeln!(out, "error: {}", v.message)?,
        _ => writeln!(out, "{}", v.message)?,
    }
    Ok(v.exit())
}

/// `--timeout`: `30s`, `10m`, `1h`, or `0` for no limit.
pub fn parse_timeout(s: &str) -> Result<Option<Duration>, String> {
    if s == "0" {
        return Ok(None);
    }
    crds::rollout::parse_duration(s).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NEW: &str = "aaaaaaaaaaaaaaaa";

    fn program(generation: i64, spec_paused: bool, status: Value) -> BpfProgram {
        serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
            "metadata": {"name": "xdp-counter", "generation": generation},
            "spec": {"bytecode": {"path": "/opt/x.o"},
                     "programs": [{"name": "f", "type": "Tracepoint", "tracepoint": {"names": ["a/b"]}}],
                     "rollout": {"paused": spec_paused, "steps": [{"nodes": 1, "pause": {}}, {"nodes": "100%"}]}},
            "status": status,
        }))
        .unwrap()
    }

    /// The conditions the operator writes: `Ready`, and `Reconciling`/`Stalled` as given.
    fn conditions(ready: bool, reconciling: bool, stalled: bool, message: &str) -> Value {
        let c = |t: &str, on: bool| {
            json!({"type": t, "status": if on { "True" } else { "False" }, "reason": "R", "message": message,
                   "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2})
        };
        json!([c("Ready", ready), c("Reconciling", reconciling), c("Stalled", stalled)])
    }

    /// A status of generation 2 in `phase`, with the conditions that go with it.
    fn rollout(phase: &str, message: Option<&str>, extra: Value) -> Value {
        let (ready, reconciling, stalled) = match phase {
            "Complete" => (true, false, false),
            "Halted" | "RolledBack" | "Degraded" => (false, false, true),
            "Paused" if extra.get("pauseStartTime").is_none() => (false, false, false),
            _ => (false, true, false),
        };
        let mut r = json!({"phase": phase, "stableRevision": "bbbbbbbbbbbbbbbb", "updateRevision": NEW,
            "step": 2, "totalSteps": 3, "desiredNodes": 4, "updatedNodes": 2, "readyNodes": 1, "availableNodes": 3,
            "unavailableNodes": 1, "waitingForAgentNodes": 0, "failedNodes": 1, "message": message});
        for (k, v) in extra.as_object().into_iter().flatten() {
            r[k] = v.clone();
        }
        json!({"observedGeneration": 2, "revision": NEW, "targetNodes": 4, "rollout": r,
               "conditions": conditions(ready, reconciling, stalled, "conditions say why")})
    }

    fn v(generation: i64, status: Value) -> Verdict {
        verdict(&program(generation, false, status))
    }

    #[test]
    fn complete_on_the_current_generation_is_done() {
        let got = v(2, rollout("Complete", None, json!({})));
        assert_eq!(
            got,
            Verdict {
                standing: Standing::Current,
                message: format!("rollout of revision {NEW} complete: 2 node(s) updated")
            }
        );
        assert_eq!(got.exit(), Exit::Ok);
        let waiting = v(2, rollout("Complete", None, json!({"waitingForAgentNodes": 1})));
        assert!(waiting.message.ends_with("2 node(s) updated, 1 waiting for an agent"), "{waiting:?}");
    }

    #[test]
    fn a_status_of_an_older_generation_is_not_an_answer() {
        for phase in ["Complete", "Halted", "RolledBack", "Degraded", "Paused"] {
            let got = v(3, rollout(phase, None, json!({})));
            assert_eq!(got.standing, Standing::InProgress, "{phase}");
            assert!(got.message.contains("generation 3 (status is of generation 2)"), "{phase}: {got:?}");
            assert_eq!(got.exit(), Exit::NotDone);
        }
        assert_eq!(v(1, json!(null)).standing, Standing::InProgress);
        assert!(v(1, json!(null)).message.starts_with("waiting for the operator to report"));
    }

    #[test]
    fn without_conditions_nothing_is_decided() {
        let mut status = rollout("Complete", None, json!({}));
        status.as_object_mut().unwrap().remove("conditions");
        let got = v(2, status);
        assert_eq!(got.standing, Standing::InProgress);
        assert_eq!(got.message, "waiting for the operator's conditions on BpfProgram xdp-counter");
    }

    #[test]
    fn halted_rolled_back_and_degraded_fail_with_the_message() {
        let got = v(2, rollout("Halted", Some("2 nodes failed: node-7: verifier rejected"), json!({})));
        assert_eq!(
            got,
            Verdict {
                standing: Standing::Failed,
                message: format!(
                    "rollout of revision {NEW} halted at step 2/3: 2 nodes failed: node-7: verifier rejected"
                )
            }
        );
        assert_eq!(got.exit(), Exit::Failed);
        let got = v(2, rollout("RolledBack", None, json!({})));
        assert_eq!(
            got.message,
            format!("rollout of revision {NEW} failed and was rolled back to bbbbbbbbbbbbbbbb: conditions say why"),
            "without a rollout message, the Stalled condition's"
        );
        let got = v(2, rollout("RolledBack", None, json!({"aborted": true})));
        assert!(got.message.contains("was aborted and was rolled back to"), "{got:?}");
        let got = v(2, rollout("Degraded", Some("node-7: verifier rejected; retried in 40s"), json!({})));
        assert_eq!(got.standing, Standing::Failed);
        assert_eq!(
            got.message,
            format!("rollout of revision {NEW} degraded: 1 node(s) failed: node-7: verifier rejected; retried in 40s")
        );
        assert_eq!(got.exit(), Exit::Failed);
    }

    #[test]
    fn a_stalled_condition_fails_whatever_the_phase() {
        // A spec no node can run: Stalled, while the rollout has not moved.
        let mut status = rollout("Progressing", None, json!({}));
        status["conditions"] = conditions(false, false, true, "bytecode: ConfigMap x has no key y");
        let got = v(2, status);
        assert_eq!(got.standing, Standing::Failed);
        assert_eq!(
            got.message,
            format!("rollout of revision {NEW} stalled at step 2/3: bytecode: ConfigMap x has no key y")
        );
    }

    #[test]
    fn progressing_and_a_timed_pause_go_on_by_themselves() {
        let got = v(2, rollout("Progressing", Some("waiting for node-3"), json!({})));
        assert_eq!(got.standing, Standing::InProgress);
        assert_eq!(got.message, format!("rollout of revision {NEW} progressing: step 2/3: waiting for node-3"));
        assert_eq!(got.exit(), Exit::NotDone);
        let timed =
            v(2, rollout("Paused", Some("step 2 done; 5m pause"), json!({"pauseStartTime": "2026-01-01T10:00:00Z"})));
        assert_eq!(timed.standing, Standing::InProgress);
        assert_eq!(
            timed.message,
            format!(
                "rollout of revision {NEW} pausing after step 2/3 (a timed pause, since 2026-01-01T10:00:00Z): step 2 \
                 done; 5m pause"
            )
        );
        assert_eq!(timed.exit(), Exit::NotDone);
    }

    #[test]
    fn a_pause_that_waits_for_someone_says_what_to_run() {
        let step = v(2, rollout("Paused", Some("step 2 done"), json!({})));
        assert_eq!(step.standing, Standing::Suspended);
        assert_eq!(step.exit(), Exit::NotDone);
        assert!(!step.is_final());
        assert!(step.message.starts_with(&format!("rollout of revision {NEW} paused at step 2/3: step 2 done (")));
        assert!(step.message.contains("`kubectl bpfleet rollout resume xdp-counter` or `promote xdp-counter`"));
        assert!(step.message.contains("`promote xdp-counter --full`"), "{step:?}");
        // Held by the spec: only resume (a spec edit) releases it.
        let held = verdict(&program(2, true, rollout("Paused", Some("paused by spec.rollout.paused"), json!({}))));
        assert_eq!(held.standing, Standing::Suspended);
        assert!(held.message.contains("held by spec.rollout.paused; `kubectl bpfleet rollout resume xdp-counter`"));
        assert!(held.message.contains("do that in Git"), "{held:?}");
    }

    #[test]
    fn without_a_rollout_status_the_conditions_decide() {
        let status = |ready, reconciling, stalled| {
            json!({"observedGeneration": 2, "revision": NEW, "targetNodes": 2, "readyNodes": 1,
                   "conditions": conditions(ready, reconciling, stalled, "1/2 nodes ready")})
        };
        assert_eq!(v(2, status(true, false, false)).message, format!("revision {NEW} ready on 1/2 node(s)"));
        let going = v(2, status(false, true, false));
        assert_eq!(
            (going.standing, going.message),
            (Standing::InProgress, format!("revision {NEW}: 1/2 node(s) ready: 1/2 nodes ready"))
        );
        let failed = v(2, status(false, false, true));
        assert_eq!(
            (failed.standing, failed.message),
            (Standing::Failed, format!("revision {NEW} failed: 1/2 nodes ready"))
        );
    }

    #[test]
    fn progress_lines_show_phase_step_counts_analysis_and_message() {
        assert_eq!(
            progress_line(&program(2, false, rollout("Progressing", Some("waiting for node-3"), json!({})))),
            format!(
                "Progressing: step 2/3, 4 desired, 2 updated, 1 ready, 3 available, 1 unavailable, 0 waiting for \
                 agent, 1 failed, revision {NEW}: waiting for node-3"
            )
        );
        let analysis = json!({"analysis": {"step": 2, "measurements": 3, "failures": 1, "last": "0.02"}});
        assert_eq!(
            progress_line(&program(3, false, rollout("Complete", None, analysis))),
            format!(
                "Complete: step 2/3, 4 desired, 2 updated, 1 ready, 3 available, 1 unavailable, 0 waiting for agent, \
                 1 failed, revision {NEW}, analysis of step 2: 3 measurement(s), 1 failed, last 0.02 (status of \
                 generation 2, spec is at 3)"
            )
        );
        assert_eq!(progress_line(&program(1, false, json!(null))), "Pending: no status yet");
    }

    #[test]
    fn a_held_rollout_shows_what_to_run_under_its_progress_line() {
        let p = program(2, false, rollout("Paused", Some("step 2 done"), json!({})));
        let text = shown(&p, &verdict(&p));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("Paused: step 2/3") && lines[1].contains("rollout resume xdp-counter"), "{text}");
        let p = program(2, false, rollout("Progressing", None, json!({})));
        assert_eq!(shown(&p, &verdict(&p)), progress_line(&p));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("0"), Ok(None));
        assert_eq!(parse_timeout("10m"), Ok(Some(Duration::from_secs(600))));
        assert!(parse_timeout("10").is_err());
    }
}
