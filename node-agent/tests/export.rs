//! `spec.metrics` on the agent's `/metrics`, over the real gRPC API, checked against the
//! kernel: each exported sample is the value bpftool reads from the same map (per-CPU
//! values summed or one series per CPU), labels are the key fields decoded with the map's
//! BTF, and the page stays strict OpenMetrics. More series than
//! `--max-metric-series-per-program` are cut to that many and the owner's state says so;
//! a metric naming what the object does not have is refused before anything loads.
//!
//! `examples/bpf/testdata/probe_counters.c` counts this test process's getppid(2) calls.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::process::*;
use common::*;
use proto::v1;

const OBJECT: &str = "probe_counters.o";
const PROGRAM: &str =
    "  - {name: count_getppid, type: Tracepoint, tracepoint: {names: [syscalls/sys_enter_getppid]}}\n";

fn metric(name: &str, kind: &str, map: &str, labels: &[(&str, &str)], value: &str, per_cpu: &str) -> v1::Metric {
    v1::Metric {
        name: name.into(),
        help: format!("{name} of probe_counters"),
        r#type: kind.into(),
        map: map.into(),
        labels: labels.iter().map(|(n, f)| v1::MetricLabel { name: (*n).into(), field: (*f).into() }).collect(),
        value: value.into(),
        per_cpu: per_cpu.into(),
    }
}

fn request(uid: &str, metrics: Vec<v1::Metric>) -> v1::ApplyRequest {
    let mut req = apply_request(uid, PROGRAM, OBJECT);
    req.global_data.insert("TARGET_TGID".into(), std::process::id().to_le_bytes().to_vec().into());
    // What is exported is part of the revision (the operator hashes spec.metrics in).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&format!("{}{metrics:?}", req.revision), &mut h);
    req.revision = format!("{:016x}", std::hash::Hasher::finish(&h));
    req.metrics = metrics;
    req
}

/// GET /metrics on 127.0.0.1:`port` (HTTP/1.1, the body whole).
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics-listen");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The sample of line `series` (name and labels exactly as written).
fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn pin(state: &v1::OwnerState, map: &str) -> String {
    state.maps.iter().find(|m| m.name == map).unwrap().pin_path.clone()
}

/// Counters and gauges of three map shapes are what bpftool reads, labelled by key
/// fields; a strict OpenMetrics parser reads the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_samples_are_the_kernels_values_labelled_by_key_fields() {
    let dirs = Dirs::new("export");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = AgentProc::spawn_tls_with(&dirs, &["--metrics-listen", &listen], &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let metrics = vec![
        metric("getppid_calls_total", "Counter", "calls", &[("slot", "")], "", ""),
        metric("getppid_percpu", "Gauge", "calls_percpu", &[], "count", "Label"),
        metric("getppid_per_key", "Gauge", "per_key", &[("key", "")], "", "Sum"),
        metric("getppid_wide", "Counter", "wide_key", &[("a", "a"), ("b", "b")], "", ""),
        // No label from the key: every entry is the one series, their values summed.
        metric("getppid_all", "Gauge", "calls", &[], "", ""),
    ];
    let state = client.apply(request("export", metrics)).await.expect("apply with metrics").into_inner().state.unwrap();
    for _ in 0..50 {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let body = scrape(port);
    let program = "program=\"export-name\"";
    let calls = bpftool_values(Path::new(&pin(&state, "calls")), &0u32.to_le_bytes())[0];
    assert!(calls >= 50, "bpftool: {calls}");
    assert_eq!(sample(&body, &format!("getppid_calls_total{{{program},slot=\"0\"}}")), Some(calls), "{body}");
    let tens = bpftool_values(Path::new(&pin(&state, "calls")), &1u32.to_le_bytes())[0];
    assert_eq!(sample(&body, &format!("getppid_calls_total{{{program},slot=\"1\"}}")), Some(tens), "{body}");
    // One series per CPU: the count field (the first 4 bytes) of each CPU's value.
    let per_cpu = bpftool_values(Path::new(&pin(&state, "calls_percpu")), &0u32.to_le_bytes());
    for (cpu, v) in per_cpu.iter().enumerate() {
        let count = v & 0xffff_ffff;
        assert_eq!(
            sample(&body, &format!("getppid_percpu{{{program},cpu=\"{cpu}\"}}")),
            Some(count),
            "cpu {cpu}: {body}"
        );
    }
    let summed: u64 = bpftool_values(Path::new(&pin(&state, "per_key")), &7u64.to_le_bytes()).iter().sum();
    assert_eq!(sample(&body, &format!("getppid_per_key{{{program},key=\"7\"}}")), Some(summed), "{body}");
    assert_eq!(sample(&body, &format!("getppid_wide_total{{{program},a=\"1\",b=\"2\"}}")), Some(1), "{body}");
    assert_eq!(sample(&body, &format!("getppid_all{{{program}}}")), Some(calls + tens), "one series, summed: {body}");
    assert_eq!(body.lines().filter(|l| l.starts_with("getppid_all{")).count(), 1, "{body}");
    for line in [
        "# TYPE getppid_calls counter",
        "# HELP getppid_calls getppid_calls_total of probe_counters",
        "# TYPE getppid_percpu gauge",
    ] {
        assert!(body.contains(line), "{line}: {body}");
    }
    assert!(body.ends_with("# EOF\n"), "{body}");
    let list = client.list(v1::ListRequest::default()).await.unwrap().into_inner();
    assert!(list.owners[0].metrics_limited.is_empty(), "{:?}", list.owners[0].metrics_limited);
    drop(agent);
}

/// Over `--max-metric-series-per-program`: that many series, and the owner's state (what
/// List and Watch carry to the BpfNode) names the metric cut; back under, the note goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_over_the_limit_are_cut_and_the_state_says_so() {
    let dirs = Dirs::new("export-limit");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent =
        AgentProc::spawn_tls_with(&dirs, &["--metrics-listen", &listen, "--max-metric-series-per-program", "3"], &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let limited = vec![metric("getppid_percpu", "Gauge", "calls_percpu", &[], "count", "Label")];
    client.apply(request("export-limit", limited)).await.expect("apply");
    let cpus = aya::util::nr_cpus().unwrap();
    let body = scrape(port);
    let series = body.lines().filter(|l| l.starts_with("getppid_percpu{")).count();
    let list = client.list(v1::ListRequest::default()).await.unwrap().into_inner();
    let notes = &list.owners[0].metrics_limited;
    if cpus > 3 {
        assert_eq!(series, 3, "{body}");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("getppid_percpu: more series than the 3 this agent exports per program (--max-metric-series-per-program): 3 of"),
            "{notes:?}"
        );
    } else {
        assert_eq!(series, cpus, "{body}");
        assert!(notes.is_empty(), "{notes:?}");
    }
    // Two metrics of one series per possible CPU each: over 3 on any machine with 2 CPUs.
    let two = vec![
        metric("getppid_percpu", "Gauge", "calls_percpu", &[], "count", "Label"),
        metric("getppid_percpu_again", "Gauge", "calls_percpu", &[], "count", "Label"),
    ];
    client.apply(request("export-limit", two)).await.expect("apply");
    let body = scrape(port);
    let exported = body.lines().filter(|l| l.starts_with("getppid_percpu")).count();
    assert_eq!(exported, 3.min(2 * cpus), "{body}");
    let list = client.list(v1::ListRequest::default()).await.unwrap().into_inner();
    assert!(
        list.owners[0].metrics_limited.iter().any(|n| n.starts_with("getppid_percpu_again: more series than the 3")),
        "{:?}",
        list.owners[0].metrics_limited
    );
    // Back under the limit: the next scrape clears the note.
    let one = vec![metric("getppid_per_key", "Gauge", "per_key", &[("key", "")], "", "Sum")];
    client.apply(request("export-limit", one)).await.expect("apply");
    scrape(port);
    let list = client.list(v1::ListRequest::default()).await.unwrap().into_inner();
    assert!(list.owners[0].metrics_limited.is_empty(), "{:?}", list.owners[0].metrics_limited);
    drop(agent);
}

/// A metric naming a map, field or value the object does not have is refused before
/// anything loads: the error names the metric's field and what the object has, and no
/// pin is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_the_object_cannot_give_are_refused_before_loading() {
    let dirs = Dirs::new("export-bad");
    let mut agent = AgentProc::spawn_tls(&dirs, &[]);
    let mut client = agent.ready_client(dirs.client_tls()).await;
    let cases = [
        (metric("m", "Counter", "nope", &[], "", ""), "metrics[0].map: the object has no map \"nope\" (its maps: "),
        (metric("m", "Counter", "wide_key", &[("x", "c")], "", ""), "metrics[0].labels[0].field: "),
        (metric("m", "Gauge", "calls_percpu", &[], "", ""), "metrics[0].value: "),
        (metric("m", "Gauge", "calls_percpu", &[], "zero.x", ""), "metrics[0].value: "),
        (
            metric("m", "Counter", "calls", &[("program", "")], "", ""),
            "metrics[0].labels[0].name: label \"program\" is the exporter's own",
        ),
    ];
    for (m, want) in cases {
        let err = client.apply(request("export-bad", vec![m])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{want}\n{}", err.message());
        assert!(!dirs.root.join("export-bad").exists(), "nothing pinned after {want}");
    }
    let err = client
        .apply(request("export-bad", vec![metric("m", "Counter", "wide_key", &[("x", "c")], "", "")]))
        .await
        .unwrap_err();
    assert!(err.message().contains("c") && err.message().contains("a, b"), "the fields it has: {}", err.message());
    drop(agent);
}
