//! `rollout status`: one progress line per observed change of a BpfProgram's status, and
//! the decision whether the rollout is done, failed or still going.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use crds::BpfProgram;
use crds::rollout::Phase;
use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::Exit;

/// Where a rollout stands, from the status alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every target node runs the current generation's revision healthy.
    Done(String),
    /// Halted or rolled back: it will not go on by itself.
    Failed(String),
    /// Still moving (or paused): the reason.
    Waiting(String),
}

impl Verdict {
    pub fn exit(&self) -> Exit {
        match self {
            Verdict::Done(_) => Exit::Ok,
            Verdict::Failed(_) => Exit::Failed,
            Verdict::Waiting(_) => Exit::NotDone,
        }
    }
}

/// The verdict on `p`'s current generation. A status written for an older generation
/// says nothing about the current spec, whatever its phase.
pub fn verdict(p: &BpfProgram) -> Verdict {
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let generation = p.metadata.generation;
    let Some(status) = &p.status else {
        return Verdict::Waiting(format!("waiting for the operator to report on BpfProgram {name}"));
    };
    if generation.is_some() && status.observed_generation != generation {
        return Verdict::Waiting(format!(
            "waiting for the operator to observe generation {} (status is of generation {})",
            generation.unwrap_or_default(),
            status.observed_generation.map_or("none".to_string(), |g| g.to_string())
        ));
    }
    let revision = status.revision.as_deref().unwrap_or("?");
    match &status.rollout {
        Some(r) => {
            let message = r.message.clone().unwrap_or_default();
            let rev = r.update_revision.as_deref().unwrap_or(revision);
            match r.phase {
                Phase::Complete => {
                    Verdict::Done(format!("rollout of revision {rev} complete: {} node(s) updated", r.updated_nodes))
                }
                Phase::Degraded => {
                    Verdict::Failed(with_message(format!("rollout of revision {rev} degraded"), &message))
                }
                Phase::Halted => Verdict::Failed(with_message(format!("rollout of revision {rev} halted"), &message)),
                Phase::RolledBack => Verdict::Failed(with_message(
                    format!(
                        "rollout of revision {rev} failed and was rolled back to {}",
                        r.stable_revision.as_deref().unwrap_or("the stable revision")
                    ),
                    &message,
                )),
                Phase::Paused => Verdict::Waiting(with_message(
                    format!("rollout of revision {rev} paused at step {}/{}", r.step, r.total_steps),
                    &message,
                )),
                Phase::Progressing => Verdict::Waiting(with_message(
                    format!("rollout of revision {rev} progressing: step {}/{}", r.step, r.total_steps),
                    &message,
                )),
            }
        }
        // An operator without rollouts: the Ready condition decides.
        None => {
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            match ready {
                Some(c) if c.status == "True" => Verdict::Done(format!(
                    "revision {revision} ready on {}/{} node(s)",
                    status.ready_nodes, status.target_nodes
                )),
                Some(c) => Verdict::Waiting(with_message(
                    format!("revision {revision}: {}/{} node(s) ready", status.ready_nodes, status.target_nodes),
                    &c.message,
                )),
                None => Verdict::Waiting(format!("revision {revision}: waiting for the Ready condition")),
            }
        }
    }
}

fn with_message(head: String, message: &str) -> String {
    if message.is_empty() { head } else { format!("{head}: {message}") }
}

/// One line of progress: phase, step, node counts, message.
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
            let mut line = format!(
                "{:?}: step {}/{}, {} updated, {} failed, {} target node(s)",
                r.phase, r.step, r.total_steps, r.updated_nodes, r.failed_nodes, status.target_nodes
            );
            if let Some(rev) = &r.update_revision {
                line.push_str(&format!(", revision {rev}"));
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
            let line = progress_line(p);
            if line != last {
                writeln!(out, "{line}")?;
                out.flush()?;
                last = line;
            }
            let v = verdict(p);
            match v {
                Verdict::Waiting(_) => Ok(None),
                _ => finish(&v, out).map(Some),
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
    match v {
        Verdict::Done(m) => writeln!(out, "{m}")?,
        Verdict::Failed(m) => writeln!(out, "error: {m}")?,
        Verdict::Waiting(m) => writeln!(out, "{m}")?,
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
    use serde_json::json;

    fn program(generation: i64, status: serde_json::Value) -> BpfProgram {
        serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
            "metadata": {"name": "xdp-counter", "generation": generation},
            "spec": {"bytecode": {"path": "/opt/x.o"}, "programs": [{"name": "f", "type": "Tracepoint", "tracepoint": {"names": ["a/b"]}}]},
            "status": status,
        }))
        .unwrap()
    }

    fn rollout(phase: &str, message: Option<&str>) -> serde_json::Value {
        json!({"observedGeneration": 2, "revision": "aaaaaaaaaaaaaaaa", "targetNodes": 4, "rollout": {
            "phase": phase, "stableRevision": "bbbbbbbbbbbbbbbb", "updateRevision": "aaaaaaaaaaaaaaaa",
            "step": 2, "totalSteps": 3, "updatedNodes": 2, "failedNodes": 1, "message": message}})
    }

    #[test]
    fn complete_on_the_current_generation_is_done() {
        let v = verdict(&program(2, rollout("Complete", None)));
        assert!(matches!(v, Verdict::Done(_)), "{v:?}");
        assert_eq!(v.exit(), Exit::Ok);
    }

    #[test]
    fn a_status_of_an_older_generation_is_not_an_answer() {
        for phase in ["Complete", "Halted", "RolledBack"] {
            let v = verdict(&program(3, rollout(phase, None)));
            assert!(matches!(&v, Verdict::Waiting(m) if m.contains("generation 3")), "{phase}: {v:?}");
        }
        assert!(matches!(verdict(&program(1, json!(null))), Verdict::Waiting(_)));
    }

    #[test]
    fn halted_and_rolled_back_fail_with_the_message() {
        let v = verdict(&program(2, rollout("Halted", Some("2 nodes failed: node-7: verifier rejected"))));
        assert_eq!(
            v,
            Verdict::Failed(
                "rollout of revision aaaaaaaaaaaaaaaa halted: 2 nodes failed: node-7: verifier rejected".into()
            )
        );
        assert_eq!(v.exit(), Exit::Failed);
        let v = verdict(&program(2, rollout("RolledBack", None)));
        assert!(matches!(&v, Verdict::Failed(m) if m.contains("rolled back to bbbbbbbbbbbbbbbb")), "{v:?}");
    }

    #[test]
    fn progressing_and_paused_wait() {
        for phase in ["Progressing", "Paused"] {
            let v = verdict(&program(2, rollout(phase, Some("waiting for node-3"))));
            assert!(
                matches!(&v, Verdict::Waiting(m) if m.contains("step 2/3") && m.ends_with("waiting for node-3")),
                "{v:?}"
            );
            assert_eq!(v.exit(), Exit::NotDone);
        }
    }

    #[test]
    fn without_a_rollout_status_the_ready_condition_decides() {
        let ready = |s: &str| {
            json!({"observedGeneration": 2, "revision": "aaaaaaaaaaaaaaaa", "targetNodes": 2, "readyNodes": 1,
                   "conditions": [{"type": "Ready", "status": s, "reason": "R", "message": "1/2 nodes ready",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
        };
        assert!(matches!(verdict(&program(2, ready("True"))), Verdict::Done(_)));
        assert!(matches!(verdict(&program(2, ready("False"))), Verdict::Waiting(m) if m.ends_with("1/2 nodes ready")));
    }

    #[test]
    fn progress_lines_show_phase_step_counts_and_message() {
        assert_eq!(
            progress_line(&program(2, rollout("Progressing", Some("waiting for node-3")))),
            "Progressing: step 2/3, 2 updated, 1 failed, 4 target node(s), revision aaaaaaaaaaaaaaaa: waiting for node-3"
        );
        assert_eq!(
            progress_line(&program(3, rollout("Complete", None))),
            "Complete: step 2/3, 2 updated, 1 failed, 4 target node(s), revision aaaaaaaaaaaaaaaa (status of generation 2, spec is at 3)"
        );
        assert_eq!(progress_line(&program(1, json!(null))), "Pending: no status yet");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("0"), Ok(None));
        assert_eq!(parse_timeout("10m"), Ok(Some(Duration::from_secs(600))));
        assert!(parse_timeout("10").is_err());
    }
}
