//! Fake agents: tonic servers over the same mTLS, no kernel, in a child process.

use super::*;

/// The address of fake agent `i`: 127.1.0.2, 127.1.0.3, ... 250 per /24 (loopback answers on
/// all of 127/8), so 5,000 "nodes" are 5,000 addresses with the same port, as on a fleet.
pub(crate) fn fake_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1 + (i / 62_500) as u8, ((i / 250) % 250) as u8, (i % 250 + 2) as u8)
}

pub(crate) fn fake_node(i: usize) -> String {
    format!("node-{i:05}")
}

/// What every fake agent of the child process was asked, for the at-rest traffic figures.
#[derive(Default, Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct AgentStats {
    pub(crate) applies: u64,
    pub(crate) removes: u64,
    pub(crate) lists_full: u64,
    pub(crate) lists_unchanged: u64,
    /// Encoded bytes of every List answer.
    pub(crate) list_bytes: u64,
    pub(crate) watches_open: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) applies: AtomicU64,
    pub(crate) removes: AtomicU64,
    pub(crate) lists_full: AtomicU64,
    pub(crate) lists_unchanged: AtomicU64,
    pub(crate) list_bytes: AtomicU64,
    pub(crate) watches_open: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> AgentStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AgentStats {
            applies: get(&self.applies),
            removes: get(&self.removes),
            lists_full: get(&self.lists_full),
            lists_unchanged: get(&self.lists_unchanged),
            list_bytes: get(&self.list_bytes),
            watches_open: get(&self.watches_open),
        }
    }
}

/// One node's agent without a kernel: what it runs is (owner uid -> name, revision), all
/// healthy, kept with the node's digest as the real agent computes it.
pub(crate) struct FakeAgent {
    pub(crate) node: String,
    pub(crate) state: Mutex<FakeState>,
    pub(crate) next_id: AtomicU32,
    pub(crate) counters: Arc<Counters>,
}

#[derive(Default)]
pub(crate) struct FakeState {
    pub(crate) owners: HashMap<String, (String, String)>,
    pub(crate) digest: proto::NodeDigest,
}

impl FakeAgent {
    pub(crate) fn owner_state(&self, uid: &str, name: &str, revision: &str) -> v1::OwnerState {
        let id = self.next_id.fetch_add(2, Ordering::Relaxed);
        v1::OwnerState {
            maps: vec![v1::PinnedMap {
                name: "packet_count".into(),
                pin_path: format!("/sys/fs/bpf/bpfleet/{uid}/maps/packet_count"),
            }],
            owner: Some(v1::Owner { uid: uid.into(), name: name.into() }),
            revision: revision.into(),
            health: v1::Health::Healthy as i32,
            attached: vec![v1::AttachedProgram {
                name: "count_packets".into(),
                r#type: "XDP".into(),
                program_id: id,
                link_ids: vec![id + 1],
            }],
            ..Default::default()
        }
    }
}

pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

/// Counts an open Watch stream until it is dropped.
pub(crate) struct OpenWatch(Arc<Counters>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.watches_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn probe(&self, _req: GrpcRequest<v1::ProbeRequest>) -> Result<GrpcResponse<v1::ProbeResponse>, Status> {
        Err(Status::unimplemented("this fake agent has no health gates"))
    }

    async fn read_maps(
        &self,
        _req: GrpcRequest<v1::ReadMapsRequest>,
    ) -> Result<GrpcResponse<v1::ReadMapsResponse>, Status> {
        Err(Status::unimplemented("this fake agent has no maps"))
    }

    async fn apply(&self, req: GrpcRequest<v1::ApplyRequest>) -> Result<GrpcResponse<v1::ApplyResponse>, Status> {
        self.counters.applies.fetch_add(1, Ordering::Relaxed);
        let req = req.into_inner();
        let owner = req.owner.ok_or_else(|| Status::invalid_argument("owner is required"))?;
        let healthy = crds::Health::Healthy;
        let changed = {
            let mut st = self.state.lock().unwrap();
            let FakeState { owners, digest } = &mut *st;
            let previous = owners.insert(owner.uid.clone(), (owner.name.clone(), req.revision.clone()));
            if let Some((name, revision)) = &previous {
                digest.remove(&owner.uid, name, revision, healthy);
            }
            digest.add(&owner.uid, &owner.name, &req.revision, healthy);
            previous.is_none_or(|(_, r)| r != req.revision)
        };
        let state = self.owner_state(&owner.uid, &owner.name, &req.revision);
        Ok(GrpcResponse::new(v1::ApplyResponse { state: Some(state), changed, node_name: self.node.clone() }))
    }

    async fn apply_batch(
        &self,
        req: GrpcRequest<v1::ApplyBatchRequest>,
    ) -> Result<GrpcResponse<v1::ApplyBatchResponse>, Status> {
        use v1::apply_result::Result as Item;
        let mut results = Vec::new();
        for apply in req.into_inner().applies {
            let item = match self.apply(GrpcRequest::new(apply)).await {
                Ok(resp) => Item::Applied(resp.into_inner()),
                Err(s) => Item::Failed(v1::ApplyFailure {
                    code: s.code() as i32,
                    message: s.message().to_owned(),
                    ..Default::default()
                }),
            };
            results.push(v1::ApplyResult { result: Some(item) });
        }
        Ok(GrpcResponse::new(v1::ApplyBatchResponse { results, node_name: self.node.clone() }))
    }

    async fn remove(&self, req: GrpcRequest<v1::RemoveRequest>) -> Result<GrpcResponse<v1::RemoveResponse>, Status> {
        self.counters.removes.fetch_add(1, Ordering::Relaxed);
        let uid = req.into_inner().owner.map(|o| o.uid).unwrap_or_default();
        let mut st = self.state.lock().unwrap();
        let removed = st.owners.remove(&uid);
        if let Some((name, revision)) = &removed {
            st.digest.remove(&uid, name, revision, crds::Health::Healthy);
        }
        Ok(GrpcResponse::new(v1::RemoveResponse { removed: removed.is_some(), node_name: self.node.clone() }))
    }

    async fn list(&self, req: GrpcRequest<v1::ListRequest>) -> Result<GrpcResponse<v1::ListResponse>, Status> {
        use prost::Message;
        let req = req.into_inner();
        let (digest, owners) = {
            let st = self.state.lock().unwrap();
            let digest = st.digest.value();
            let unchanged = req.known_digest != 0 && req.known_digest == digest;
            let owners: Vec<(String, String, String)> = if unchanged {
                Vec::new()
            } else {
                // As a real agent answers: by uid (the operator refuses owners out of order).
                let mut all: Vec<_> = st.owners.iter().map(|(u, (n, r))| (u.clone(), n.clone(), r.clone())).collect();
                all.sort();
                all
            };
            (digest, (!unchanged).then_some(owners))
        };
        let unchanged = owners.is_none();
        let answer = v1::ListResponse {
            node_name: self.node.clone(),
            agent_version: "fake".into(),
            kernel_release: "fake".into(),
            owners: owners.unwrap_or_default().iter().map(|(u, n, r)| self.owner_state(u, n, r)).collect(),
            digest,
            unchanged,
            ..Default::default()
        };
        let counter = if unchanged { &self.counters.lists_unchanged } else { &self.counters.lists_full };
        counter.fetch_add(1, Ordering::Relaxed);
        self.counters.list_bytes.fetch_add(answer.encoded_len() as u64, Ordering::Relaxed);
        Ok(GrpcResponse::new(answer))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _req: GrpcRequest<v1::WatchRequest>) -> Result<GrpcResponse<WatchStream>, Status> {
        self.counters.watches_open.fetch_add(1, Ordering::Relaxed);
        let open = OpenWatch(self.counters.clone());
        // Open until the operator drops it: nothing ever changes on a fake node.
        let stream = futures::stream::pending::<Result<v1::WatchEvent, Status>>().map(move |e| {
            let _held = &open;
            e
        });
        Ok(GrpcResponse::new(Box::pin(stream)))
    }
}

/// Serves `count` fake agents on fake_ip(0..count):port until stdin closes. Prints "ready",
/// then answers each "stats" line on stdin with the counters as one JSON line.
pub(crate) async fn fake_agents(pki_dir: &Path, port: u16, count: usize) -> anyhow::Result<()> {
    agent::kernel::raise_nofile();
    let files = TlsFiles {
        cert: pki_dir.join("server.pem"),
        key: pki_dir.join("server.key"),
        client_ca: pki_dir.join("ca.pem"),
    };
    let counters = Arc::new(Counters::default());
    for i in 0..count {
        // One server configuration per agent, as on a fleet: each has its own TLS ticket
        // key, so a session resumes only with the agent that made it.
        let tls = Arc::new(ServerTls::load(files.clone(), CLIENT_NAME)?);
        let addr = SocketAddr::from((fake_ip(i), port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
        let service = FakeAgent {
            node: fake_node(i),
            state: Default::default(),
            next_id: AtomicU32::new(1),
            counters: counters.clone(),
        };
        let incoming = agent::tls::incoming(listener, tls);
        tokio::spawn(async move {
            let server = tonic::transport::Server::builder().add_service(
                AgentServer::new(service).max_decoding_message_size(operator::dispatch::MAX_MESSAGE_BYTES),
            );
            if let Err(e) = server.serve_with_incoming(incoming).await {
                eprintln!("fake agent {addr}: {e}");
            }
        });
    }
    println!("ready");
    std::io::stdout().flush()?;
    // Until the parent closes our stdin (or dies).
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line.trim() == "stats" {
                let json = serde_json::to_string(&counters.snapshot()).unwrap_or_default();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{json}");
                let _ = out.flush();
            }
        }
    })
    .await?;
    Ok(())
}
