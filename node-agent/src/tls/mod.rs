//! mTLS for the agent's gRPC server (and the client configuration the operator dials with).
//!
//! The agent only ever serves over TLS and demands a client certificate signed by
//! `--tls-client-ca`, optionally carrying one DNS name (the operator's identity): an open port
//! that loads kernel code is a root shell for the network.
//!
//! tonic's built-in `ServerTlsConfig` is fixed at start-up, so the agent serves a custom
//! incoming stream instead ([`incoming`]): every accepted TCP connection is handshaken with
//! the *current* [`ServerConfig`], which [`ServerTls`] rebuilds when the PEM files change
//! (certificate rotation by cert-manager or a Secret update, without a restart). A rebuild
//! also closes every connection handshaken with an older configuration: gRPC connections
//! and Watch streams are long-lived, and rotating away a compromised or expired identity (or
//! a CA) must end the sessions it authenticated. The operator redials; Apply and Remove are
//! idempotent. Files that are rejected close nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use rustls::client::verify_server_name;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, WatchStream};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing::{debug, info, warn};

/// The DNS name every agent certificate carries, so one certificate serves every node.
pub const DEFAULT_SERVER_NAME: &str = "bpfleet-agent";
/// How long a client may take to complete the TLS handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`ServerTls::spawn_reloader`] is expected to look at the files in production.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// How much the accept loop ([`incoming_with`]) lets clients hold. A flood of silent or
/// slow peers costs bounded memory and little CPU, and cannot keep the operator out.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to complete the TLS handshake before it is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in flight at once. A connection that arrives with every slot taken takes
    /// the slot of the oldest handshake of the address holding the most, when that address
    /// holds more than the newcomer's would (fair shares: a client from a quiet address, such
    /// as the operator, gets in however many silent peers others send); failing that, the
    /// slot of the oldest handshake if it has had `handshake_grace`; failing that, the
    /// newcomer is closed at once (the operator's dialer retries).
    pub max_pending: usize,
    /// How long a handshake keeps its slot against newcomers once all slots are taken.
    pub handshake_grace: Duration,
    /// Handshakes in flight from one address; beyond this its new connections are closed at
    /// once, so one host cannot take every slot.
    pub max_pending_per_peer: usize,
    /// Connections past the handshake (only the operator's identity gets that far); beyond
    /// this new ones are closed, so memory stays bounded whatever an authenticated client does.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_pending: 256,
            handshake_grace: Duration::from_secs(1),
            max_pending_per_peer: 32,
            max_connections: 512,
        }
    }
}
const ALPN_H2: &[u8] = b"h2";

const FLAG_CERT: &str = "--tls-cert";
const FLAG_KEY: &str = "--tls-key";
const FLAG_CLIENT_CA: &str = "--tls-client-ca";
const FLAG_CA: &str = "--tls-ca";

/// Why TLS material could not be used. Each message names the flag and the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {}: {error}", path.display())]
    Read { flag: &'static str, path: PathBuf, error: io::Error },
    #[error("{flag} {} is not valid PEM: {detail}", path.display())]
    Pem { flag: &'static str, path: PathBuf, detail: String },
    #[error("no certificates in {flag} {}: expected PEM `CERTIFICATE` blocks", path.display())]
    NoCertificates { flag: &'static str, path: PathBuf },
    #[error(
        "no private key found in {flag} {}: expected a PEM `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY` block",
        path.display()
    )]
    NoPrivateKey { flag: &'static str, path: PathBuf },
    #[error(
        "the private key in {key_flag} {} does not belong to the certificate in {cert_flag} {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert_flag: &'static str, cert: PathBuf, key_flag: &'static str, key: PathBuf },
    #[error("cannot use {flag} {}: {detail}", path.display())]
    Rejected { flag: &'static str, path: PathBuf, detail: String },
    #[error("{what} {name:?} is not a valid DNS name")]
    InvalidName { what: &'static str, name: String },
}

/// The agent's PEM files: `--tls-cert`, `--tls-key`, `--tls-client-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// The raw bytes of the three files, compared to notice a change.
#[derive(PartialEq, Eq)]
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
}

/// The agent's server-side TLS: the current [`ServerConfig`] plus what it takes to rebuild it.
pub struct ServerTls {
    files: TlsFiles,
    required_client_name: ServerName<'static>,
    provider: Arc<CryptoProvider>,
    /// The configuration new connections are handshaken with. Each connection holds a
    /// receiver from its handshake on, so replacing the value tells it to close.
    current: watch::Sender<Arc<ServerConfig>>,
    /// The client-certificate check of the current configuration, run again on a resumed
    /// session's certificate (see [`accept_loop`]).
    verifier: Mutex<Arc<ResumedCheck>>,
    /// What the poller last looked at, whether it loaded or not: a broken file is reported
    /// once, not on every tick.
    seen: Mutex<Option<Snapshot>>,
}

impl std::fmt::Debug for ServerTls {
    // Not derived: the snapshot holds the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("required_client_name", &self.required_client_name)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files and builds the first configuration. Only client certificates that
    /// chain to the client CA *and* carry `required_client_name` as a DNS subject-alternative
    /// name are accepted: any certificate of the same CA would otherwise be root on the node.
    pub fn load(files: TlsFiles, required_client_name: &str) -> Result<Self, TlsError> {
        let required_client_name = ServerName::try_from(required_client_name.to_owned()).map_err(|_| {
            TlsError::InvalidName { what: "required client name", name: required_client_name.to_owned() }
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let snapshot = read_snapshot(&files)?;
        let (config, verifier) = build_server_config(&files, &snapshot, &required_client_name, &provider)?;
        Ok(Self {
            files,
            required_client_name,
            provider,
            current: watch::Sender::new(Arc::new(config)),
            verifier: Mutex::new(Arc::new(ResumedCheck::new(verifier))),
            seen: Mutex::new(Some(snapshot)),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration new connections are handshaken with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.borrow().clone()
    }

    /// An acceptor over the current configuration. Connections it handshakes stay open
    /// after a rotation; those [`incoming_with`] yields are closed.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config())
    }

    /// An acceptor over the current configuration and the [`Rotation`] that ends it, taken
    /// together so that no replacement can fall between them.
    fn acceptor_and_rotation(&self) -> (TlsAcceptor, Rotation) {
        let mut receiver = self.current.subscribe();
        let config = receiver.borrow_and_update().clone();
        (TlsAcceptor::from(config), Rotation::Awaited(WatchStream::from_changes(receiver)))
    }

    /// Re-reads the files now and switches to them, closing the connections handshaken with
    /// the previous material. On error the previous material stays and nothing is closed.
    pub fn reload_now(&self) -> Result<(), TlsError> {
        let snapshot = read_snapshot(&self.files)?;
        let result = self.install(&snapshot);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
        result
    }

    /// Looks at the files every `every` and reloads when their contents changed; a broken
    /// file is logged and the previous material kept. Contents, not mtimes, are compared:
    /// Kubernetes updates a mounted Secret by swapping a symlink, and mtimes can be coarse.
    /// The task ends once the `ServerTls` is dropped. Must be called within a Tokio runtime.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_read_error: Option<String> = None;
            loop {
                ticks.tick().await;
                let Some(tls) = weak.upgrade() else { return };
                // File reads and key parsing are blocking work, if brief.
                let outcome = tokio::task::spawn_blocking(move || tls.poll_once()).await;
                match outcome {
                    Ok(Ok(())) => last_read_error = None,
                    Ok(Err(error)) => {
                        let message = error.to_string();
                        if last_read_error.as_ref() != Some(&message) {
                            warn!(%message, "TLS files unreadable; keeping the previous certificate");
                            last_read_error = Some(message);
                        }
                    }
                    Err(join_error) => warn!(error = %join_error, "TLS reload task failed"),
                }
            }
        })
    }

    /// One poll: reload if the files differ from what was last seen. Returns an error only
    /// when the files cannot be read; a bad new file is logged here and remembered.
    fn poll_once(&self) -> Result<(), TlsError> {
        let snapshot = read_snapshot(&self.files)?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.as_ref().is_some_and(|s| *s == snapshot) {
            return Ok(());
        }
        if let Err(error) = self.install(&snapshot) {
            warn!(%error, "new TLS material rejected; keeping the previous certificate");
        }
        *seen = Some(snapshot);
        Ok(())
    }

    /// Switches to `snapshot` if it builds, which closes every connection handshaken (or
    /// handshaking) with an older configuration: each holds one receiver.
    fn install(&self, snapshot: &Snapshot) -> Result<(), TlsError> {
        let (config, verifier) =
            build_server_config(&self.files, snapshot, &self.required_client_name, &self.provider)?;
        let closing = self.current.receiver_count();
        *self.verifier.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(ResumedCheck::new(verifier));
        self.current.send_replace(Arc::new(config));
        info!(
            cert = %self.files.cert.display(),
            closing,
            "reloaded TLS certificate, key and client CA; closing the connections handshaken with the previous ones"
        );
        Ok(())
    }
}

fn read_snapshot(files: &TlsFiles) -> Result<Snapshot, TlsError> {
    Ok(Snapshot {
        cert: read(FLAG_CERT, &files.cert)?,
        key: read(FLAG_KEY, &files.key)?,
        client_ca: read(FLAG_CLIENT_CA, &files.client_ca)?,
    })
}

fn build_server_config(
    files: &TlsFiles,
    snapshot: &Snapshot,
    required_client_name: &ServerName<'static>,
    provider: &Arc<CryptoProvider>,
) -> Result<(ServerConfig, Arc<dyn ClientCertVerifier>), TlsError> {
    let chain = parse_certs(FLAG_CERT, &files.cert, &snapshot.cert)?;
    let key = parse_key(FLAG_KEY, &files.key, &snapshot.key)?;
    let certified = certified_key((FLAG_CERT, &files.cert), (FLAG_KEY, &files.key), chain, key, provider)?;

    let mut roots = RootCertStore::empty();
    for ca in parse_certs(FLAG_CLIENT_CA, &files.client_ca, &snapshot.client_ca)? {
        roots.add(ca).map_err(|e| rejected(FLAG_CLIENT_CA, &files.client_ca, e))?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rejected(FLAG_CLIENT_CA, &files.client_ca, e))?;
    let verifier: Arc<dyn ClientCertVerifier> =
        Arc::new(RequireClientName { inner: webpki, name: required_client_name.clone() });

    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| rejected(FLAG_CERT, &files.cert, e))?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Resumption with stateless tickets, whose key belongs to this configuration: an
    // operator whose connection budget is smaller than the fleet closes and makes
    // connections again all the time, and a resumed session costs neither side a
    // signature or a certificate check (docs/benchmarks.md, the operator at fleet scale).
    // Only sessions this configuration authenticated resume: new files build a new
    // configuration with a new key, so a rotated CA or identity cannot be bypassed with a
    // ticket of the old one (and the rebuild closes the old connections, see above). One
    // ticket a handshake: each resumption brings the next. Nothing is stored per session.
    // A resumed session's client certificate is checked again as a full handshake would
    // (chain, validity now, name: `check_resumed`), so a session outlives neither its
    // certificate nor the CA.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| rejected(FLAG_CERT, &files.cert, e))?;
    config.send_tls13_tickets = 1;
    Ok((config, verifier))
}

/// Loads the key and checks it belongs to the chain's leaf certificate.
fn certified_key(
    (cert_flag, cert): (&'static str, &Path),
    (key_flag, key_path): (&'static str, &Path),
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| rejected(key_flag, key_path, e))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(TlsError::KeyMismatch { cert_flag, cert: cert.to_owned(), key_flag, key: key_path.to_owned() })
        }
        Err(e) => Err(rejected(cert_flag, cert, e)),
    }
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The CA check of `inner`, then: the leaf must carry `name` as a DNS subject-alternative name.
#[derive(Debug)]
struct RequireClientName {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for RequireClientName {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        verify_server_name(&ParsedCertificate::try_from(end_entity)?, &self.name)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One accepted, handshaken connection. tonic sees the same connect info as with its own
/// TLS server, so `Request::remote_addr()` and `Request::peer_certs()` work in handlers.
/// It holds one of the [`Limits::max_connections`] slots until dropped. Once the
/// configuration it was handshaken with is replaced, reads end (EOF) and writes fail.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    rotation: Rotation,
    _slot: OwnedSemaphorePermit,
}

impl TlsConn {
    /// The client's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.get_ref().1.peer_certificates()
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TlsConn").field(&self.stream.get_ref().0.peer_addr().ok()).finish()
    }
}

/// Whether the configuration a connection was handshaken with has been replaced.
enum Rotation {
    /// Not yet; the stream yields when it is.
    Awaited(WatchStream<Arc<ServerConfig>>),
    /// Replaced: the connection must end.
    Happened,
    /// The [`ServerTls`] is gone, so nothing can replace it any more.
    Never,
}

impl Rotation {
    /// Whether the configuration has been replaced; if not, `cx` is woken when it is, so an
    /// idle connection is closed at once rather than at its next byte. Reads and writes of
    /// one connection are driven by one task (hyper's), so the last waker is the right one.
    fn poll_happened(&mut self, cx: &mut Context<'_>) -> bool {
        if let Rotation::Awaited(changes) = self {
            *self = match changes.poll_next_unpin(cx) {
                Poll::Pending => return false,
                Poll::Ready(Some(_)) => Rotation::Happened,
                Poll::Ready(None) => Rotation::Never,
            };
        }
        matches!(self, Rotation::Happened)
    }
}

fn rotated_away() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the agent's TLS configuration was replaced; reconnect")
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.rotation.poll_happened(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.rotation.poll_happened(cx) {
            return Poll::Ready(Err(rotated_away()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rotation.poll_happened(cx) {
            return Poll::Ready(Err(rotated_away()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and yields handshaken connections, for
/// `Server::builder()...serve_with_incoming_shutdown(incoming(listener, tls), signal)`,
/// with the default [`Limits`].
pub fn incoming(listener: TcpListener, tls: Arc<ServerTls>) -> impl Stream<Item = Result<TlsConn, io::Error>> {
    incoming_with(listener, tls, Limits::default())
}

/// Each handshake runs in its own task with a timeout, so a slow or hostile client never
/// holds up others; failed handshakes are logged and dropped, never ending the stream.
/// The listener closes when the stream is dropped. Must be called within a Tokio runtime.
pub fn incoming_with(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    limits: Limits,
) -> impl Stream<Item = Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(accept_loop(listener, tls, limits, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    limits: Limits,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let pending = Arc::new(Mutex::new(Pending::new(limits)));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshake_timeout = limits.handshake_timeout;
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => {
                debug!(%error, "TCP accept failed");
                continue;
            }
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                warn!(%error, "TCP accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, rotation) = tls.acceptor_and_rotation();
        let verifier = tls.verifier.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (tx, slots, registry) = (tx.clone(), slots.clone(), pending.clone());
        let mut inflight = pending.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(id) = inflight.admit(peer.ip(), std::time::Instant::now()) else {
            debug!(%peer, "too many handshakes in flight (from this address, or young ones everywhere); connection closed");
            continue;
        };
        // Registered under the lock, so the task cannot finish before it is known.
        let task = tokio::spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
            registry.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake failed"),
                Err(_elapsed) => return debug!(%peer, ?handshake_timeout, "TLS handshake timed out"),
            };
            if let Err(error) = verifier.check_resumed(stream.get_ref().1) {
                return debug!(%peer, %error, "resumed TLS session refused");
            }
            let Ok(slot) = slots.try_acquire_owned() else {
                return warn!(%peer, limits.max_connections, "too many connections; closing the new one");
            };
            // Fails only when the server has stopped; the connection is just dropped.
            let _ = tx.send(Ok(TlsConn { stream, rotation, _slot: slot })).await;
        });
        inflight.track(id, task.abort_handle());
    }
}

/// The client-certificate check a full handshake makes, for resumed sessions: a ticket
/// carries the certificate of the handshake that made the session, which may have expired
/// since (or whose CA is no longer trusted). One per configuration: a rotation makes a new
/// one with the new CA.
///
/// The chain it last passed is remembered with the span in which every certificate of it
/// is valid: the same chain resumed again inside that span passes without its signatures
/// verified again, which is what a resumption costs an agent otherwise (an operator past
/// its connection budget resumes all the time; docs/benchmarks.md). The check has no other
/// input that changes (no revocation list, the roots fixed for the configuration's life),
/// so the answer is the one a verification would give.
struct ResumedCheck {
    verifier: Arc<dyn ClientCertVerifier>,
    passed: Mutex<Option<Passed>>,
}

/// A chain [`ResumedCheck`] verified, and when all of it is valid (seconds since the epoch).
struct Passed {
    chain: Vec<CertificateDer<'static>>,
    from: i64,
    until: i64,
}

impl ResumedCheck {
    fn new(verifier: Arc<dyn ClientCertVerifier>) -> Self {
        Self { verifier, passed: Mutex::new(None) }
    }

    fn check_resumed(&self, conn: &rustls::ServerConnection) -> Result<(), rustls::Error> {
        if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
            return Ok(());
        }
        self.check(conn.peer_certificates().unwrap_or_default(), UnixTime::now())
    }

    fn check(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<(), rustls::Error> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let passed = |p: &Passed| p.chain == chain && (p.from..=p.until).contains(&secs);
        if self.passed.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(passed) {
            return Ok(());
        }
        self.verifier.verify_client_cert(leaf, intermediates, now)?;
        let spans: Option<Vec<(i64, i64)>> = chain.iter().map(|c| validity::validity(c)).collect();
        if let Some(spans) = spans {
            let from = spans.iter().map(|s| s.0).max().unwrap_or(i64::MAX);
            let until = spans.iter().map(|s| s.1).min().unwrap_or(i64::MIN);
            // Only a span it was checked inside: a certificate of the chain valid then and not
            // now (or the other way round) changes which paths the verification explores.
            if !(from..=until).contains(&secs) {
                return Ok(());
            }
            let chain = chain.iter().map(|c| c.clone().into_owned()).collect();
            *self.passed.lock().unwrap_or_else(PoisonError::into_inner) = Some(Passed { chain, from, until });
        }
        Ok(())
    }
}

/// The handshakes in flight, oldest first, and how many each address has.
struct Pending {
    limits: Limits,
    next: u64,
    order: std::collections::VecDeque<InFlight>,
    per_peer: std::collections::HashMap<std::net::IpAddr, usize>,
}

struct InFlight {
    id: u64,
    ip: std::net::IpAddr,
    since: std::time::Instant,
    task: Option<AbortHandle>,
}

impl Pending {
    fn new(limits: Limits) -> Self {
        Pending { limits, next: 0, order: Default::default(), per_peer: Default::default() }
    }

    /// A slot for a new handshake from `ip`, taken from the oldest handshake when all are
    /// taken and it has had its grace; `None` when `ip` already has its share or no slot
    /// can be had.
    fn admit(&mut self, ip: std::net::IpAddr, now: std::time::Instant) -> Option<u64> {
        if self.per_peer.get(&ip).copied().unwrap_or(0) >= self.limits.max_pending_per_peer {
            return None;
        }
        if self.order.len() >= self.limits.max_pending {
            let mine = self.per_peer.get(&ip).copied().unwrap_or(0);
            let heaviest =
                self.per_peer.iter().max_by_key(|(_, n)| **n).filter(|(_, n)| **n > mine + 1).map(|(ip, _)| *ip);
            let victim = match heaviest {
                Some(heavy) => self.order.iter().find(|o| o.ip == heavy),
                None => self.order.front().filter(|o| now.duration_since(o.since) >= self.limits.handshake_grace),
            }?;
            if let Some(InFlight { ip, task: Some(task), .. }) = self.remove(victim.id) {
                task.abort();
                debug!(%ip, "handshake slots full; a handshake in flight was dropped for a newcomer");
            }
        }
        self.next += 1;
        *self.per_peer.entry(ip).or_default() += 1;
        self.order.push_back(InFlight { id: self.next, ip, since: now, task: None });
        Some(self.next)
    }

    fn track(&mut self, id: u64, task: AbortHandle) {
        if let Some(entry) = self.order.iter_mut().find(|o| o.id == id) {
            entry.task = Some(task);
        }
    }

    fn remove(&mut self, id: u64) -> Option<InFlight> {
        let at = self.order.iter().position(|o| o.id == id)?;
        let entry = self.order.remove(at)?;
        if let Some(n) = self.per_peer.get_mut(&entry.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&entry.ip);
            }
        }
        Some(entry)
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// The client side, for the operator: its identity (`--tls-cert`, `--tls-key`), the CA that
/// signs agents (`--tls-ca`) and the name agent certificates carry (`--agent-server-name`,
/// normally [`DEFAULT_SERVER_NAME`]). The files are checked here so a mistake is reported at
/// start-up, naming the file, rather than as a handshake failure later.
pub fn client_config(cert: &Path, key: &Path, ca: &Path, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
    ServerName::try_from(server_name)
        .map_err(|_| TlsError::InvalidName { what: "server name", name: server_name.to_owned() })?;
    let cert_pem = read(FLAG_CERT, cert)?;
    let key_pem = read(FLAG_KEY, key)?;
    let ca_pem = read(FLAG_CA, ca)?;

    let provider = rustls::crypto::ring::default_provider();
    let chain = parse_certs(FLAG_CERT, cert, &cert_pem)?;
    let private_key = parse_key(FLAG_KEY, key, &key_pem)?;
    certified_key((FLAG_CERT, cert), (FLAG_KEY, key), chain, private_key, &provider)?;
    let mut roots = RootCertStore::empty();
    for ca_cert in parse_certs(FLAG_CA, ca, &ca_pem)? {
        roots.add(ca_cert).map_err(|e| rejected(FLAG_CA, ca, e))?;
    }

    Ok(ClientTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name))
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read { flag, path: path.to_owned(), error })
}

fn parse_certs(flag: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        flag,
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { flag, path: path.to_owned() });
    }
    Ok(certs)
}

fn parse_key(flag: &'static str, path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey { flag, path: path.to_owned() },
        other => TlsError::Pem { flag, path: path.to_owned(), detail: other.to_string() },
    })
}

fn rejected(flag: &'static str, path: &Path, error: impl std::fmt::Display) -> TlsError {
    TlsError::Rejected { flag, path: path.to_owned(), detail: error.to_string() }
}

#[cfg(feature = "test-support")]
pub mod testpki;
mod validity;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::client::TlsStream;
    use tonic::transport::{Endpoint, Server};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::testpki::{CLIENT_NAME, TestPki};
    use super::*;

    /// Far beyond what closing takes: only keeps a broken test from hanging.
    const GUARD: Duration = Duration::from_secs(5);

    /// The agent's TLS over a fresh test PKI.
    struct Fixture {
        tls: Arc<ServerTls>,
        pki: TestPki,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::generate(dir.path());
        let tls = Arc::new(ServerTls::load(pki.server_files(), CLIENT_NAME).expect("load server TLS"));
        Fixture { tls, pki, _dir: dir }
    }

    /// Echoes bytes on every connection to the returned address. The receiver gets, for each
    /// connection whose reads ended, what one more write by the server did.
    async fn serve_echo(tls: Arc<ServerTls>) -> (SocketAddr, mpsc::UnboundedReceiver<io::Result<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (ended, write_after_end) = mpsc::unbounded_channel();
        let mut conns = Box::pin(incoming(listener, tls));
        tokio::spawn(async move {
            while let Some(Ok(conn)) = conns.next().await {
                tokio::spawn(echo(conn, ended.clone()));
            }
        });
        (addr, write_after_end)
    }

    async fn echo(mut conn: TlsConn, ended: mpsc::UnboundedSender<io::Result<usize>>) {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = conn.read(&mut buf).await {
            if conn.write_all(&buf[..n]).await.is_err() || conn.flush().await.is_err() {
                break;
            }
        }
        let _ = ended.send(conn.write(b"late").await);
    }

    async fn connect(addr: SocketAddr, pki: &TestPki) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(DEFAULT_SERVER_NAME).expect("server name");
        pki.client_connector().connect(name, tcp).await.expect("handshake")
    }

    fn served_leaf(conn: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        conn.get_ref().1.peer_certificates().expect("the server presented a certificate")[0].clone()
    }

    async fn round_trip(conn: &mut TlsStream<TcpStream>) -> io::Result<()> {
        conn.write_all(b"ping").await?;
        conn.flush().await?;
        let mut echoed = [0u8; 4];
        conn.read_exact(&mut echoed).await?;
        assert_eq!(&echoed, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn a_rotation_closes_connections_handshaken_before_it() {
        let f = fixture();
        let (addr, mut write_after_end) = serve_echo(f.tls.clone()).await;
        let mut old = connect(addr, &f.pki).await;
        // The server holds the connection, idle in a read, before the rotation.
        round_trip(&mut old).await.expect("round trip before the rotation");
        let old_leaf = served_leaf(&old);

        let new_leaf = f.pki.reissue_server_cert();
        f.tls.reload_now().expect("reload");

        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(GUARD, old.read(&mut buf)).await.expect("the old connection was left open");
        assert!(matches!(read, Ok(0) | Err(_)), "the old connection still reads: {read:?}");
        let write = tokio::time::timeout(GUARD, write_after_end.recv()).await.expect("the server's reads ended");
        assert!(write.expect("one connection ended").is_err(), "the server still writes to the old connection");

        let mut new = connect(addr, &f.pki).await;
        assert_ne!(old_leaf, new_leaf);
        assert_eq!(served_leaf(&new), new_leaf);
        round_trip(&mut new).await.expect("a connection after the rotation is served");
    }

    #[tokio::test]
    async fn a_rotation_ends_grpc_connections() {
        let f = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(Server::builder().add_service(health).serve_with_incoming(incoming(listener, f.tls.clone())));
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .expect("endpoint")
            .tls_config(f.pki.client_config())
            .expect("client TLS");
        let check = HealthCheckRequest { service: String::new() };
        let mut old = HealthClient::new(endpoint.connect().await.expect("connect"));
        old.check(check.clone()).await.expect("health check before the rotation");
        assert_eq!(f.tls.current.receiver_count(), 1, "one connection");

        f.pki.reissue_server_cert();
        f.tls.reload_now().expect("reload");
        // hyper drops the connection, and its receiver with it.
        tokio::time::timeout(GUARD, async {
            while f.tls.current.receiver_count() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the gRPC connection was left open");
        let mut new = HealthClient::new(endpoint.connect().await.expect("connect again"));
        new.check(check).await.expect("a connection after the rotation is served");
    }

    #[tokio::test]
    async fn a_rejected_file_closes_nothing() {
        let f = fixture();
        let (addr, mut write_after_end) = serve_echo(f.tls.clone()).await;
        let mut conn = connect(addr, &f.pki).await;
        round_trip(&mut conn).await.expect("round trip before the reload");

        std::fs::write(&f.pki.server_cert, "not a certificate\n").expect("write");
        f.tls.reload_now().expect_err("a broken certificate must be rejected");

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(write_after_end.try_recv().is_err(), "the server ended a connection");
        round_trip(&mut conn).await.expect("the connection survives a rejected file");
    }

    /// The agent's own client check, counting its verifications.
    #[derive(Debug)]
    struct Counting(Arc<dyn ClientCertVerifier>, std::sync::atomic::AtomicUsize);

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.0.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.verify_client_cert(end_entity, intermediates, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// A chain that passed is not verified again while all of it is valid; outside that
    /// span, or for another chain, the verification runs (and a refused chain is never
    /// remembered).
    #[test]
    fn a_resumed_chain_that_passed_is_verified_once_while_it_is_valid() {
        use std::sync::atomic::Ordering::Relaxed;
        let f = fixture();
        let inner = f.tls.verifier.lock().expect("lock").verifier.clone();
        let counting = Arc::new(Counting(inner, Default::default()));
        let check = ResumedCheck::new(counting.clone());
        let chain = |path: &Path| -> Vec<CertificateDer<'static>> {
            CertificateDer::pem_file_iter(path).expect("pem").collect::<Result<_, _>>().expect("certificates")
        };
        let (ours, foreign) = (chain(&f.pki.client_cert), chain(&f.pki.foreign_client_cert));
        let now = UnixTime::now();
        check.check(&ours, now).expect("our client passes");
        check.check(&ours, now).expect("and again");
        assert_eq!(counting.1.load(Relaxed), 1, "verified once");
        for _ in 0..2 {
            check.check(&foreign, now).expect_err("another CA's client is refused");
        }
        assert_eq!(counting.1.load(Relaxed), 3, "a refused chain is verified each time");
        // rcgen's certificates end on 4096-01-01: a second later the chain is expired.
        let expired = UnixTime::since_unix_epoch(Duration::from_secs(67_090_118_401));
        let e = check.check(&ours, expired).expect_err("past its notAfter");
        assert!(
            matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })),
            "{e:?}"
        );
        assert_eq!(counting.1.load(Relaxed), 4, "outside the span it is verified again");
        check.check(&ours, now).expect("passes now");
        assert_eq!(counting.1.load(Relaxed), 4, "still remembered");
        check.check(&[], now).expect_err("no certificate");
        // A chain that passes with a certificate in it that is not valid now (unused by the
        // path) is not remembered: its span does not hold the time it was checked at.
        let mut params = rcgen::CertificateParams::new(vec!["old".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let old = params.self_signed(&rcgen::KeyPair::generate().expect("key")).expect("certificate");
        let with_old = [ours.clone(), vec![old.der().clone()]].concat();
        check.check(&with_old, now).expect("an unused expired certificate changes nothing");
        check.check(&with_old, now).expect("and again");
        assert_eq!(counting.1.load(Relaxed), 6, "verified each time");
        check.check(&ours, now).expect("ours still passes");
        assert_eq!(counting.1.load(Relaxed), 6, "ours still remembered");
    }
}
