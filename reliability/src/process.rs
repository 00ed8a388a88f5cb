//! One `bpfleet-agent-test` process (the agent with its fault hooks armed), spoken to over
//! mTLS gRPC with the operator's test identity, and killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::testing::args::AgentArgs;
use agent::tls::testpki::TestPki;
use anyhow::{Context, bail};
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::kernel::Dirs;

/// The agent binary: `--agent-bin`, `BPFLEET_AGENT_BIN`, or `bpfleet-agent-test` next to
/// this program (cargo's target directory). The trials need its fault hooks: the shipped
/// `bpfleet-agent` ignores `BPFLEET_FAULT` and `BPFLEET_PAUSE`.
pub fn default_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BPFLEET_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level down, in deps/.
    let dir = if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir };
    dir.join(agent::testing::TEST_AGENT_BIN)
}

pub struct AgentProc {
    pub child: Child,
    pub log: PathBuf,
    /// Where it serves gRPC (mTLS).
    pub addr: std::net::SocketAddr,
    url: String,
    pub started: Instant,
}

/// What the agent is started with.
pub struct Launch<'a> {
    pub bin: &'a Path,
    pub pki: &'a TestPki,
    pub dirs: &'a Dirs,
    pub tc_backend: &'a str,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl AgentProc {
    pub fn spawn(l: &Launch) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let args = AgentArgs::new("reliability", &l.dirs.root, &l.dirs.state)
            .listen(format!("127.0.0.1:{port}"))
            .pki_server_tls(l.pki)
            .operator_client_name()
            .args(["--tc-backend", l.tc_backend]);
        let mut cmd = Command::new(l.bin);
        cmd.args(args.build())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("BPFLEET_FAULT")
            .env_remove("BPFLEET_PAUSE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&l.log)?);
        for (k, v) in &l.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {}", l.bin.display()))?;
        Ok(Self {
            child,
            log: l.log.clone(),
            addr: ([127, 0, 0, 1], port).into(),
            url: format!("https://127.0.0.1:{port}"),
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// A client once the health service answers SERVING (recovery is over by then).
    pub async fn ready(&mut self, tls: &ClientTlsConfig) -> anyhow::Result<AgentClient<Channel>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("agent exited early ({status}):\n{}", self.log_text());
            }
            let endpoint = Endpoint::from_shared(self.url.clone())?
                .tls_config(tls.clone())?
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(30));
            if let Ok(ch) = endpoint.connect().await {
                let check = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await;
                if check.is_ok_and(|r| r.into_inner().status == 1) {
                    return Ok(AgentClient::new(ch).max_encoding_message_size(crds::limits::MAX_APPLY_MESSAGE_BYTES));
                }
            }
            if Instant::now() > deadline {
                bail!("agent never served health:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn remove_request(uid: &str) -> v1::RemoveRequest {
    v1::RemoveRequest {
        owner: Some(v1::Owner { uid: uid.into(), name: format!("{uid}-name") }),
        epoch: 0,
        node_name: String::new(),
    }
}

/// Every owner the agent reports: (uid, revision, healthy).
pub async fn list(client: &mut AgentClient<Channel>) -> anyhow::Result<Vec<(String, String, bool)>> {
    let l = client.list(v1::ListRequest::default()).await?.into_inner();
    Ok(l.owners
        .iter()
        .map(|o| {
            (
                o.owner.as_ref().map(|w| w.uid.clone()).unwrap_or_default(),
                o.revision.clone(),
                o.health == v1::Health::Healthy as i32,
            )
        })
        .collect())
}
