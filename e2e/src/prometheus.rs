//! A real Prometheus (Debian's `prometheus` package) scraping process-mode agents, for
//! the rollout's Prometheus health gate. Listens on loopback only, keeps its data in the
//! run's work directory, and stops with the value.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{http_get, wait_for};

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
}

/// The job name the agents are scraped under (`up{job="bpfleet-agents"}`).
pub const JOB: &str = "bpfleet-agents";

impl Prometheus {
    /// Whether the `prometheus` binary is installed (`apt-get install prometheus`).
    pub fn installed() -> bool {
        Command::new("prometheus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    /// Start one on `port` (of loopback) scraping `targets` every second; returns once it
    /// has scraped every target.
    pub fn start_on(workdir: &Path, targets: &[SocketAddr], port: u16) -> Prometheus {
        let dir = workdir.join("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("prometheus directory");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {JOB}\n    \
             static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log);
        crate::util::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start prometheus");
        let p = Prometheus { child, addr };
        wait_for(Duration::from_secs(60), "prometheus scrapes every agent", || {
            let body = http_get(addr, &format!("/api/v1/query?query=count(up%7Bjob%3D%22{JOB}%22%7D%3D%3D1)"))
                .map_err(|e| format!("{e:#}"))?;
            let want = format!("\"{}\"]", targets.len());
            if body.contains(&want) { Ok(()) } else { Err(body) }
        });
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
