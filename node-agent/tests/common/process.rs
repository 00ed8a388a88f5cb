//! Agent processes for the process-level tests (gRPC, recovery): a private bpffs root,
//! state directory and PKI per test, the agent binary spawned with mTLS, and requests
//! built as the operator builds them.

use super::agent_bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::testing::args::AgentArgs;
use agent::tls::testpki::TestPki;
use crds::BpfProgramSpec;
use crds::revision::{BytecodeIdentity, Revision};
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::{free_port, object_bytes, setup, unique};

/// A bpffs root, a state directory and a PKI for one test; removed on drop.
pub struct Dirs {
    pub root: PathBuf,
    pub tmp: tempfile::TempDir,
    pub pki: TestPki,
    prefix: String,
}

impl Dirs {
    /// `prefix` names the bpffs root and the agent's node (`<prefix>-node`).
    pub fn new(prefix: &str) -> Self {
        setup();
        let root = PathBuf::from(format!("/sys/fs/bpf/bpfleet-{prefix}-{}", unique("p")));
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki_dir = tmp.path().join("pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        let pki = TestPki::generate(&pki_dir);
        Self { root, tmp, pki, prefix: prefix.to_string() }
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn client_tls(&self) -> ClientTlsConfig {
        self.pki.client_config()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One agent process; killed (SIGKILL) on drop.
pub struct AgentProc {
    pub child: Child,
    pub port: u16,
    log: PathBuf,
}

impl AgentProc {
    pub fn spawn(dirs: &Dirs, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_with(dirs, |args| args.args(extra), env)
    }

    /// `--node-name`, `--bpffs-root`, `--state-dir` and `--listen` of `dirs` and a free
    /// port, then what `more` adds.
    fn spawn_with(dirs: &Dirs, more: impl FnOnce(AgentArgs) -> AgentArgs, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = dirs.tmp.path().join(format!("agent-{}.log", unique("l")));
        let args = AgentArgs::new(&format!("{}-node", dirs.prefix), &dirs.root, &dirs.state())
            .listen(format!("127.0.0.1:{port}"));
        let mut cmd = Command::new(agent_bin());
        cmd.args(more(args).build())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("BPFLEET_FAULT")
            .env_remove("BPFLEET_PAUSE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn bpfleet-agent");
        Self { child, port, log }
    }

    /// With the test PKI's server certificate, requiring the operator's identity.
    pub fn spawn_tls(dirs: &Dirs, env: &[(&str, &str)]) -> Self {
        Self::spawn_tls_with(dirs, &[], env)
    }

    /// `spawn_tls` with more flags (e.g. `--tc-backend clsact`).
    pub fn spawn_tls_with(dirs: &Dirs, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_with(dirs, |args| args.pki_server_tls(&dirs.pki).operator_client_name().args(extra), env)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Connect with the operator's identity once the health service answers SERVING.
    pub async fn ready_client(&mut self, tls: ClientTlsConfig) -> AgentClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited early ({status}):\n{}", self.log());
            }
            if let Ok(ch) = connect(&self.url(), tls.clone()).await {
                let check = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await;
                if check.is_ok_and(|r| r.into_inner().status == 1) {
                    return AgentClient::new(ch);
                }
            }
            assert!(Instant::now() < deadline, "agent never served health:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`, and reap it.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the process to die on its own (a fault point); returns its status.
    pub fn wait_exit(mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "agent did not die at its fault point:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub async fn connect(url: &str, tls: ClientTlsConfig) -> Result<Channel, Box<dyn std::error::Error>> {
    let ch = Channel::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(ch)
}

/// An ApplyRequest as the operator builds it: revision from the spec and the bytes.
pub fn apply_request(uid: &str, programs_yaml: &str, object_name: &str) -> v1::ApplyRequest {
    let bytes = object_bytes(object_name);
    let spec: BpfProgramSpec =
        serde_yaml::from_str(&format!("bytecode: {{path: /unused.o}}\nprograms:\n{programs_yaml}")).unwrap();
    let revision = Revision::compute(&spec, BytecodeIdentity::Bytes(&bytes));
    v1::ApplyRequest {
        owner: Some(v1::Owner { uid: uid.into(), name: format!("{uid}-name") }),
        revision: revision.as_str().into(),
        bytecode: Some(v1::apply_request::Bytecode::Elf(bytes.into())),
        programs: spec.programs.iter().map(proto::program_to_wire).collect(),
        global_data: Default::default(),
        ..Default::default()
    }
}
