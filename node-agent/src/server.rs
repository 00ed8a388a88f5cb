//! The gRPC service `bpfleet.agent.v1.Agent` over mTLS, plus `grpc.health.v1`. The agent's
//! only edge to the wire: requests become `ApplyInput`s and `OwnerUid`s here, errors become
//! `tonic::Status`es here, and the core never sees a protobuf type.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crds::names::OwnerUid;
use crds::revision::Revision;
use crds::validate::{validate_global_bytes, validate_programs};
use futures::Stream;
use proto::v1::agent_server::{Agent, AgentServer};
use proto::v1::{self, watch_event};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::error::{AgentError, Reason};
use crate::fence::EpochFence;
use crate::manager::{ApplyInput, Change, ChangeKind, Manager};
use crate::maps::dump;
use crate::pods::{PodInput, check_pods};
use crate::probe::{self, Reading};
use crate::request::{check_digest, checked_map_policies, invalid, read_bytecode_file};
use crate::stats::RunCounting;
use crate::tls::{self, ServerTls};

pub struct AgentService {
    manager: Arc<Manager>,
    fence: EpochFence,
    /// The agent's one switch of kernel run counting (Probe's stats leases).
    counting: Arc<RunCounting>,
}

impl AgentService {
    /// The service, fenced by the epoch recorded in the manager's state directory.
    pub fn new(manager: Arc<Manager>, counting: Arc<RunCounting>) -> Self {
        let fence = EpochFence::open(&manager.config().state_dir);
        Self { manager, fence, counting }
    }
}

impl AgentService {
    fn node_name(&self) -> &str {
        &self.manager.config().node_name
    }

    /// Refuses a request for another node: the operator dialled the address of node
    /// `wanted` and reached this agent (a re-pointed InternalIP, or addresses reused).
    /// An empty name is not checked (tools and operators older than the field).
    fn check_node(&self, wanted: &str, what: &str) -> Result<(), AgentError> {
        let mine = self.node_name();
        if wanted.is_empty() || wanted == mine {
            return Ok(());
        }
        Err(AgentError::new(
            Reason::WrongNode,
            format!(
                "{what} is for node {wanted:?}, but this agent runs on node {mine:?}: node {wanted:?}'s address \
                 leads to another node's agent (check its InternalIP); nothing was changed"
            ),
        ))
    }

    /// One Apply, as the Apply call and each of an ApplyBatch's carry it out.
    async fn apply_one(&self, req: v1::ApplyRequest) -> Result<v1::ApplyResponse, AgentError> {
        let what = format!("Apply of {}", req.owner.as_ref().map(|o| o.name.as_str()).unwrap_or("?"));
        let result = async {
            self.check_node(&req.node_name, &what)?;
            self.fence.admit(req.epoch, &what)?;
            // A node path is read off the runtime (see `hostfs`): a file system that hangs
            // holds a blocking thread for at most `hostfs::DEADLINE`, never a worker that
            // gRPC, /healthz or other Applies need.
            let input = if matches!(req.bytecode, Some(v1::apply_request::Bytecode::Path(_))) {
                tokio::task::spawn_blocking(move || input_from_wire(req))
                    .await
                    .map_err(|e| AgentError::internal(format!("reading the request's bytecode path: {e}")))??
            } else {
                input_from_wire(req)?
            };
            self.manager.apply(input).await
        }
        .await;
        self.count("apply", result.as_ref().err());
        let (state, changed) = result?;
        Ok(v1::ApplyResponse {
            state: Some(proto::status_to_wire(&state)),
            changed,
            node_name: self.node_name().to_owned(),
        })
    }

    fn count(&self, method: &str, error: Option<&AgentError>) {
        let outcome = match error {
            None => "ok",
            Some(e) if matches!(e.reason, Reason::StaleLeaderEpoch | Reason::WrongNode) => "refused",
            Some(_) => "failed",
        };
        self.manager.metrics.request(method, outcome);
    }
}

/// The running kernel's release, e.g. `6.18.44`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// An ApplyRequest as the core takes it, checked as a standalone manifest is (see `request`).
pub fn input_from_wire(req: v1::ApplyRequest) -> Result<ApplyInput, AgentError> {
    let owner = req.owner.ok_or_else(|| invalid("owner is required"))?;
    let uid = OwnerUid::new(&owner.uid).map_err(|e| invalid(e.to_string()))?;
    let revision = Revision::parse(&req.revision)
        .ok_or_else(|| invalid(format!("revision {:?} must be 16 lowercase hex characters", req.revision)))?;
    let bytecode = match req.bytecode {
        Some(v1::apply_request::Bytecode::Elf(b)) => b.to_vec(),
        Some(v1::apply_request::Bytecode::Path(p)) => {
            let path = Path::new(&p);
            if !path.is_absolute() || p.split('/').any(|s| s == "..") {
                return Err(invalid(format!("bytecode path {p:?} must be absolute without '..'")));
            }
            let bytes = read_bytecode_file(path)?;
            if !req.expected_digest.is_empty() {
                check_digest(&p, &bytes, &req.expected_digest)?;
            }
            bytes
        }
        None => return Err(invalid("bytecode is required (elf bytes or a node-local path)")),
    };
    // Objects from images reach 16 MiB; the operator holds inline and ConfigMap ones to 1 MiB.
    let limit = crds::limits::MAX_IMAGE_BYTECODE_BYTES;
    if bytecode.len() > limit {
        return Err(AgentError::new(
            Reason::BytecodeTooLarge,
            format!("the object is {} bytes; the limit is {limit} bytes", bytecode.len()),
        ));
    }
    let spec = req
        .programs
        .into_iter()
        .map(proto::program_from_wire)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.0))?;
    let programs = validate_programs(&spec).map_err(|e| invalid(e.to_string()))?;
    let globals = validate_global_bytes(req.global_data.iter()).map_err(|e| invalid(e.to_string()))?;
    let wire_maps = req.maps;
    let maps = wire_maps
        .iter()
        .cloned()
        .map(proto::map_policy_from_wire)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.0))?;
    let maps = checked_map_policies(&maps)?;
    let pods = req
        .pods
        .into_iter()
        .map(|p| PodInput {
            uid: p.uid,
            namespace: p.namespace,
            name: p.name,
            programs: p.programs,
            containers: p.containers,
        })
        .collect();
    let pods = check_pods(pods, &programs)?;
    let metrics = req
        .metrics
        .into_iter()
        .map(proto::metric_from_wire)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.0))?;
    let map_owners = map_owners(&wire_maps)?;
    Ok(ApplyInput {
        uid,
        name: owner.name,
        revision,
        bytecode,
        programs,
        spec,
        globals,
        maps,
        pods,
        metrics,
        map_owners,
    })
}

/// The owners' uids of the maps used from other programs, by program name.
fn map_owners(policies: &[v1::MapPolicy]) -> Result<std::collections::BTreeMap<String, OwnerUid>, AgentError> {
    policies
        .iter()
        .filter(|p| !p.from_program.is_empty())
        .map(|p| {
            let uid = OwnerUid::new(&p.from_owner_uid).map_err(|e| {
                invalid(format!("maps {:?}: from_owner_uid of BpfProgram {}: {e}", p.name, p.from_program))
            })?;
            Ok((p.from_program.clone(), uid))
        })
        .collect()
}

/// The gRPC code of a reason: the caller's input (InvalidArgument), the node's state
/// (FailedPrecondition), or the agent itself (Internal).
fn code(reason: Reason) -> tonic::Code {
    match reason {
        Reason::InvalidSpec
        | Reason::BytecodeTooLarge
        | Reason::MalformedElf
        | Reason::ProgramNotFound
        | Reason::GlobalDataInvalid
        | Reason::VerifierRejected => tonic::Code::InvalidArgument,
        Reason::Internal | Reason::PinFailed => tonic::Code::Internal,
        _ => tonic::Code::FailedPrecondition,
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let mut status = tonic::Status::new(code(e.reason), e.message.clone());
        let md = status.metadata_mut();
        if let Ok(v) = e.reason.as_str().parse() {
            md.insert(proto::REASON_KEY, v);
        }
        if let Some(p) = e.program.as_deref().and_then(|p| p.parse().ok()) {
            md.insert(proto::PROGRAM_KEY, p);
        }
        status
    }
}

/// An ApplyBatch's answer stays under the operator's answer limit, with room for framing.
const BATCH_ANSWER_BYTES: usize = crds::limits::MAX_ANSWER_BYTES - 4096;

/// An ApplyBatch's results, in order: each Apply's answer or the error it would have had.
/// Answers past `limit` bytes in all are left out (`unanswered`: carried out, to be asked
/// again alone), so the whole answer fits one message however large the states are.
fn batch_results(answers: Vec<Result<v1::ApplyResponse, AgentError>>, limit: usize) -> Vec<v1::ApplyResult> {
    use prost::Message;
    use v1::apply_result::Result as Item;
    let mut room = limit;
    answers
        .into_iter()
        .map(|answer| {
            let item = match answer {
                Ok(applied) => Item::Applied(applied),
                Err(e) => Item::Failed(v1::ApplyFailure {
                    code: code(e.reason) as i32,
                    reason: e.reason.as_str().to_owned(),
                    program: e.program.unwrap_or_default(),
                    message: e.message,
                }),
            };
            let result = v1::ApplyResult { result: Some(item) };
            // Its length, the field's tag and the length's own bytes.
            let size = result.encoded_len() + 8;
            if size <= room {
                room -= size;
                result
            } else {
                room = 0;
                v1::ApplyResult { result: Some(Item::Unanswered(true)) }
            }
        })
        .collect()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn apply(&self, req: Request<v1::ApplyRequest>) -> Result<Response<v1::ApplyResponse>, Status> {
        Ok(Response::new(self.apply_one(req.into_inner()).await?))
    }

    async fn apply_batch(
        &self,
        req: Request<v1::ApplyBatchRequest>,
    ) -> Result<Response<v1::ApplyBatchResponse>, Status> {
        let applies = req.into_inner().applies;
        if applies.len() > crds::limits::MAX_APPLY_BATCH {
            return Err(Status::invalid_argument(format!(
                "an ApplyBatch carries at most {} Applies, this one {}: send the rest in another",
                crds::limits::MAX_APPLY_BATCH,
                applies.len()
            )));
        }
        let answers: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffered(
            futures::stream::iter(applies.into_iter().map(|a| self.apply_one(a))),
            crds::limits::APPLY_BATCH_PARALLEL,
        ))
        .await;
        Ok(Response::new(v1::ApplyBatchResponse {
            results: batch_results(answers, BATCH_ANSWER_BYTES),
            node_name: self.node_name().to_owned(),
        }))
    }

    async fn remove(&self, req: Request<v1::RemoveRequest>) -> Result<Response<v1::RemoveResponse>, Status> {
        let req = req.into_inner();
        let owner = req.owner.ok_or_else(|| Status::invalid_argument("owner is required"))?;
        let uid = OwnerUid::new(&owner.uid).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let result = async {
            let what = format!("Remove of {}", owner.name);
            self.check_node(&req.node_name, &what)?;
            self.fence.admit(req.epoch, &what)?;
            self.manager.remove(&uid).await
        }
        .await;
        self.count("remove", result.as_ref().err());
        Ok(Response::new(v1::RemoveResponse { removed: result?, node_name: self.node_name().to_owned() }))
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<Response<v1::ListResponse>, Status> {
        let req = req.into_inner();
        self.check_node(&req.node_name, "List")?;
        let size = match req.page_size as usize {
            0 => crds::limits::DEFAULT_LIST_PAGE_SIZE,
            n => n,
        };
        // The digest of what the operator reads: pods count as well as revisions and health.
        let states: Vec<v1::OwnerState> = self.manager.list().iter().map(proto::status_to_wire).collect();
        let digest = proto::NodeDigest::of_states(&states);
        let unchanged = req.known_digest != 0 && req.known_digest == digest && req.page_token.is_empty();
        let (owners, next_page_token) = if unchanged {
            (Vec::new(), String::new())
        } else {
            page(states, &req.page_token, size, crds::limits::MAX_LIST_PAGE_BYTES)
        };
        Ok(Response::new(v1::ListResponse {
            node_name: self.manager.config().node_name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: kernel_release(),
            owners,
            next_page_token,
            digest,
            unchanged,
        }))
    }

    type WatchStream = WatchStream;

    async fn probe(&self, req: Request<v1::ProbeRequest>) -> Result<Response<v1::ProbeResponse>, Status> {
        let req = req.into_inner();
        self.check_node(&req.node_name, "Probe")?;
        let reads = req.reads.into_iter().map(|r| (r.map, r.key)).collect();
        let input = probe::check(&req.owner_uid, reads, req.stats_lease_seconds)?;
        let (manager, counting) = (Arc::clone(&self.manager), Arc::clone(&self.counting));
        // Up to 32 map lookups and a program info per program, and the lease's file writes.
        let reading = tokio::task::spawn_blocking(move || probe::probe(&manager, &counting, &input))
            .await
            .map_err(|e| Status::internal(format!("Probe failed: {e}")))?;
        Ok(Response::new(reading_to_wire(reading, self.node_name())))
    }

    async fn read_maps(&self, req: Request<v1::ReadMapsRequest>) -> Result<Response<v1::ReadMapsResponse>, Status> {
        let req = req.into_inner();
        self.check_node(&req.node_name, "ReadMaps")?;
        let mut input = dump::check(&req.owner_uid, &req.map, req.max_entries, req.max_bytes, req.timeout_ms)?;
        let manager = Arc::clone(&self.manager);
        // Bounded kernel walks (entries, bytes, time): off the async workers.
        let read = tokio::task::spawn_blocking(move || {
            let Some(record) = manager.record_of(input.uid.as_str()) else { return Ok((String::new(), Vec::new())) };
            let dumps = dump::read_record(&record, input.map.as_ref(), &mut input.budget)?;
            Ok::<_, AgentError>((record.revision, dumps))
        })
        .await
        .map_err(|e| Status::internal(format!("ReadMaps failed: {e}")))?;
        self.count("ReadMaps", read.as_ref().err());
        let (revision, dumps) = read?;
        Ok(Response::new(v1::ReadMapsResponse {
            node_name: self.node_name().to_owned(),
            revision,
            maps: dumps.into_iter().map(dump_to_wire).collect(),
        }))
    }

    async fn watch(&self, req: Request<v1::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        self.check_node(&req.get_ref().node_name, "Watch")?;
        let node_name = self.node_name().to_owned();
        // Subscribe before the snapshot so nothing falls between the two.
        let rx = self.manager.subscribe();
        let initial: Vec<Result<v1::WatchEvent, Status>> = self
            .manager
            .list()
            .into_iter()
            .map(|state| {
                Ok(v1::WatchEvent {
                    kind: watch_event::Kind::Updated as i32,
                    state: Some(proto::status_to_wire(&state)),
                    reason: "current state".into(),
                    node_name: node_name.clone(),
                })
            })
            .collect();
        let live = BroadcastStream::new(rx).filter_map(move |r| match r {
            Ok(ev) => Some(Ok(change_to_wire(&ev, &node_name))),
            // A slow reader missed events: tell it to List again rather than lie.
            Err(e) => Some(Err(Status::data_loss(format!("watch fell behind ({e}); call List and Watch again")))),
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(initial).chain(live))))
    }
}

/// A change as Watch sends it.
fn change_to_wire(c: &Change, node_name: &str) -> v1::WatchEvent {
    let kind = match c.kind {
        ChangeKind::Updated => watch_event::Kind::Updated,
        ChangeKind::Removed => watch_event::Kind::Removed,
    };
    v1::WatchEvent {
        kind: kind as i32,
        state: Some(proto::status_to_wire(&c.state)),
        reason: c.reason.clone(),
        node_name: node_name.to_owned(),
    }
}

/// A map's entries as the wire carries them.
fn dump_to_wire(d: dump::Dump) -> v1::MapDump {
    v1::MapDump {
        name: d.name,
        map_type: d.kernel.map_type,
        type_name: d.type_name,
        map_id: d.kernel.id,
        key_size: d.kernel.key_size,
        value_size: d.kernel.value_size,
        max_entries: d.kernel.max_entries,
        values_per_entry: d.values_per_entry,
        btf: d.btf.into(),
        btf_key_type_id: d.kernel.btf_key_type_id,
        btf_value_type_id: d.kernel.btf_value_type_id,
        btf_note: d.btf_note,
        entries: d
            .entries
            .into_iter()
            .map(|e| v1::MapEntry { key: e.key.into(), values: e.values.into_iter().map(Into::into).collect() })
            .collect(),
        truncated: d.truncated,
        error: d.error,
    }
}

/// A Probe's reading as the wire carries it.
fn reading_to_wire(r: Reading, node_name: &str) -> v1::ProbeResponse {
    v1::ProbeResponse {
        node_name: node_name.to_owned(),
        revision: r.revision,
        programs: r
            .programs
            .into_iter()
            .map(|p| v1::ProgramRuns {
                name: p.name,
                program_id: p.program_id,
                run_count: p.run_count,
                run_time_ns: p.run_time_ns,
            })
            .collect(),
        values: r
            .values
            .into_iter()
            .map(|(read, value)| v1::MapValue {
                map: read.map.to_string(),
                key: read.key,
                result: Some(match value {
                    Ok(v) => v1::map_value::Result::Value(v),
                    Err(why) => v1::map_value::Result::Error(why),
                }),
            })
            .collect(),
        stats_enabled: r.stats_enabled,
    }
}

fn uid_of(s: &v1::OwnerState) -> &str {
    s.owner.as_ref().map(|o| o.uid.as_str()).unwrap_or_default()
}

/// One List page: the owners after `token` (an owner uid), ordered by uid, at most
/// `size` of them and at most `max_bytes` encoded (but always at least one, so a page
/// makes progress), and the token of the next page (empty on the last).
pub fn page(mut all: Vec<v1::OwnerState>, token: &str, size: usize, max_bytes: usize) -> (Vec<v1::OwnerState>, String) {
    use prost::Message;
    all.sort_by(|a, b| uid_of(a).cmp(uid_of(b)));
    let start = if token.is_empty() { 0 } else { all.partition_point(|s| uid_of(s) <= token) };
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut rest = all.into_iter().skip(start).peekable();
    while let Some(s) = rest.peek() {
        let n = s.encoded_len() + 8;
        if !out.is_empty() && (out.len() >= size.max(1) || bytes + n > max_bytes) {
            break;
        }
        bytes += n;
        out.extend(rest.next());
    }
    let next = match (rest.peek(), out.last()) {
        (Some(_), Some(last)) => uid_of(last).to_string(),
        _ => String::new(),
    };
    (out, next)
}

/// HTTP/2 pings on an idle connection, and how long an answer may take before it is closed.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Calls in flight on one connection (the operator needs a handful: Apply, Watch, List).
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Serve the agent API on `listener` with mTLS until `shutdown` resolves; Probe's stats
/// leases go through `counting`. Connections are bounded as `tls::incoming` describes;
/// each carries at most 64 calls at once.
pub async fn serve(
    manager: Arc<Manager>,
    counting: Arc<RunCounting>,
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServer<AgentService>>().await;
    tonic::transport::Server::builder()
        // A peer that stops answering (gone without a FIN) is noticed and its connection freed.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health)
        .add_service(
            AgentServer::new(AgentService::new(manager, counting))
                .max_decoding_message_size(crds::limits::MAX_APPLY_MESSAGE_BYTES)
                .max_encoding_message_size(crds::limits::MAX_ANSWER_BYTES),
        )
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn owner(i: usize, attachments: usize) -> v1::OwnerState {
        v1::OwnerState {
            owner: Some(v1::Owner { uid: format!("uid-{i:06}"), name: format!("program-{i}") }),
            revision: "0123456789abcdef".into(),
            attached: (0..attachments)
                .map(|p| v1::AttachedProgram {
                    name: format!("function_{p}"),
                    r#type: "Tracepoint".into(),
                    program_id: p as u32,
                    link_ids: (0..32).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Three thousand owners with large answers: every page fits the limit, and the pages
    /// together are every owner once, in order.
    #[test]
    fn pages_stay_under_the_limit_and_cover_every_owner_once() {
        let all: Vec<v1::OwnerState> = (0..3_000).rev().map(|i| owner(i, 64)).collect();
        let limit = crds::limits::MAX_LIST_PAGE_BYTES;
        let (mut token, mut seen, mut pages) = (String::new(), Vec::new(), 0);
        loop {
            let (owners, next) = page(all.clone(), &token, 500, limit);
            let resp = v1::ListResponse { owners, next_page_token: next.clone(), ..Default::default() };
            assert!(resp.encoded_len() <= limit + 1024, "page {pages} is {} bytes", resp.encoded_len());
            seen.extend(resp.owners.iter().map(|s| uid_of(s).to_string()));
            pages += 1;
            if next.is_empty() {
                break;
            }
            token = next;
        }
        let want: Vec<String> = (0..3_000).map(|i| format!("uid-{i:06}")).collect();
        assert_eq!(seen, want);
        assert!(pages > 6, "{pages} pages: the byte limit, not only the count, cut them");
        // The count limit, and an empty agent.
        let (first, next) = page((0..3).map(|i| owner(i, 1)).collect(), "", 2, limit);
        assert_eq!((first.len(), next.as_str()), (2, "uid-000001"));
        let (rest, next) = page((0..3).map(|i| owner(i, 1)).collect(), "uid-000001", 2, limit);
        assert_eq!((rest.len(), next.as_str()), (1, ""));
        assert_eq!(page(Vec::new(), "", 10, limit), (Vec::new(), String::new()));
    }

    /// A batch's answers stay under the limit: those past it are left out, to be asked
    /// again alone; errors keep their reason, program and gRPC code.
    #[test]
    fn batch_answers_fit_the_limit_and_keep_each_error() {
        use v1::apply_result::Result as Item;
        let applied = |i| Ok(v1::ApplyResponse { state: Some(owner(i, 64)), changed: true, node_name: "n".into() });
        let error = AgentError::for_program(Reason::VerifierRejected, "f", "R1 invalid mem access");
        let answers = vec![applied(0), Err(error), applied(1), applied(2), applied(3)];
        let one = v1::ApplyResult { result: Some(Item::Applied(applied(0).unwrap())) }.encoded_len();
        // Room for the error and two large answers, not three.
        let results = batch_results(answers, 2 * one + one / 2);
        let resp = v1::ApplyBatchResponse { results, node_name: "n".into() };
        assert!(resp.encoded_len() <= 2 * one + one / 2 + 64, "{} bytes", resp.encoded_len());
        let kinds: Vec<&str> = resp
            .results
            .iter()
            .map(|r| match &r.result {
                Some(Item::Applied(_)) => "applied",
                Some(Item::Failed(_)) => "failed",
                Some(Item::Unanswered(true)) => "unanswered",
                _ => "?",
            })
            .collect();
        assert_eq!(kinds, ["applied", "failed", "applied", "unanswered", "unanswered"]);
        let Some(Item::Failed(f)) = &resp.results[1].result else { unreachable!() };
        assert_eq!(
            (f.code, f.reason.as_str(), f.program.as_str(), f.message.as_str()),
            (tonic::Code::InvalidArgument as i32, "VerifierRejected", "f", "R1 invalid mem access")
        );
    }
}
