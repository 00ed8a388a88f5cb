//! `/healthz` and `/metrics` of the agent binary, read over plain HTTP/1.1: managed
//! programs, apply durations and errors by reason, and kernel run counts of a running
//! program (BPF stats, which the agent turns on while it runs). `/metrics` is OpenMetrics
//! text, labelled so, and a strict OpenMetrics parser reads it. With `--health-listen`,
//! `/healthz` alone on a second port and `/metrics` only on `--metrics-listen`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct MetricsAgent {
    child: Child,
    root: PathBuf,
    tmp: tempfile::TempDir,
    log: PathBuf,
    port: u16,
    /// Port of --health-listen, when given.
    health_port: Option<u16>,
}

impl MetricsAgent {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// Also with `--health-listen` on a port of its own.
    fn start_with_health() -> Self {
        let port = free_port();
        let mut agent = Self::start_with(&["--health-listen".into(), format!("127.0.0.1:{port}")]);
        agent.health_port = Some(port);
        agent
    }

    fn start_with(extra: &[String]) -> Self {
        setup();
        let root = PathBuf::from(format!("/sys/fs/bpf/bpfleet-metrics-{}", unique("m")));
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("manifests")).unwrap();
        let log = tmp.path().join("agent.log");
        let port = free_port();
        let child = Command::new(agent_bin())
            .args(["--node-name", "metrics-node", "--standalone-interval", "1"])
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--standalone")
            .arg(tmp.path().join("manifests"))
            .arg("--bpffs-root")
            .arg(&root)
            .arg("--state-dir")
            .arg(tmp.path().join("state"))
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("BPFLEET_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn bpfleet-agent");
        Self { child, root, tmp, log, port, health_port: None }
    }

    fn write(&self, file: &str, yaml: &str) {
        let dir = self.tmp.path().join("manifests");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }

    /// GET `path` on --metrics-listen: (status code, body), or None while nothing listens.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        get_on(self.port, path)
    }

    /// GET `path` on `port`, polled until it answers (15 s); fails with the agent log.
    fn wait_get(&mut self, port: u16, path: &str) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = get_on(port, path) {
                return r;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited ({st}):\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "nothing answered {path} on port {port}; agent log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Poll /metrics until `f` holds for it; fails with the last scrape and the agent log.
    fn wait_metrics(&mut self, secs: u64, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited ({st}):\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            let body = self.get("/metrics").map(|(_, b)| b).unwrap_or_default();
            if f(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last scrape:\n{body}\nagent log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MetricsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// GET `path` on 127.0.0.1:`port`: (status code, body), or None while nothing listens.
fn get_on(port: u16, path: &str) -> Option<(u16, String)> {
    get_with_head(port, path).map(|(code, _, body)| (code, body))
}

/// GET `path` on 127.0.0.1:`port`: (status code, response head, body).
fn get_with_head(port: u16, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    Some((code, head.to_string(), if chunked { dechunk(body) } else { body.to_string() }))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of a response head's `Content-Type`.
fn content_type(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-type").then(|| value.trim().to_string())
    })
}

/// Debian's python3-prometheus-client holds a strict OpenMetrics 1.0 parser (it refuses a
/// missing `# EOF`, a counter sample without `_total`, a TYPE line of another name). Run
/// on `body`: each family as `name type`, or the parser's error. `None`: no such parser here.
fn openmetrics_families(body: &str) -> Option<Result<Vec<String>, String>> {
    const PARSE: &str = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        for f in parse(sys.stdin.read()): print(f.name, f.type)\n";
    let python = "/usr/bin/python3";
    let probe = Command::new(python).args(["-c", "import prometheus_client.openmetrics.parser"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Some(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

/// The value of the first sample whose line starts with `name` (labels included) and
/// contains every `labels` fragment.
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| labels.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn manifest(name: &str, object_name: &str, function: &str) -> String {
    format!(
        "apiVersion: bpfleet.dev/v1alpha1\nkind: BpfProgram\nmetadata:\n  name: {name}\nspec:\n  bytecode:\n    path: {}\n  \
         programs:\n    - {{name: {function}, type: Tracepoint, tracepoint: {{names: [syscalls/sys_enter_openat]}}}}\n",
        object(object_name).display()
    )
}

#[test]
fn healthz_and_metrics_report_kernel_truth() {
    let mut agent = MetricsAgent::start();
    let deadline = Instant::now() + Duration::from_secs(15);
    let health = loop {
        if let Some(r) = agent.get("/healthz") {
            break r;
        }
        assert!(Instant::now() < deadline, "metrics endpoint never came up");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health.0, 200, "{health:?}");

    agent.write("tracepoint.yaml", &manifest("metrics-openat", "tracepoint_openat.o", "count_openat"));
    let body = agent
        .wait_metrics(10, "one managed program", |b| sample(b, "bpfleet_agent_programs_managed", &[]) == Some(1.0));
    assert!(sample(&body, "bpfleet_agent_apply_duration_seconds_count", &[]).unwrap_or(0.0) >= 1.0, "{body}");
    assert_eq!(sample(&body, "bpfleet_agent_owners_managed", &[]), Some(1.0), "{body}");
    // The program exists in the kernel, pinned where the agent says.
    let pinned = pins_under(&agent.root);
    let prog = pinned.iter().find(|p| p.ends_with("progs/count_openat")).expect("program pinned");
    assert!(sh_ok(&format!("bpftool prog show pinned {}", agent.root.join(prog).display())));

    // Kernel run statistics are on while the agent runs (BPF_ENABLE_STATS: the kernel
    // counts runs for as long as the agent holds the fd; `sysctl kernel.bpf_stats_enabled`
    // reads back only what was written through the sysctl, so bpftool is asked instead).
    let prog_pin = agent.root.join(prog);
    let run = [r#"program="count_openat""#, r#"owner="metrics-openat""#];
    let body = agent.wait_metrics(10, "a run count for count_openat", |b| {
        sample(b, "bpfleet_agent_program_run_count_total", &run).is_some()
    });
    let first = sample(&body, "bpfleet_agent_program_run_count_total", &run).unwrap();
    for _ in 0..50 {
        let _ = std::fs::File::open("/etc/hostname");
    }
    let body = agent.wait_metrics(10, "run count growing with openat calls", |b| {
        sample(b, "bpfleet_agent_program_run_count_total", &run).is_some_and(|v| v >= first + 50.0)
    });
    assert!(sample(&body, "bpfleet_agent_program_run_count_total", &run).unwrap() > 0.0);
    assert!(sample(&body, "bpfleet_agent_program_run_time_seconds_total", &run).unwrap() > 0.0, "{body}");
    let shown = sh(&format!("bpftool -j prog show pinned {}", prog_pin.display()));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let kernel_runs = v["run_cnt"].as_u64().unwrap_or_else(|| panic!("bpftool shows no run_cnt: {shown}"));
    assert!(kernel_runs as f64 >= first + 50.0, "bpftool run_cnt {kernel_runs}, metric started at {first}");

    // A manifest naming a function the object lacks is counted by reason.
    let not_found = [r#"reason="ProgramNotFound""#];
    let errors_before = sample(&body, "bpfleet_agent_apply_errors_total", &not_found).unwrap_or(0.0);
    agent.write("bad.yaml", &manifest("metrics-bad", "tracepoint_openat.o", "no_such_function"));
    let body = agent.wait_metrics(10, "apply_errors_total{reason=ProgramNotFound} to increase", |b| {
        sample(b, "bpfleet_agent_apply_errors_total", &not_found).is_some_and(|v| v > errors_before)
    });
    // The bad manifest loads nothing; the good one keeps running.
    assert_eq!(sample(&body, "bpfleet_agent_programs_managed", &[]), Some(1.0), "{body}");
    assert!(!agent.root.join("standalone-metrics-bad").exists(), "{:?}", pins_under(&agent.root));
}

/// --health-listen serves /healthz and nothing else; --metrics-listen keeps serving
/// /metrics and /healthz (the chart binds it to loopback and probes the health port).
#[test]
fn health_listener_serves_healthz_but_not_metrics() {
    let mut agent = MetricsAgent::start_with_health();
    let health = agent.health_port.unwrap();
    assert_eq!(agent.wait_get(health, "/healthz"), (200, "ok".into()));
    let (code, body) = agent.wait_get(health, "/metrics");
    assert_eq!(code, 404, "/metrics must not be served on --health-listen: {body}");

    let (code, body) = agent.wait_get(agent.port, "/metrics");
    assert_eq!(code, 200);
    assert!(sample(&body, "bpfleet_agent_programs_managed", &[]).is_some(), "{body}");
    assert_eq!(agent.wait_get(agent.port, "/healthz"), (200, "ok".into()), "/healthz stays on --metrics-listen");
}

/// `/metrics` is labelled as the format it is (OpenMetrics), and a strict OpenMetrics
/// parser reads it, with the kernel's run count and run time as counters.
#[test]
fn metrics_are_openmetrics_and_say_so() {
    let mut agent = MetricsAgent::start();
    agent.write("tracepoint.yaml", &manifest("metrics-format", "tracepoint_openat.o", "count_openat"));
    agent.wait_metrics(10, "a run count", |b| sample(b, "bpfleet_agent_program_run_count_total", &[]).is_some());
    let (code, head, body) = get_with_head(agent.port, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    assert_eq!(
        content_type(&head).as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF: {body}");
    let Some(parsed) = openmetrics_families(&body) else {
        eprintln!(
            "SKIP openmetrics parse: /usr/bin/python3 with python3-prometheus-client missing (apt-get install python3-prometheus-client)"
        );
        return;
    };
    let families = parsed.unwrap_or_else(|e| panic!("the OpenMetrics parser refused /metrics: {e}\n{body}"));
    for want in [
        "bpfleet_agent_program_run_count counter",
        "bpfleet_agent_program_run_time_seconds counter",
        "bpfleet_agent_apply_errors counter",
        "bpfleet_agent_apply_duration_seconds histogram",
        "bpfleet_agent_programs_managed gauge",
    ] {
        assert!(families.iter().any(|f| f == want), "no `{want}` in {families:?}");
    }
}

/// A --health-listen address in use stops the start with words naming the flag, instead
/// of an agent whose probes never answer.
#[test]
fn a_health_listen_address_in_use_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut agent = MetricsAgent::start_with(&["--health-listen".into(), addr.clone()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the agent kept running with --health-listen {addr} in use");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(log.contains(&format!("cannot listen on --health-listen {addr}")), "{log}");
}
