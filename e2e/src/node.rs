//! A process-mode node: a network namespace whose `eth0` is a veth to the host, with an
//! address there, and a `bpfleet-agent` running inside it on its own bpffs root and
//! state directory. Needs no cluster: the Node object is the cluster side's business
//! ([`crate::env::Env::add_node`]).

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use agent::testing::args::AgentArgs;
use agent::tls::testpki::TestPki;
use anyhow::{Context as _, bail};
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::kernel::{self, XdpAttachment};
use crate::util::{self, block_on, sh, sh_quiet};

/// The port every agent listens on, each at its own namespace's address.
pub const AGENT_PORT: u16 = 50051;
/// Port of every process-mode agent's `/metrics` (on its namespace address).
pub const METRICS_PORT: u16 = 9464;

/// First two octets of the node subnets (`<net>.<n>.0/24`); `BPFLEET_E2E_NET` overrides.
pub fn subnet_prefix() -> String {
    std::env::var("BPFLEET_E2E_NET").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "10.250".into())
}

/// Subnet numbers handed out in this process.
static NEXT_SUBNET: Mutex<u8> = Mutex::new(1);

/// A free `<net>.<n>.0/24`: not handed out before and not on any host interface.
fn allocate_subnet(prefix: &str) -> anyhow::Result<u8> {
    let mut next = NEXT_SUBNET.lock().unwrap_or_else(|p| p.into_inner());
    let in_use = sh("ip -o -4 addr show")?;
    while *next < 255 {
        let n = *next;
        *next += 1;
        if !in_use.contains(&format!(" {prefix}.{n}.")) {
            return Ok(n);
        }
    }
    bail!("no free {prefix}.N.0/24 subnet left for a process-mode node")
}

/// The agent's TLS files (server side of the test PKI).
#[derive(Clone, Debug)]
pub struct AgentTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl AgentTls {
    pub fn from_pki(pki: &TestPki) -> Self {
        Self { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca: pki.ca_cert.clone() }
    }
}

pub struct ProcessNode {
    /// Node name, also the agent's `--node-name`.
    pub name: String,
    /// Network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// Host end of the veth; the namespace end is `eth0`.
    pub host_if: String,
    /// Host address on `host_if` (`<net>.<n>.1`).
    pub host_ip: Ipv4Addr,
    /// The node's address: `eth0` in the namespace (`<net>.<n>.2`), its Node InternalIP.
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The agent's `--bpffs-root`.
    pub bpffs_root: PathBuf,
    /// The agent's `--state-dir` (kept across restarts).
    pub state_dir: PathBuf,
    /// The agent's stderr, appended to across restarts.
    pub log: PathBuf,
    tls: AgentTls,
    client_tls: ClientTlsConfig,
    agent_bin: PathBuf,
    agent: Option<Child>,
    /// The agent's `BPFLEET_PAUSE` point (see [`crate::gate`]).
    pause_point: &'static str,
}

impl ProcessNode {
    /// Create the namespace and its veth, then start the agent and wait until it answers
    /// `List` over mTLS from the host. `workdir` holds its state directory and log.
    pub fn start(
        name: &str,
        agent_bin: &Path,
        tls: AgentTls,
        client_tls: ClientTlsConfig,
        workdir: &Path,
    ) -> anyhow::Result<Self> {
        util::host_setup();
        let prefix = subnet_prefix();
        let n = allocate_subnet(&prefix)?;
        let tag = util::random_suffix();
        let host_ip: Ipv4Addr = format!("{prefix}.{n}.1").parse().context("BPFLEET_E2E_NET must be like 10.250")?;
        let ip: Ipv4Addr = format!("{prefix}.{n}.2").parse().context("BPFLEET_E2E_NET must be like 10.250")?;
        let dir = workdir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut node = ProcessNode {
            name: name.to_string(),
            netns: format!("bpfleet-e2e-{}-{n}", &tag[..6]),
            host_if: format!("bfe{}h{n}", &tag[..4]),
            host_ip,
            ip,
            port: AGENT_PORT,
            bpffs_root: PathBuf::from(format!("/sys/fs/bpf/bpfleet-{name}")),
            state_dir: dir.join("state"),
            log: dir.join("agent.log"),
            tls,
            client_tls,
            agent_bin: agent_bin.to_path_buf(),
            agent: None,
            pause_point: "after-attach",
        };
        // From here on, Drop undoes whatever part of this exists.
        sh(&format!(
            "ip netns add {ns} && \
             ip link add {h} type veth peer name eth0 netns {ns} && \
             ip addr add {hip}/24 dev {h} && ip link set {h} up && \
             ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up",
            ns = node.netns,
            h = node.host_if,
            hip = node.host_ip,
            ip = node.ip,
        ))?;
        node.start_agent()?;
        node.wait_agent_ready(Duration::from_secs(30))?;
        Ok(node)
    }

    /// Spawn the agent inside the namespace. `nsenter --net` (not `ip netns exec`, which
    /// remounts /sys and would hide bpffs) and exec: the child is the agent itself.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        if self.agent_running() {
            bail!("the agent of {} is already running", self.name);
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let args = AgentArgs::new(&self.name, &self.bpffs_root, &self.state_dir)
            .listen(format!("{}:{}", self.ip, self.port))
            .server_tls(&self.tls.cert, &self.tls.key, &self.tls.client_ca)
            .operator_client_name()
            .metrics_listen(self.metrics_addr());
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(&self.agent_bin)
            .args(args.build())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("BPFLEET_FAULT")
            // Inert until a test creates the directory (see `gate`).
            .env("BPFLEET_PAUSE", format!("{}:{}", self.pause_point, self.gate_dir().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        util::die_with_parent(&mut cmd);
        let child =
            cmd.spawn().with_context(|| format!("cannot start {} in {}", self.agent_bin.display(), self.netns))?;
        self.agent = Some(child);
        Ok(())
    }

    /// Hold applies at fault point `point` (`after-attach` or `after-commit`) instead of
    /// `after-attach` while the gate directory exists; from the agent's next start on.
    pub fn set_pause_point(&mut self, point: &'static str) {
        self.pause_point = point;
    }

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Where this node's apply gate lives (see [`crate::gate`]).
    pub fn gate_dir(&self) -> PathBuf {
        self.log.with_file_name("gate")
    }

    /// The agent's `/metrics` address (inside its namespace, reachable from the host).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip.into(), METRICS_PORT)
    }

    /// Sum of the agent's metric `name` (any labels) as the agent itself counts it.
    pub fn agent_metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = util::http_get(self.metrics_addr(), "/metrics")?;
        Ok(crate::operator::metric_sum(&text, name).unwrap_or(0.0))
    }

    /// `apply` or `remove` requests (`method`) the agent served successfully.
    pub fn served(&self, method: &str) -> f64 {
        let text = util::http_get(self.metrics_addr(), "/metrics").unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("bpfleet_agent_grpc_requests_total{"))
            .filter(|l| l.contains(&format!("method=\"{method}\"")) && l.contains("outcome=\"ok\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The agent process is alive.
    pub fn agent_running(&mut self) -> bool {
        self.agent.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL the agent (no chance to clean up: pins stay) and reap it.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill the agent if it runs, start it again on the same bpffs root and state
    /// directory, and wait until it answers.
    pub fn restart_agent(&mut self) -> anyhow::Result<v1::ListResponse> {
        self.kill_agent();
        self.start_agent()?;
        self.wait_agent_ready(Duration::from_secs(30))
    }

    /// Wait until the agent answers `List` over mTLS at its namespace address.
    pub fn wait_agent_ready(&mut self, timeout: Duration) -> anyhow::Result<v1::ListResponse> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.agent.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("the agent of {} exited ({status}):\n{}", self.name, util::tail(&self.log, 30));
            }
            match self.list() {
                Ok(l) => return Ok(l),
                Err(e) if std::time::Instant::now() >= deadline => {
                    bail!("the agent of {} never answered: {e:#}\n{}", self.name, util::tail(&self.log, 30))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A client from the host, as the operator connects (client certificate, CA, server name).
    async fn client(url: String, tls: ClientTlsConfig) -> anyhow::Result<AgentClient<Channel>> {
        let ch = Channel::from_shared(url)?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        Ok(AgentClient::new(ch))
    }

    fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    /// `List` from the host.
    pub fn list(&self) -> anyhow::Result<v1::ListResponse> {
        let (url, tls) = (self.url(), self.client_tls.clone());
        block_on(async move { Ok(Self::client(url, tls).await?.list(v1::ListRequest::default()).await?.into_inner()) })
    }

    /// `Apply` from the host (what the operator does; for checks without a cluster).
    pub fn apply(&self, req: v1::ApplyRequest) -> anyhow::Result<v1::ApplyResponse> {
        let (url, tls) = (self.url(), self.client_tls.clone());
        block_on(async move { Ok(Self::client(url, tls).await?.apply(req).await?.into_inner()) })
    }

    /// `Remove` from the host.
    pub fn remove(&self, owner: v1::Owner) -> anyhow::Result<bool> {
        let (url, tls) = (self.url(), self.client_tls.clone());
        let req = v1::RemoveRequest { owner: Some(owner), epoch: 0, node_name: String::new() };
        block_on(async move { Ok(Self::client(url, tls).await?.remove(req).await?.into_inner().removed) })
    }

    /// Add an interface `ifname` (up) inside the namespace: one end of a veth pair whose
    /// other end (`<ifname>p`) stays in the namespace too (veth is everywhere; the
    /// dummy driver is not).
    pub fn add_interface(&self, ifname: &str) -> anyhow::Result<()> {
        sh(&format!(
            "ip -n {ns} link add {ifname} type veth peer name {ifname}p && \
             ip -n {ns} link set {ifname}p up && ip -n {ns} link set {ifname} up",
            ns = self.netns
        ))
        .map(|_| ())
    }

    /// XDP attachments on `ifname` in the namespace, per bpftool.
    pub fn xdp(&self, ifname: &str) -> Vec<XdpAttachment> {
        kernel::xdp_attachments(&self.netns, ifname).unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }

    /// `ip -d link show` of `ifname` mentions XDP.
    pub fn link_shows_xdp(&self, ifname: &str) -> bool {
        kernel::link_shows_xdp(&self.netns, ifname).unwrap_or_else(|e| panic!("{}: {e:#}", self.name))
    }

    /// Ping the node's address from the host: each echo request enters the namespace
    /// through `eth0`, where an XDP program sees it.
    pub fn ping(&self, count: u32) {
        sh(&format!("ping -c {count} -i 0.02 -W 1 -q {} >/dev/null", self.ip))
            .unwrap_or_else(|e| panic!("ping {}: {e:#}", self.name));
    }

    /// Everything under the agent's bpffs root (relative paths).
    pub fn pins(&self) -> Vec<String> {
        kernel::pins_under(&self.bpffs_root)
    }

    /// The bpffs directory of one owner on this node.
    pub fn owner_dir(&self, owner_uid: &str) -> PathBuf {
        self.bpffs_root.join(owner_uid)
    }

    /// Revision directories of one owner on this node.
    pub fn revision_dirs(&self, owner_uid: &str) -> Vec<String> {
        kernel::revision_dirs(&self.bpffs_root, owner_uid)
    }

    /// Last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        util::tail(&self.log, lines)
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.kill_agent();
        // Removing the pins detaches the links and frees the programs.
        let _ = std::fs::remove_dir_all(&self.bpffs_root);
        sh_quiet(&format!("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", self.host_if, self.netns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process-mode node without any cluster: namespace, veth, agent inside it on
    /// its own bpffs root, reachable over mTLS from the host at the namespace address,
    /// killed and restarted, and nothing left behind.
    #[test]
    fn process_node_serves_list_over_mtls_from_the_host() {
        if !util::is_root() {
            eprintln!("SKIP e2e process-node check: needs root (network namespaces, bpffs)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("bpfleet-e2e-selftest-{}", util::random_suffix()));
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        let pki = TestPki::generate(&dir.join("pki"));
        let bins = util::binaries();
        let name = format!("e2e-selftest-{}", util::random_suffix());
        let (netns, host_if, root) = {
            let mut node =
                ProcessNode::start(&name, &bins.agent, AgentTls::from_pki(&pki), pki.client_config(), &dir).unwrap();
            let list = node.list().unwrap();
            assert_eq!(list.node_name, name);
            assert!(list.owners.is_empty(), "{list:?}");
            assert!(node.bpffs_root.is_dir(), "the agent creates its bpffs root");
            assert!(node.xdp("eth0").is_empty());
            assert!(!node.link_shows_xdp("eth0"));
            node.ping(3);
            node.kill_agent();
            assert!(node.list().is_err(), "a killed agent must not answer");
            let again = node.restart_agent().unwrap();
            assert_eq!(again.node_name, name);
            (node.netns.clone(), node.host_if.clone(), node.bpffs_root.clone())
        };
        assert!(!root.exists(), "bpffs root left behind");
        assert!(!sh("ip netns list").unwrap().contains(&netns), "namespace left behind");
        assert!(!sh("ip -o link show").unwrap().contains(&host_if), "veth left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
