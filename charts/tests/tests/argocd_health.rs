//! The Argo CD health check in docs/install.md, run by a real Lua interpreter on
//! statuses built as the operator's own type (`crds::BpfProgramStatus`, serialised as the
//! API server stores it): for every case its answer must be what `crds::standing` says
//! (`Standing::argo_cd` of `of_status`), so the documented Lua cannot drift from the
//! function the conditions, Flux and `kubectl bpfleet rollout status` follow.

use std::process::Command;

use chart_tests::repo;
use crds::BpfProgramStatus;
use crds::rollout::{Phase, RolloutStatus};
use crds::standing::{of_status, ready};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

fn health_lua() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/install.md")).expect("docs/install.md");
    let marker = "health.bpfleet.dev_BpfProgram: |\n";
    let start = doc.find(marker).expect("the Lua block") + marker.len();
    let end = start + doc[start..].find("```").expect("end of the block");
    doc[start..end].lines().map(|l| l.strip_prefix("    ").unwrap_or(l)).collect::<Vec<_>>().join("\n")
}

/// `v` as a Lua table constructor (what Argo CD hands the script as `obj`).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the Lua says for a BpfProgram of `generation` with `status`: (health, message).
fn argo_cd(generation: Option<i64>, status: Option<&BpfProgramStatus>) -> (String, String) {
    let obj = json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
        "metadata": {"name": "xdp-counter", "generation": generation},
        "status": status,
    });
    let script = format!(
        "obj = {}\nlocal function health()\n{}\nend\nlocal hs = health()\nprint(hs.status .. '|' .. hs.message)",
        lua(&obj),
        health_lua()
    );
    let out =
        Command::new("lua5.4").arg("-e").arg(&script).output().expect("lua5.4 (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (health, message) = text.split_once('|').unwrap_or_else(|| panic!("no health|message in {text:?}"));
    (health.to_string(), message.to_string())
}

fn condition(type_: &str, on: bool) -> Condition {
    serde_json::from_value(json!({
        "type": type_, "status": if on { "True" } else { "False" }, "reason": "Test",
        "message": format!("{type_} says why"), "observedGeneration": 2,
        "lastTransitionTime": "2026-01-01T10:00:00Z",
    }))
    .unwrap()
}

/// A status of `observed` with `Ready`, `Reconciling` and `Stalled` as given (None: no
/// conditions at all), and `rollout`.
fn status(observed: Option<i64>, conditions: Option<[bool; 3]>, rollout: Option<RolloutStatus>) -> BpfProgramStatus {
    let conditions = conditions
        .map(|[r, rec, st]| vec![condition("Ready", r), condition("Reconciling", rec), condition("Stalled", st)])
        .unwrap_or_default();
    BpfProgramStatus {
        observed_generation: observed,
        revision: Some("aaaaaaaaaaaaaaaa".into()),
        target_nodes: 4,
        ready_nodes: 2,
        conditions,
        rollout,
        ..Default::default()
    }
}

fn rollout(phase: Phase, timed_pause: bool) -> RolloutStatus {
    let since: Time = serde_json::from_value(json!("2026-01-01T10:00:00Z")).unwrap();
    RolloutStatus {
        phase,
        stable_revision: Some("bbbbbbbbbbbbbbbb".into()),
        update_revision: Some("aaaaaaaaaaaaaaaa".into()),
        step: 1,
        total_steps: 3,
        desired_nodes: 4,
        updated_nodes: 1,
        message: Some(format!("{phase:?} at step 1")),
        pause_start_time: timed_pause.then_some(since),
        ..Default::default()
    }
}

// Ready, Reconciling, Stalled.
const CONVERGING: Option<[bool; 3]> = Some([false, true, false]);
const FAILING: Option<[bool; 3]> = Some([false, false, true]);
const DONE: Option<[bool; 3]> = Some([true, false, false]);
const SETTLED: Option<[bool; 3]> = Some([false, false, false]);

#[test]
fn argo_cd_health_is_what_crds_standing_says_for_every_case() {
    use Phase::*;
    let cases: Vec<(&str, Option<i64>, Option<BpfProgramStatus>, &str)> = vec![
        ("no status", Some(2), None, "Progressing"),
        (
            "a status of an older generation",
            Some(3),
            Some(status(Some(2), DONE, Some(rollout(Complete, false)))),
            "Progressing",
        ),
        ("no observedGeneration", Some(2), Some(status(None, DONE, None)), "Progressing"),
        ("no generation to compare", None, Some(status(Some(2), DONE, None)), "Healthy"),
        ("no conditions", Some(2), Some(status(Some(2), None, Some(rollout(Complete, false)))), "Progressing"),
        (
            "Reconciling True",
            Some(2),
            Some(status(Some(2), CONVERGING, Some(rollout(Progressing, false)))),
            "Progressing",
        ),
        ("Reconciling before Stalled", Some(2), Some(status(Some(2), Some([false, true, true]), None)), "Progressing"),
        ("Stalled True without a rollout", Some(2), Some(status(Some(2), FAILING, None)), "Degraded"),
        (
            "Paused without pauseStartTime",
            Some(2),
            Some(status(Some(2), SETTLED, Some(rollout(Paused, false)))),
            "Suspended",
        ),
        (
            "Paused without pauseStartTime, Ready",
            Some(2),
            Some(status(Some(2), DONE, Some(rollout(Paused, false)))),
            "Suspended",
        ),
        (
            "Paused with pauseStartTime",
            Some(2),
            Some(status(Some(2), CONVERGING, Some(rollout(Paused, true)))),
            "Progressing",
        ),
        // Only the conditions make a timed pause Progressing; settled, it is Current.
        (
            "Paused with pauseStartTime, settled",
            Some(2),
            Some(status(Some(2), SETTLED, Some(rollout(Paused, true)))),
            "Progressing",
        ),
        (
            "Paused with pauseStartTime, settled, Ready",
            Some(2),
            Some(status(Some(2), DONE, Some(rollout(Paused, true)))),
            "Healthy",
        ),
        (
            "Stalled before a suspension",
            Some(2),
            Some(status(Some(2), FAILING, Some(rollout(Paused, false)))),
            "Degraded",
        ),
        ("Halted", Some(2), Some(status(Some(2), FAILING, Some(rollout(Halted, false)))), "Degraded"),
        ("RolledBack", Some(2), Some(status(Some(2), FAILING, Some(rollout(RolledBack, false)))), "Degraded"),
        ("Degraded", Some(2), Some(status(Some(2), FAILING, Some(rollout(Degraded, false)))), "Degraded"),
        ("Complete with Ready True", Some(2), Some(status(Some(2), DONE, Some(rollout(Complete, false)))), "Healthy"),
        (
            "Complete with Ready False",
            Some(2),
            Some(status(Some(2), SETTLED, Some(rollout(Complete, false)))),
            "Progressing",
        ),
        ("Ready True without a rollout", Some(2), Some(status(Some(2), DONE, None)), "Healthy"),
    ];
    for (name, generation, status, expected) in &cases {
        let status = status.as_ref();
        let rust = of_status(status, *generation).argo_cd(ready(status));
        assert_eq!(rust, *expected, "{name}: crds::standing says {rust}");
        let (health, message) = argo_cd(*generation, status);
        assert_eq!(health, rust, "{name}: the Lua says {health} ({message}), crds::standing says {rust}");
        assert!(!message.is_empty() && message != "nil", "{name}: a health without a message");
    }
}

#[test]
fn the_messages_say_why() {
    let with = |conditions, rollout| argo_cd(Some(2), Some(&status(Some(2), conditions, rollout))).1;
    assert_eq!(with(CONVERGING, None), "Reconciling says why");
    assert_eq!(with(FAILING, Some(rollout(Phase::Halted, false))), "Stalled says why");
    assert_eq!(with(DONE, None), "Ready says why");
    assert_eq!(with(SETTLED, None), "Ready says why", "Ready False: its message");
    assert_eq!(
        with(SETTLED, Some(rollout(Phase::Paused, false))),
        "Paused at step 1 (paused at step 1: kubectl bpfleet rollout resume or promote xdp-counter)"
    );
    assert_eq!(argo_cd(Some(3), Some(&status(Some(2), DONE, None))).1, "the operator has not seen this generation yet");
}

#[test]
fn status_text_reaches_lua_as_it_is() {
    let mut s = status(Some(2), FAILING, None);
    s.conditions[2].message = "node \"a\\b\"\nverifier: R1 invalid".into();
    assert_eq!(argo_cd(Some(2), Some(&s)), ("Degraded".into(), "node \"a\\b\"\nverifier: R1 invalid".into()));
}

/// What kstatus (sigs.k8s.io/cli-utils, Flux's health checks) makes of a custom resource:
/// its generic rules (a stale generation is InProgress; Reconciling True is InProgress,
/// else Stalled True is Failed, else Current).
fn kstatus(p: &crds::BpfProgram) -> &'static str {
    let Some(s) = &p.status else { return "InProgress" };
    if s.observed_generation != p.metadata.generation {
        return "InProgress";
    }
    let is_true = |t: &str| s.conditions.iter().any(|c| c.type_ == t && c.status == "True");
    if is_true("Reconciling") {
        "InProgress"
    } else if is_true("Stalled") {
        "Failed"
    } else {
        "Current"
    }
}

/// One table, every view: for each rollout phase (and both kinds of pause) the status the
/// operator computes is read by kstatus, by the Argo CD health Lua, and by `kubectl
/// bpfleet rollout status`; all three say what the row says, and what crds::standing says.
#[test]
fn status_plugin_lua_and_kstatus_agree_at_every_phase() {
    use std::collections::{BTreeMap, BTreeSet};

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kubectl_bpfleet::Exit;
    use operator::status::{NodeOutcome, StatusInput, compute};

    let t = |s: i64| Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + s).unwrap());
    let targets: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
    let failed = NodeOutcome::Failed {
        program: Some("count_packets".into()),
        reason: "VerifierRejected".into(),
        message: "R1 invalid mem access".into(),
    };
    let all = BTreeMap::from([("a".to_string(), NodeOutcome::Ready), ("b".to_string(), NodeOutcome::Ready)]);
    let half = BTreeMap::from([("a".to_string(), NodeOutcome::Ready), ("b".to_string(), NodeOutcome::Pending)]);
    let one_failed = BTreeMap::from([("a".to_string(), NodeOutcome::Ready), ("b".to_string(), failed)]);
    // (phase, timed pause, outcomes, kstatus, Argo CD, plugin exit)
    let table = [
        (Phase::Progressing, false, &half, "InProgress", "Progressing", Exit::NotDone),
        (Phase::Progressing, false, &one_failed, "InProgress", "Progressing", Exit::NotDone),
        (Phase::Paused, true, &half, "InProgress", "Progressing", Exit::NotDone),
        (Phase::Paused, false, &half, "Current", "Suspended", Exit::NotDone),
        (Phase::Halted, false, &one_failed, "Failed", "Degraded", Exit::Failed),
        (Phase::RolledBack, false, &half, "Failed", "Degraded", Exit::Failed),
        (Phase::Degraded, false, &one_failed, "Failed", "Degraded", Exit::Failed),
        (Phase::Complete, false, &all, "Current", "Healthy", Exit::Ok),
    ];
    for (phase, timed, outcomes, ks, argo, exit) in table {
        let r = RolloutStatus {
            phase,
            update_revision: Some("5f1c2a0000000000".into()),
            step: 1,
            total_steps: 2,
            pause_start_time: timed.then(|| t(0)),
            message: Some(format!("{phase:?} says why")),
            ..Default::default()
        };
        let status = compute(&StatusInput {
            generation: Some(3),
            revision: Some("5f1c2a0000000000"),
            targets: &targets,
            outcomes,
            spec_problem: None,
            retries: &BTreeMap::new(),
            previous: None,
            rollout: Some(&r),
            now: t(10),
        });
        let mut p: crds::BpfProgram = serde_json::from_value(json!({
            "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
            "metadata": {"name": "xdp-counter", "generation": 3},
            "spec": {"bytecode": {"path": "/x.o"}, "programs": [{"name": "f", "type": "XDP", "xdp": {"interfaces": ["eth0"]}}]},
        }))
        .unwrap();
        p.status = Some(status.clone());
        let what = format!("{phase:?} (timed pause: {timed})");
        let standing = of_status(p.status.as_ref(), p.metadata.generation);
        assert_eq!(kstatus(&p), ks, "{what}: kstatus");
        assert_eq!(standing.kstatus(), ks, "{what}: crds::standing");
        assert_eq!(argo_cd(Some(3), Some(&status)).0, argo, "{what}: the Argo CD Lua");
        assert_eq!(kubectl_bpfleet::status::verdict(&p).exit(), exit, "{what}: kubectl bpfleet rollout status");
    }
}
