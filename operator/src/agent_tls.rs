//! The operator's TLS to its agents: one rustls client configuration per identity (the
//! parsed CA, certificate and key shared by every agent connection), a session store of
//! its own for each node, and the connector that dials with them.
//!
//! tonic's own TLS builds a configuration per connection (the PEM parsed again, the CA and
//! the client key copied: ~14 KiB a connection) and its session cache with it, so no
//! reconnect could resume. Here a connection made again (the pool closes the least
//! recently used ones when the fleet is larger than its budget) resumes the node's TLS 1.3
//! session — no certificate sent, verified or signed for, on either side — instead of a
//! full handshake (docs/benchmarks.md, the operator at fleet scale). Each node has its own
//! store because rustls keys sessions by server name, which all agents share unless
//! `--agent-server-name` has `{node}`: one shared store would offer each agent another's
//! ticket. The agent's identity was checked by the full handshake that made the session,
//! and the agent checks the client's certificate again on resumption; a new identity
//! ([`crate::dispatch::AgentPool::set_tls`]) starts with empty stores.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A client identity, the CA that signs agents, and the name agents' certificates carry.
#[derive(Clone)]
pub struct AgentTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl AgentTls {
    /// From PEM: the client certificate chain, its key, the CA certificates that sign
    /// agents, and the name their certificates carry.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8], server_name: &str) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .context("the client certificate is not PEM")?;
        anyhow::ensure!(!chain.is_empty(), "the client certificate file holds no certificate");
        let key = PrivateKeyDer::from_pem_slice(key).context("the client key is not a PEM private key")?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca) {
            roots.add(ca.context("the CA file is not PEM")?).context("the CA certificate is not usable")?;
        }
        anyhow::ensure!(!roots.is_empty(), "the CA file holds no certificate");
        let config = rustls::ClientConfig::builder_with_provider(provider_for_agents())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the client certificate and key do not make an identity")?;
        Self::finish(config, server_name)
    }

    /// From the three PEM files: the client certificate, its key and the CA (for tools
    /// and tests).
    pub fn from_files([cert, key, ca]: [&std::path::Path; 3], server_name: &str) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        Self::from_pem(&read(cert)?, &read(key)?, &read(ca)?, server_name)
    }

    /// Trusts no agent: every handshake fails (tests whose agents are never reached).
    pub fn untrusted() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Self::finish(config, "untrusted.invalid").expect("a valid name")
    }

    /// `server_name` may be a template with `{node}` (`--agent-server-name`): then it is
    /// checked with a node name in its place, and [`AgentTls::for_node`] names each node.
    fn finish(mut config: rustls::ClientConfig, server_name: &str) -> anyhow::Result<Self> {
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Sessions are kept per node (`for_node`), never in the shared configuration.
        config.resumption = Resumption::disabled();
        Ok(Self { config: Arc::new(config), server_name: server_name_of(&server_name.replace("{node}", "node"))? })
    }

    /// This identity for one node: agents' certificates carry `name` (the shared name when
    /// `None`), and the node's TLS sessions are kept in a store of its own (one session
    /// at a time: each resumption brings the next ticket).
    pub fn for_node(&self, name: Option<&str>) -> anyhow::Result<Self> {
        let mut config = (*self.config).clone();
        config.resumption = Resumption::store(Arc::new(OneSession::default()));
        let server_name = match name {
            Some(n) => server_name_of(n)?,
            None => self.server_name.clone(),
        };
        Ok(Self { config: Arc::new(config), server_name })
    }

    /// Dials `addr` and makes the TLS connection (each bounded by `timeout`).
    pub(crate) fn connector(&self, addr: SocketAddr, timeout: Duration, keepalive: Duration) -> AgentConnector {
        AgentConnector {
            tls: tokio_rustls::TlsConnector::from(self.config.clone()),
            name: self.server_name.clone(),
            addr,
            timeout,
            keepalive,
        }
    }
}

/// ring's suites with TLS 1.3's AES-128-GCM-SHA256 first. A fleet past the connection
/// budget makes connections all the time, mostly resumed, so the key schedule's hashing is
/// a good part of a handshake: SHA-256 runs on the CPU's SHA extensions where it has them,
/// the SHA-384 of ring's first choice (AES-256-GCM) never does (docs/benchmarks.md, the
/// operator at fleet scale). Both are TLS 1.3 suites an agent must offer; the agent takes
/// the client's order.
fn provider_for_agents() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let first = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider.cipher_suites.retain(|s| s.suite() != first.suite());
    provider.cipher_suites.insert(0, first);
    Arc::new(provider)
}

fn server_name_of(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_string()).map_err(|_| anyhow::anyhow!("{name:?} is not a valid server name"))
}

/// A TCP connection to one agent and the TLS connection over it (`h2` negotiated).
#[derive(Clone)]
pub(crate) struct AgentConnector {
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Duration,
}

type Io = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<http::Uri> for AgentConnector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timed_out = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"));
            let tcp = tokio::time::timeout(this.timeout, TcpStream::connect(this.addr))
                .await
                .map_err(|_| timed_out("TCP connect"))??;
            tcp.set_nodelay(true)?;
            keep_alive(&tcp, this.keepalive)?;
            let tls = tokio::time::timeout(this.timeout, this.tls.connect(this.name.clone(), tcp))
                .await
                .map_err(|_| timed_out("TLS handshake"))??;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::other("the agent did not agree to HTTP/2 (ALPN h2)"));
            }
            Ok(TokioIo::new(tls))
        })
    }
}

/// TCP keepalive probes after `idle` without traffic (a dead peer is noticed).
fn keep_alive(tcp: &TcpStream, idle: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let set = |level, name, value: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with a valid int option.
        let r = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle.as_secs().clamp(1, i32::MAX as u64) as libc::c_int)
}

/// The TLS session store of one node: its one ticket and key exchange group, no more
/// (rustls' memory cache keeps room for eight tickets per name; kept for every node of a
/// fleet, that was a kilobyte and a half each). TLS 1.2 is never resumed.
#[derive(Debug, Default)]
struct OneSession {
    ticket: std::sync::Mutex<Option<(ServerName<'static>, rustls::client::Tls13ClientSessionValue)>>,
    kx_hint: std::sync::Mutex<Option<rustls::NamedGroup>>,
}

impl rustls::client::ClientSessionStore for OneSession {
    fn set_kx_hint(&self, _: ServerName<'static>, group: rustls::NamedGroup) {
        *self.kx_hint.lock().unwrap_or_else(|e| e.into_inner()) = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        *self.kx_hint.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: rustls::client::Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        *self.ticket.lock().unwrap_or_else(|e| e.into_inner()) = Some((name, value));
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        let mut ticket = self.ticket.lock().unwrap_or_else(|e| e.into_inner());
        match ticket.take() {
            Some((n, value)) if n == *name => Some(value),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_node_name_template_loads_and_each_node_gets_its_name_and_session_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = agent::tls::testpki::TestPki::generate(dir.path());
        let tls = AgentTls::from_files(pki.client_files(), "{node}.node.bpfleet.dev").expect("a template loads");
        let node = tls.for_node(Some("node-1.node.bpfleet.dev")).expect("a node's name");
        assert_eq!(node.server_name, ServerName::try_from("node-1.node.bpfleet.dev").expect("name"));
        assert!(!Arc::ptr_eq(&node.config, &tls.config), "the node has a session store of its own");
        let shared = tls.for_node(None).expect("the shared name");
        assert_eq!(shared.server_name, tls.server_name);
        assert!(tls.for_node(Some("not a name!")).is_err());
        let e = AgentTls::from_files(pki.client_files(), "bad name!").expect_err("an invalid name");
        assert!(e.to_string().contains("not a valid server name"), "{e}");
    }

    /// A node's store keeps one session: the next connection to the agent resumes it (each
    /// brings the next ticket), another node's store has none; every connection is
    /// AES-128-GCM-SHA256, the suite the operator offers first.
    #[tokio::test]
    async fn a_nodes_next_connection_resumes_from_its_own_store() {
        use tower_service::Service;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = agent::tls::testpki::TestPki::generate(dir.path());
        let server = Arc::new(
            agent::tls::ServerTls::load(pki.server_files(), agent::tls::testpki::CLIENT_NAME).expect("server"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut incoming = std::pin::pin!(agent::tls::incoming(listener, server));
            let mut held = Vec::new();
            while let Some(Ok(conn)) = incoming.next().await {
                held.push(conn);
            }
        });
        let tls = AgentTls::from_files(pki.client_files(), agent::tls::DEFAULT_SERVER_NAME).expect("client");
        let kind = |node: &AgentTls| {
            let mut connector = node.connector(addr, Duration::from_secs(5), Duration::from_secs(30));
            async move {
                let mut io =
                    connector.call(http::Uri::from_static("http://agent")).await.expect("connect").into_inner();
                // The ticket comes after the handshake: read it (then nothing more comes).
                let mut buf = [0u8; 64];
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), tokio::io::AsyncReadExt::read(&mut io, &mut buf))
                        .await;
                let conn = io.get_ref().1;
                let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
                assert_eq!(
                    suite,
                    Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
                    "the suite the client puts first"
                );
                conn.handshake_kind()
            }
        };
        let (a, b) = (tls.for_node(None).expect("a"), tls.for_node(None).expect("b"));
        assert_eq!(kind(&a).await, Some(rustls::HandshakeKind::Full));
        assert_eq!(kind(&a).await, Some(rustls::HandshakeKind::Resumed), "the second connection resumes");
        assert_eq!(kind(&a).await, Some(rustls::HandshakeKind::Resumed), "each brings the next ticket");
        assert_eq!(kind(&b).await, Some(rustls::HandshakeKind::Full), "another node's store has no session");
    }
}
