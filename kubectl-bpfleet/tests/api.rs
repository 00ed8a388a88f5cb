//! The commands against a mocked API server: each scenario runs the command line as a
//! user types it and asserts the exact API calls, the patch sent, the output and the exit
//! status. No cluster needed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Parser;
use crds::revision::{BytecodeIdentity, Revision, Sha256Digest};
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kubectl_bpfleet::cli::Cli;
use kubectl_bpfleet::{Exit, run};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PROGRAM: &str = "/apis/bpfleet.dev/v1alpha1/bpfprograms/xdp-counter";
const UID: &str = "0b9f1a52-7d0e-4c1e-9d6a-1f2e3d4c5b6a";
/// The update revision in these statuses (a label only).
const NEW: &str = "2222222222222222";

fn program(status: Value) -> Value {
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
        "metadata": {"name": "xdp-counter", "uid": UID, "generation": 4, "resourceVersion": "77"},
        "spec": {
            "nodeSelector": {},
            "bytecode": {"configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
            "globalData": {"SAMPLE_RATE": "ZAAAAA=="},
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}}],
            "rollout": {"steps": [{"nodes": 1, "pause": {}}, {"nodes": "100%"}]},
        },
        "status": status,
    })
}

/// Revision 1's hash as the operator computes it, so `undo` can confirm it.
fn old() -> String {
    let spec: crds::BpfProgramSpec = serde_json::from_value(program(json!(null))["spec"].clone()).unwrap();
    let mut spec = spec;
    spec.global_data = [("SAMPLE_RATE".to_string(), "CgAAAA==".to_string())].into();
    Revision::compute(&spec, BytecodeIdentity::Bytes(b"\x7fELF-old")).to_string()
}

fn rollout_status(phase: &str, step: i32, message: &str) -> Value {
    // The conditions the operator writes with each phase (a pause here waits for someone).
    let (ready, reconciling, stalled) = match phase {
        "Complete" => ("True", "False", "False"),
        "Halted" | "RolledBack" | "Degraded" => ("False", "False", "True"),
        "Paused" => ("False", "False", "False"),
        _ => ("False", "True", "False"),
    };
    let condition = |t: &str, s: &str| {
        json!({"type": t, "status": s, "reason": "R", "message": message, "observedGeneration": 4,
               "lastTransitionTime": "2026-01-01T10:00:00Z"})
    };
    json!({"observedGeneration": 4, "revision": NEW, "targetNodes": 3, "readyNodes": 1,
           "conditions": [condition("Ready", ready), condition("Reconciling", reconciling), condition("Stalled", stalled)],
           "rollout": {"phase": phase, "stableRevision": old(), "updateRevision": NEW, "step": step, "totalSteps": 2,
                       "desiredNodes": 3, "updatedNodes": 1, "readyNodes": 1, "availableNodes": 3,
                       "failedNodes": if phase == "Halted" { 1 } else { 0 }, "message": message}})
}

fn revision(number: i64, hash: &str, elf: &[u8], global: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": format!("xdp-counter-{hash}"), "namespace": "bpfleet-system",
                     "creationTimestamp": "2026-01-01T10:00:00Z",
                     "labels": {"bpfleet.dev/program-uid": UID, "bpfleet.dev/revision": hash},
                     "annotations": {"bpfleet.dev/program": "xdp-counter"},
                     "ownerReferences": [{"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgram",
                                          "name": "xdp-counter", "uid": UID, "controller": true}]},
        "revision": number,
        "data": {
            "bytecode": {"configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
            "elf": B64.encode(elf),
            "digest": Sha256Digest::of(elf).as_str(),
            "globalData": {"SAMPLE_RATE": global},
            "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}}],
        },
    })
}

fn history() -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "90"},
           "items": [revision(2, NEW, b"\x7fELF-new", "ZAAAAA=="), revision(1, &old(), b"\x7fELF-old", "CgAAAA==")]})
}

fn config_map(elf: &[u8]) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system"},
           "binaryData": {"xdp_counter.o": B64.encode(elf)}})
}

/// A request as seen by the server.
struct Seen {
    uri: String,
    content_type: Option<String>,
    body: Value,
}

/// The next request: its method and path (with query) must start as given; answered
/// with `reply`.
async fn expect(handle: &mut Handle, method: &str, path_prefix: &str, reply: Value) -> Seen {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path_prefix}"))
        .expect("service dropped");
    let uri = req.uri().to_string();
    assert_eq!(req.method().as_str(), method, "{uri}");
    assert!(uri.starts_with(path_prefix), "expected {method} {path_prefix}, got {uri}");
    let content_type = req.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let body = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
    Seen { uri, content_type, body }
}

async fn assert_no_more_calls(handle: &mut Handle) {
    match tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        Err(_) | Ok(None) => {}
        Ok(Some((req, _))) => panic!("unexpected call {} {}", req.method(), req.uri()),
    }
}

/// Run the command line `args` against a mocked API server driven by `server`.
async fn kubectl<F, Fut, T>(args: &[&str], server: F) -> (anyhow::Result<Exit>, String, T)
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(server(handle));
    let cli = Cli::try_parse_from(std::iter::once("kubectl-bpfleet").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let result = run(cli, client, &mut out).await;
    let seen = server.await.unwrap();
    (result, String::from_utf8(out).unwrap(), seen)
}

const HISTORY_LIST: &str = "/apis/apps/v1/namespaces/bpfleet-system/controllerrevisions?&labelSelector=bpfleet.dev%2Fprogram-uid%3D0b9f1a52-7d0e-4c1e-9d6a-1f2e3d4c5b6a";
const CONFIG_MAP: &str = "/api/v1/namespaces/bpfleet-system/configmaps/xdp-counter-bytecode";

#[tokio::test]
async fn undo_of_a_halted_rollout_restores_the_stable_revision_by_reference() {
    let (result, out, patch) = kubectl(&["rollout", "undo", "xdp-counter"], |mut h| async move {
        expect(&mut h, "GET", PROGRAM, program(rollout_status("Halted", 1, "node-7: verifier rejected"))).await;
        expect(&mut h, "GET", HISTORY_LIST, history()).await;
        // The ConfigMap still holds revision 1's object: the reference is restored.
        expect(&mut h, "GET", CONFIG_MAP, config_map(b"\x7fELF-old")).await;
        let patch =
            expect(&mut h, "PATCH", &format!("{PROGRAM}?&fieldManager=kubectl-bpfleet"), program(json!(null))).await;
        assert_no_more_calls(&mut h).await;
        patch
    })
    .await;
    assert_eq!(result.unwrap(), Exit::Ok);
    assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"), "{}", patch.uri);
    assert_eq!(
        patch.body,
        json!({
            "metadata": {"resourceVersion": "77"},
            "spec": {
                "bytecode": {"inline": null, "path": null, "digest": null,
                             "configMap": {"name": "xdp-counter-bytecode", "namespace": "bpfleet-system", "key": "xdp_counter.o"}},
                "programs": [{"name": "count_packets", "type": "XDP", "xdp": {"interfaces": ["eth0"], "mode": "Auto"}}],
                "globalData": {"SAMPLE_RATE": "CgAAAA=="},
                "maps": null,
                "metrics": null,
            }
        })
    );
    assert!(out.contains("rolled back to revision 1"), "{out}");
    assert!(out.contains(&format!("expected revision: {}", old())), "{out}");
    assert!(!out.contains("note:") && !out.contains("warning:"), "{out}");
}

#[tokio::test]
async fn undo_restores_recorded_bytes_inline_when_the_config_map_changed() {
    let (result, out, patch) = kubectl(&["rollout", "undo", "xdp-counter", "--to-revision", "1"], |mut h| async move {
        expect(&mut h, "GET", PROGRAM, program(rollout_status("Complete", 2, ""))).await;
        expect(&mut h, "GET", HISTORY_LIST, history()).await;
        // The ConfigMap now holds revision 2's object.
        expect(&mut h, "GET", CONFIG_MAP, config_map(b"\x7fELF-new")).await;
        let patch = expect(&mut h, "PATCH", PROGRAM, program(json!(null))).await;
        assert_no_more_calls(&mut h).await;
        patch
    })
    .await;
    assert_eq!(result.unwrap(), Exit::Ok);
    assert_eq!(
        patch.body["spec"]["bytecode"],
        json!({"inline": B64.encode(b"\x7fELF-old"), "configMap": null, "path": null, "digest": null})
    );
    assert!(
        out.contains("note: ConfigMap bpfleet-system/xdp-counter-bytecode key xdp_counter.o now holds another object"),
        "{out}"
    );
    assert!(out.contains("as spec.bytecode.inline"), "{out}");
    // Inline bytes hash as the ConfigMap's did: the same revision.
    assert!(out.contains(&format!("expected revision: {}", old())), "{out}");
}

#[tokio::test]
async fn undo_refuses_a_changed_config_map_whose_recorded_bytes_do_not_fit_inline() {
    let big = vec![1u8; (1 << 20) + 1];
    let mut list = history();
    list["items"][1] = revision(1, &old(), &big, "CgAAAA==");
    let (result, _out, ()) = kubectl(&["rollout", "undo", "xdp-counter"], |mut h| async move {
        expect(&mut h, "GET", PROGRAM, program(rollout_status("Complete", 2, ""))).await;
        expect(&mut h, "GET", HISTORY_LIST, list).await;
        expect(&mut h, "GET", CONFIG_MAP, config_map(b"\x7fELF-new")).await;
        // No patch.
        assert_no_more_calls(&mut h).await;
    })
    .await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("refusing to undo BpfProgram xdp-counter to revision 1"), "{err}");
    assert!(err.contains("larger than inline bytecode allows"), "{err}");
}

/// Run `rollout <args>` on the program `read`: the GET, then the PATCH if `patched`.
async fn rollout_action(args: &[&str], read: Value, patched: bool) -> (anyhow::Result<Exit>, String, Option<Seen>) {
    let args: Vec<&str> = ["rollout"].iter().chain(args).copied().collect();
    kubectl(&args, |mut h| async move {
        expect(&mut h, "GET", PROGRAM, read).await;
        let patch = match patched {
            true => Some(
                expect(&mut h, "PATCH", &format!("{PROGRAM}?&fieldManager=kubectl-bpfleet"), program(json!(null)))
                    .await,
            ),
            false => None,
        };
        assert_no_more_calls(&mut h).await;
        patch
    })
    .await
}

fn annotation(action: &str) -> Value {
    json!({"metadata": {"annotations": {"bpfleet.dev/rollout-action": action}}})
}

#[tokio::test]
async fn resume_of_a_pause_step_sets_the_annotation_only() {
    let paused = program(rollout_status("Paused", 1, "step 1 done; waiting to be resumed"));
    let (result, out, patch) = rollout_action(&["resume", "xdp-counter"], paused, true).await;
    assert_eq!(result.unwrap(), Exit::Ok);
    let patch = patch.unwrap();
    assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(patch.body, annotation("resume"), "no revision hash, no spec edit");
    assert_eq!(
        out,
        "bpfprogram.bpfleet.dev/xdp-counter resume requested (bpfleet.dev/rollout-action=resume)\n\
         follow it with: kubectl bpfleet rollout status xdp-counter\n"
    );
}

#[tokio::test]
async fn resume_of_a_spec_pause_clears_paused_in_the_same_patch_and_says_so() {
    let mut held = program(rollout_status("Paused", 2, "held by spec.rollout.paused"));
    held["spec"]["rollout"]["paused"] = json!(true);
    let (result, out, patch) = rollout_action(&["resume", "xdp-counter"], held, true).await;
    assert_eq!(result.unwrap(), Exit::Ok);
    assert_eq!(
        patch.unwrap().body,
        json!({"metadata": {"annotations": {"bpfleet.dev/rollout-action": "resume"}},
               "spec": {"rollout": {"paused": false}}})
    );
    assert!(out.contains("resume requested (bpfleet.dev/rollout-action=resume, spec.rollout.paused=false)"), "{out}");
    assert!(out.contains("a GitOps tool puts paused: true back"), "{out}");
}

#[tokio::test]
async fn promote_and_promote_full_set_their_annotation() {
    for (args, value) in
        [(&["promote", "xdp-counter"][..], "promote"), (&["promote", "xdp-counter", "--full"], "promote-full")]
    {
        let paused = program(rollout_status("Paused", 1, "step 1 done"));
        let (result, out, patch) = rollout_action(args, paused, true).await;
        assert_eq!(result.unwrap(), Exit::Ok);
        assert_eq!(patch.unwrap().body, annotation(value));
        assert!(
            out.starts_with(&format!(
                "bpfprogram.bpfleet.dev/xdp-counter {value} requested (bpfleet.dev/rollout-action={value})\n"
            )),
            "{out}"
        );
    }
}

#[tokio::test]
async fn abort_and_retry_set_their_annotation() {
    let going = program(rollout_status("Progressing", 1, "waiting for node-1"));
    let (result, _out, patch) = rollout_action(&["abort", "xdp-counter"], going, true).await;
    assert_eq!(result.unwrap(), Exit::Ok);
    assert_eq!(patch.unwrap().body, annotation("abort"));
    let halted = program(rollout_status("Halted", 1, "node-7: verifier rejected"));
    let (result, _out, patch) = rollout_action(&["retry", "xdp-counter"], halted, true).await;
    assert_eq!(result.unwrap(), Exit::Ok);
    assert_eq!(patch.unwrap().body, annotation("retry"));
}

#[tokio::test]
async fn meaningless_actions_are_refused_without_a_patch() {
    for (args, phase, says) in [
        (&["promote", "xdp-counter"][..], "Complete", "is Complete: every node runs it already"),
        (&["abort", "xdp-counter"], "Complete", "rollout undo xdp-counter"),
        (&["retry", "xdp-counter"], "Progressing", "only a Halted, RolledBack, Degraded or aborted rollout"),
        (&["resume", "xdp-counter"], "Progressing", "nothing holds it"),
    ] {
        let (result, out, _) = rollout_action(args, program(rollout_status(phase, 2, "")), false).await;
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.starts_with(&format!("cannot {} BpfProgram xdp-counter: ", args[0])), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(out.is_empty(), "{out}");
    }
}

#[tokio::test]
async fn pause_patches_paused_without_reading() {
    let (result, _out, patch) = kubectl(&["rollout", "pause", "xdp-counter"], |mut h| async move {
        let patch = expect(&mut h, "PATCH", PROGRAM, program(json!(null))).await;
        assert_no_more_calls(&mut h).await;
        patch
    })
    .await;
    assert_eq!(result.unwrap(), Exit::Ok);
    assert_eq!(patch.body, json!({"spec": {"rollout": {"paused": true}}}));
}

/// `rollout status --watch=false` on a program with `status`: one GET.
async fn status_once(status: Value) -> (anyhow::Result<Exit>, String) {
    let (result, out, ()) = kubectl(&["rollout", "status", "xdp-counter", "--watch=false"], |mut h| async move {
        expect(&mut h, "GET", PROGRAM, program(status)).await;
        assert_no_more_calls(&mut h).await;
    })
    .await;
    (result, out)
}

#[tokio::test]
async fn status_without_watch_fails_on_a_halted_rollout() {
    let (result, out) = status_once(rollout_status("Halted", 1, "node-7: verifier rejected")).await;
    assert_eq!(result.unwrap(), Exit::Failed);
    assert!(
        out.ends_with(&format!("error: rollout of revision {NEW} halted at step 1/2: node-7: verifier rejected\n")),
        "{out}"
    );
}

#[tokio::test]
async fn status_without_watch_fails_on_a_degraded_rollout() {
    let (result, out) = status_once(rollout_status("Degraded", 2, "node-7: verifier rejected")).await;
    assert_eq!(result.unwrap(), Exit::Failed);
    assert!(out.ends_with("degraded: 0 node(s) failed: node-7: verifier rejected\n"), "{out}");
}

#[tokio::test]
async fn status_without_watch_of_a_held_rollout_says_what_to_run_and_exits_two() {
    let (result, out) = status_once(rollout_status("Paused", 1, "step 1 done")).await;
    assert_eq!(result.unwrap(), Exit::NotDone);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("Paused: step 1/2, 3 desired, 1 updated, 1 ready, 3 available"), "{out}");
    assert!(lines[1].contains("`kubectl bpfleet rollout resume xdp-counter` or `promote xdp-counter`"), "{out}");
}

#[tokio::test]
async fn status_follows_the_watch_until_complete() {
    let (result, out, ()) = kubectl(&["rollout", "status", "xdp-counter"], |mut h| async move {
        expect(&mut h, "GET", PROGRAM, program(rollout_status("Progressing", 1, "waiting for node-1"))).await;
        let list = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgramList", "metadata": {"resourceVersion": "78"},
                          "items": [program(rollout_status("Progressing", 2, "waiting for node-2"))]});
        expect(&mut h, "GET", "/apis/bpfleet.dev/v1alpha1/bpfprograms?&fieldSelector=metadata.name%3Dxdp-counter", list).await;
        let (req, send) = h.next_request().await.unwrap();
        assert!(req.uri().to_string().contains("watch=true"), "{}", req.uri());
        let mut done = program(rollout_status("Complete", 2, ""));
        done["metadata"]["resourceVersion"] = json!("79");
        let event = json!({"type": "MODIFIED", "object": done});
        send.send_response(Response::builder().body(Body::from(format!("{event}\n").into_bytes())).unwrap());
    })
    .await;
    assert_eq!(result.unwrap(), Exit::Ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("Progressing: step 1/2") && lines[0].ends_with("waiting for node-1"), "{out}");
    assert!(lines[1].starts_with("Progressing: step 2/2") && lines[1].ends_with("waiting for node-2"), "{out}");
    assert!(lines[2].starts_with("Complete: step 2/2"), "{out}");
    assert_eq!(lines[3], format!("rollout of revision {NEW} complete: 1 node(s) updated"));
}

#[tokio::test]
async fn status_times_out_with_exit_two() {
    let (result, out, _h) = kubectl(&["rollout", "status", "xdp-counter", "--timeout", "1s"], |mut h| async move {
        expect(&mut h, "GET", PROGRAM, program(rollout_status("Paused", 1, "paused after step 1"))).await;
        // The list is answered; the watch never is.
        let list = json!({"apiVersion": "bpfleet.dev/v1alpha1", "kind": "BpfProgramList", "metadata": {"resourceVersion": "78"},
                          "items": [program(rollout_status("Paused", 1, "paused after step 1"))]});
        expect(&mut h, "GET", "/apis/bpfleet.dev/v1alpha1/bpfprograms?", list).await;
        let pending = h.next_request().await;
        (h, pending)
    })
    .await;
    assert_eq!(result.unwrap(), Exit::NotDone);
    assert!(out.ends_with("timed out after 1s waiting for the rollout of xdp-counter to finish\n"), "{out}");
    assert_eq!(
        out.lines().count(),
        3,
        "one progress line and what to run (unchanged by the list), then the timeout: {out}"
    );
    assert!(out.lines().nth(1).unwrap().contains("rollout resume xdp-counter"), "{out}");
}
