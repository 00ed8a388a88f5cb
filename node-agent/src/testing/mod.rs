//! Helpers for the tests, benches and harnesses of other crates (feature `test-support`):
//! what node-agent's process tests, e2e, reliability and the agent bench would otherwise
//! each write for themselves.

pub mod args;
pub mod findings;
pub mod rng;
pub mod wait;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

/// A TCP port nobody listens on right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}

/// The body of `GET path` on a plain-HTTP server (a metrics endpoint), or an error unless
/// it answers 200.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.") && head.lines().next().is_some_and(|l| l.contains(" 200 ")) =>
        {
            Ok(body.to_string())
        }
        _ => anyhow::bail!("GET {path} on {addr}: {}", text.lines().next().unwrap_or("no answer")),
    }
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every path under `root` (a bpffs root, say), relative to it, sorted; empty when `root`
/// does not exist.
pub fn tree(root: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.display().to_string());
            }
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The agent binary whose fault hooks (`BPFLEET_FAULT`, `BPFLEET_PAUSE`) act: the shipped
/// `bpfleet-agent`'s `main` with them armed (see [`crate::fault`]). Harnesses that rely on
/// the hooks run this one.
pub const TEST_AGENT_BIN: &str = "bpfleet-agent-test";

/// Build [`TEST_AGENT_BIN`] (it requires `test-support`) in `workspace`; returns where it
/// is (`$CARGO_TARGET_DIR` or the workspace's `target/`, debug profile). Panics when the
/// build fails.
pub fn build_agent(workspace: &std::path::Path) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "node-agent", "--bin", TEST_AGENT_BIN, "--features", "test-support"])
        .current_dir(workspace);
    // What cargo set for the calling test binary only: build scripts (ring's) track some of
    // these, and a different value would rebuild the agent's dependencies every run.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_", "CARGO_PRIMARY_"];
        if per_package.iter().any(|p| key.starts_with(p)) || key == "CARGO_TARGET_TMPDIR" || key == "OUT_DIR" {
            build.env_remove(&*key);
        }
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p node-agent --bin {TEST_AGENT_BIN} --features test-support failed");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| workspace.join("target"));
    target.join("debug").join(TEST_AGENT_BIN)
}

/// Run `cmd` with bash; its standard output, or an error with its status and output.
pub fn sh(cmd: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("cannot run bash for `{cmd}`"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{cmd}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a bpftool (or tc, ip) command printing JSON. bpftool walks ids and opens each
/// object: one freed by another process meanwhile answers EAGAIN ("Resource temporarily
/// unavailable") and fails the whole listing. A listing is a snapshot anyway: take it again.
pub fn listing_json(cmd: &str) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let mut tries = 0;
    let out = loop {
        match sh(cmd) {
            Ok(out) => break out,
            Err(e) if tries < 5 && e.to_string().contains("temporarily unavailable") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    };
    serde_json::from_str(&out).with_context(|| format!("`{cmd}` printed no JSON: {out}"))
}
