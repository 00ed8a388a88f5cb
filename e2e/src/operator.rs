//! `bpfleet-operator` as a local process against the real API server, dialling the
//! process-mode nodes at their namespace addresses with the test PKI's client identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::tls::testpki::TestPki;
use anyhow::{Context as _, bail};

use crate::util;

/// `--agent-unreachable-grace-seconds` of the operators the scenarios start.
pub const UNREACHABLE_GRACE_SECONDS: u64 = 8;

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
    pub identity: String,
    pub log: PathBuf,
    /// Another kubeconfig than the suite's (e.g. through a [`crate::proxy::Proxy`]).
    pub kubeconfig: Option<PathBuf>,
    /// More command-line arguments (e.g. `--insecure-registry`).
    pub extra_args: Vec<String>,
}

impl Operator {
    /// Start it and wait until it holds the leader Lease (its `leader` gauge is 1).
    pub fn start(cfg: OperatorConfig<'_>) -> anyhow::Result<Self> {
        let mut op = Self::spawn(cfg)?;
        op.wait_leader(Duration::from_secs(60))?;
        Ok(op)
    }

    /// Start it as a standby: wait only until it serves its metrics (leader or not).
    pub fn start_standby(cfg: OperatorConfig<'_>) -> anyhow::Result<Self> {
        let mut op = Self::spawn(cfg)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while op.scrape().is_err() {
            if !op.running() {
                bail!("bpfleet-operator exited:\n{}", util::tail(&op.log, 40));
            }
            if Instant::now() >= deadline {
                bail!("bpfleet-operator serves no metrics after 30s:\n{}", util::tail(&op.log, 40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(op)
    }

    fn spawn(cfg: OperatorConfig<'_>) -> anyhow::Result<Self> {
        let metrics: SocketAddr = format!("127.0.0.1:{}", agent::testing::free_port()).parse()?;
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
            // Short, so scenarios see an agent that stops answering wait, then fail.
            .arg("--agent-unreachable-grace-seconds")
            .arg(UNREACHABLE_GRACE_SECONDS.to_string())
            .arg("--identity")
            .arg(&cfg.identity)
            .args(&cfg.extra_args)
            .env("RUST_LOG", "info,operator=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(kc) = &cfg.kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        util::die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start {}", cfg.bin.display()))?;
        Ok(Operator { child: Some(child), log: cfg.log, metrics })
    }

    /// Wait until it holds the leader Lease.
    pub fn wait_leader(&mut self, timeout: Duration) -> anyhow::Result<()> {
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

    /// The sum of every sample of metric `name` (any labels), or None when absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_sum(&self.scrape().ok()?, name)
    }

    /// Its `leader` gauge is 1.
    pub fn is_leader(&self) -> bool {
        self.metric("bpfleet_operator_leader") == Some(1.0)
    }

    /// SIGKILL: no chance to release the Lease or finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGTERM (what Kubernetes sends a pod) without waiting.
    pub fn sigterm(&mut self) {
        if let Some(c) = self.child.as_ref()
            && let Ok(pid) = i32::try_from(c.id())
        {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Wait until the process has exited; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let Some(c) = self.child.as_mut() else { bail!("not running") };
        loop {
            if let Some(status) = c.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// The sum of every sample of `name` in Prometheus text (`name` or `name{...}`).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_add_every_labelled_sample_and_nothing_else() {
        let text = "# HELP x y\nbpfleet_operator_leader 1\nbpfleet_operator_leader_epoch 7\n\
                    a_total{node=\"n1\"} 2\na_total{node=\"n2\"} 3\n";
        assert_eq!(metric_sum(text, "bpfleet_operator_leader"), Some(1.0));
        assert_eq!(metric_sum(text, "bpfleet_operator_leader_epoch"), Some(7.0));
        assert_eq!(metric_sum(text, "a_total"), Some(5.0));
        assert_eq!(metric_sum(text, "missing"), None);
    }
}
