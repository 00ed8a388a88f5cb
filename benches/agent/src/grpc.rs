//! The agent as the operator meets it: the real `bpfleet-agent` binary, over mTLS gRPC,
//! one Apply at a time on a kept connection, timed here (from the call to its answer),
//! after the agent and the kernel have been idle for a while ("idle") or right after the
//! previous run settled ("busy").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::testing::args::AgentArgs;
use agent::tls::testpki::TestPki;
use anyhow::{Context, bail};
use crds::revision::{BytecodeIdentity, Revision};
use proto::v1;
use proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

pub struct GrpcAgent {
    child: Child,
    rt: tokio::runtime::Runtime,
    client: AgentClient<Channel>,
    pub log: PathBuf,
    url: String,
    tls: tonic::transport::ClientTlsConfig,
}

impl GrpcAgent {
    /// Start `agent_bin` on 127.0.0.1 (in the bench's network namespace) with a test PKI
    /// and connect to it.
    pub fn spawn(
        agent_bin: &Path,
        extra_args: &[&str],
        bpffs_root: PathBuf,
        state_dir: PathBuf,
        work: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work)?;
        let pki = TestPki::generate(work);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = work.join("agent.log");
        let args = AgentArgs::new("bench", &bpffs_root, &state_dir)
            .listen(format!("127.0.0.1:{port}"))
            .pki_server_tls(&pki)
            .args(extra_args);
        let child = Command::new(agent_bin)
            .args(args.build())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", agent_bin.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let tls = pki.client_config();
        let url = format!("https://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = loop {
            let endpoint = Endpoint::from_shared(url.clone())?.tls_config(tls.clone())?.tcp_nodelay(true);
            if let Ok(ch) = rt.block_on(endpoint.connect()) {
                let mut c = AgentClient::new(ch).max_encoding_message_size(crds::limits::MAX_APPLY_MESSAGE_BYTES);
                if rt.block_on(c.list(v1::ListRequest::default())).is_ok() {
                    break c;
                }
            }
            if Instant::now() > deadline {
                bail!("bpfleet-agent never answered: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Self { child, rt, client, log, url, tls })
    }

    /// One Apply, timed from the call to the answer; the program ids it loaded.
    pub fn apply(&mut self, req: v1::ApplyRequest) -> anyhow::Result<(Duration, Vec<u32>)> {
        let start = Instant::now();
        let resp = self.rt.block_on(self.client.apply(req)).map_err(|s| anyhow::anyhow!("Apply: {}", s.message()))?;
        let took = start.elapsed();
        let state = resp.into_inner().state.context("no state")?;
        Ok((took, state.attached.iter().map(|a| a.program_id).collect()))
    }

    /// One Apply on a new connection (TCP and TLS handshake included in the time), as a
    /// one-shot client (grpcurl, a script) makes it.
    pub fn apply_fresh(&mut self, req: v1::ApplyRequest) -> anyhow::Result<(Duration, Vec<u32>)> {
        let start = Instant::now();
        let endpoint = Endpoint::from_shared(self.url.clone())?.tls_config(self.tls.clone())?.tcp_nodelay(true);
        let ch = self.rt.block_on(endpoint.connect())?;
        let mut c = AgentClient::new(ch).max_encoding_message_size(crds::limits::MAX_APPLY_MESSAGE_BYTES);
        let resp = self.rt.block_on(c.apply(req)).map_err(|s| anyhow::anyhow!("Apply: {}", s.message()))?;
        let took = start.elapsed();
        let state = resp.into_inner().state.context("no state")?;
        Ok((took, state.attached.iter().map(|a| a.program_id).collect()))
    }

    pub fn remove(&mut self, uid: &str) -> anyhow::Result<()> {
        let req = v1::RemoveRequest {
            owner: Some(v1::Owner { uid: uid.into(), name: uid.into() }),
            epoch: 0,
            node_name: String::new(),
        };
        self.rt.block_on(self.client.remove(req)).map_err(|s| anyhow::anyhow!("Remove: {}", s.message()))?;
        Ok(())
    }
}

impl Drop for GrpcAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ApplyRequest the operator would send for a manifest (bytes inline, as from a
/// ConfigMap).
pub fn request(yaml: &str, uid: &str) -> anyhow::Result<v1::ApplyRequest> {
    let obj: crds::BpfProgram = serde_yaml::from_str(yaml)?;
    let path = obj.spec.bytecode.path.clone().context("bench manifests use path bytecode")?;
    let bytes = std::fs::read(&path).with_context(|| path.clone())?;
    let revision = Revision::compute(&obj.spec, BytecodeIdentity::Bytes(&bytes));
    let valid = crds::validate::validate_spec(&obj.spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(v1::ApplyRequest {
        owner: Some(v1::Owner { uid: uid.into(), name: uid.into() }),
        revision: revision.to_string(),
        bytecode: Some(v1::apply_request::Bytecode::Elf(bytes.into())),
        programs: obj.spec.programs.iter().map(proto::program_to_wire).collect(),
        global_data: valid.globals.into_iter().map(|(k, v)| (k.as_str().to_string(), v.into())).collect(),
        ..Default::default()
    })
}
