//! `bpfleet-operator` as a local process against the real API server, dialling the
//! process-mode nodes at their namespace addresses with the test PKI's client identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::tls::testpki::TestPki;
use anyhow::{Context as _, bail};

use crate::util;

pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics: SocketAddr,
}

/// How the operator is started.
pub struct OperatorConfig<'a> {
    pub bin: &'a Path,
    pub pki: &'a TestPki,
    /// Namespace of its Lease and Events.
    pub namespace: &'a str,
    pub agent_port: u16,
    /// Seconds between agent resyncs (List of every node).
    pub resync_seconds: u64,
    /// Identity in the Lease.
    pub identity: &'a str,
    pub log: PathBuf,
}

impl Operator {
    /// Start it and wait until it holds the leader Lease (its `leader` gauge is 1).
    pub fn start(cfg: OperatorConfig<'_>) -> anyhow::Result<Self> {
        let metrics: SocketAddr = format!("127.0.0.1:{}", util::free_local_port()).parse()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&cfg.log)?;
        let mut cmd = Command::new(cfg.bin);
        cmd.arg("--agent-port")
            .arg(cfg.agent_port.to_string())
            .arg("--tls-cert")
            .arg(&cfg.pki.client_cert)
            .arg("--tls-key")
            .arg(&cfg.pki.client_key)
            .arg("--tls-ca")
            .arg(&cfg.pki.ca_cert)
            .arg("--namespace")
            .arg(cfg.namespace)
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--resync-seconds")
            .arg(cfg.resync_seconds.to_string())
            .arg("--call-timeout-seconds")
            .arg("15")
            .arg("--identity")
            .arg(cfg.identity)
            .env("RUST_LOG", "info,operator=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        util::die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start {}", cfg.bin.display()))?;
        let mut op = Operator { child: Some(child), log: cfg.log, metrics };
        op.wait_leader(Duration::from_secs(60))?;
        Ok(op)
    }

    fn wait_leader(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("bpfleet-operator exited ({status}):\n{}", util::tail(&self.log, 40));
            }
            if self.scrape().is_ok_and(|m| m.lines().any(|l| l.trim() == "bpfleet_operator_leader 1")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("bpfleet-operator did not become leader within {timeout:?}:\n{}", util::tail(&self.log, 40));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The `/metrics` text.
    pub fn scrape(&self) -> anyhow::Result<String> {
        util::http_get(self.metrics, "/metrics")
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stop it: SIGINT (its shutdown signal), SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(c.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        util::tail(&self.log, lines)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}
