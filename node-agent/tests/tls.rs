//! mTLS of the agent's gRPC server, end to end: a real tonic server with the health service
//! on 127.0.0.1, real tonic and tokio-rustls clients, certificates from `testpki`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::tls::testpki::{CLIENT_NAME, TestPki};
use agent::tls::{self, DEFAULT_SERVER_NAME, ServerTls, TlsError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Fixture {
    _dir: tempfile::TempDir,
    pki: TestPki,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    Fixture { _dir: dir, pki }
}

/// A running server; stops when dropped.
struct TestServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn serve(tls: Arc<ServerTls>, handshake_timeout: Duration) -> TestServer {
    serve_limited(tls, tls::Limits { handshake_timeout, ..Default::default() }).await
}

async fn serve_limited(tls: Arc<ServerTls>, limits: tls::Limits) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tls::incoming_with(listener, tls, limits);
    tokio::spawn(async move {
        Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .expect("server");
    });
    TestServer { addr, _stop: stop }
}

async fn serve_pki(pki: &TestPki, required_client_name: &str) -> (Arc<ServerTls>, TestServer) {
    let tls = Arc::new(ServerTls::load(pki.server_files(), required_client_name).expect("load server TLS"));
    let server = serve(tls.clone(), tls::HANDSHAKE_TIMEOUT).await;
    (tls, server)
}

/// One gRPC health check over a fresh connection.
async fn health_check(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel: Channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(|status| format!("check: {status:?}"))?;
    assert_eq!(response.into_inner().status, 1, "SERVING");
    Ok(())
}

/// The server refused with this TLS alert, not the client's own doing.
fn assert_refused(result: Result<(), String>, alert: &str) {
    let error = result.expect_err("the server must refuse");
    assert!(error.contains(alert), "expected a {alert} alert, got {error}");
}

fn client_tls(pki: &TestPki, cert: &Path, key: &Path) -> ClientTlsConfig {
    tls::client_config(cert, key, &pki.ca_cert, DEFAULT_SERVER_NAME).expect("client config")
}

/// A raw mTLS handshake as the operator; returns the certificate the server presented.
async fn server_cert_seen(addr: SocketAddr, pki: &TestPki) -> CertificateDer<'static> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca_cert).expect("CA")).expect("add CA");
    let chain = CertificateDer::pem_file_iter(&pki.client_cert).expect("client cert").map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&pki.client_key).expect("client key");
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(DEFAULT_SERVER_NAME).expect("name"), tcp)
        .await
        .expect("handshake");
    stream.get_ref().1.peer_certificates().expect("server presented a certificate")[0].clone()
}

fn pem_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("read PEM")
}

#[tokio::test]
async fn operator_client_passes_health_check() {
    let f = fixture();
    let (_tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    health_check(server.addr, Some(f.pki.client_config())).await.expect("health check");
}

#[tokio::test]
async fn plaintext_client_is_refused() {
    let f = fixture();
    let (_tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    assert!(health_check(server.addr, None).await.is_err());
    // The failed handshake did not stop the accept loop.
    health_check(server.addr, Some(f.pki.client_config())).await.expect("health check after plaintext");
}

#[tokio::test]
async fn tls_client_without_certificate_is_refused() {
    let f = fixture();
    let (_tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    let ca = std::fs::read(&f.pki.ca_cert).expect("CA");
    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(DEFAULT_SERVER_NAME);
    assert_refused(health_check(server.addr, Some(anonymous)).await, "CertificateRequired");
}

#[tokio::test]
async fn client_signed_by_foreign_ca_is_refused() {
    let f = fixture();
    let (_tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    let foreign = client_tls(&f.pki, &f.pki.foreign_client_cert, &f.pki.foreign_client_key);
    assert_refused(health_check(server.addr, Some(foreign)).await, "UnknownCA");
}

#[tokio::test]
async fn required_client_name_admits_only_that_name() {
    let f = fixture();
    let (_tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    let (cert, key) = f.pki.issue_client("someone-else");
    let impostor = client_tls(&f.pki, &cert, &key);
    assert_refused(health_check(server.addr, Some(impostor)).await, "BadCertificate");
    health_check(server.addr, Some(f.pki.client_config())).await.expect("operator passes");
}

#[tokio::test]
async fn reload_now_serves_the_reissued_certificate() {
    let f = fixture();
    let (tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    let old = server_cert_seen(server.addr, &f.pki).await;
    assert_eq!(old, pem_der(&f.pki.server_cert));

    let new = f.pki.reissue_server_cert();
    assert_ne!(new, old);
    tls.reload_now().expect("reload");
    assert_eq!(server_cert_seen(server.addr, &f.pki).await, new);
    health_check(server.addr, Some(f.pki.client_config())).await.expect("health check after reload");
}

#[tokio::test]
async fn poller_picks_up_a_reissued_certificate_and_survives_a_broken_one() {
    let f = fixture();
    let (tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    let _reloader = tls.spawn_reloader(Duration::from_millis(50));

    let new = f.pki.reissue_server_cert();
    wait_for_server_cert(server.addr, &f.pki, &new).await;

    // Garbage over the certificate: the poller rejects it and the server keeps the last good one.
    std::fs::write(&f.pki.server_cert, "not a certificate\n").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server_cert_seen(server.addr, &f.pki).await, new);
    health_check(server.addr, Some(f.pki.client_config())).await.expect("health check with broken file");

    // The poller is still alive: a good certificate is picked up again.
    let newer = f.pki.reissue_server_cert();
    wait_for_server_cert(server.addr, &f.pki, &newer).await;
}

async fn wait_for_server_cert(addr: SocketAddr, pki: &TestPki, expected: &CertificateDer<'static>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while server_cert_seen(addr, pki).await != *expected {
        assert!(tokio::time::Instant::now() < deadline, "the poller did not pick up the new certificate");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn broken_pem_is_reported_and_the_old_certificate_kept() {
    let f = fixture();
    let (tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    let old = pem_der(&f.pki.server_cert);

    std::fs::write(&f.pki.server_cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n").expect("write");
    let error = tls.reload_now().expect_err("broken PEM must be refused").to_string();
    assert!(error.contains("--tls-cert") && error.contains("server.pem"), "{error}");

    assert_eq!(server_cert_seen(server.addr, &f.pki).await, old);
    health_check(server.addr, Some(f.pki.client_config())).await.expect("still serving");
}

#[tokio::test]
async fn stalled_handshake_neither_blocks_others_nor_lingers() {
    let f = fixture();
    let tls = Arc::new(ServerTls::load(f.pki.server_files(), CLIENT_NAME).expect("load"));
    let server = serve(tls, Duration::from_millis(300)).await;

    // Connects and says nothing.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    health_check(server.addr, Some(f.pki.client_config())).await.expect("health check beside a silent peer");

    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the silent connection was not closed: {read:?}");
}

/// A TCP connection from `source` (a loopback address) that says nothing.
async fn silent_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind a loopback source address");
    socket.connect(addr).await.expect("connect")
}

/// Whether the server closed `conn` within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1];
    matches!(tokio::time::timeout(within, conn.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

fn strict_limits() -> tls::Limits {
    tls::Limits {
        handshake_timeout: Duration::from_secs(60),
        max_pending: 4,
        handshake_grace: Duration::from_secs(60),
        max_pending_per_peer: 2,
        max_connections: 2,
    }
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_handshakes() {
    let f = fixture();
    let tls = Arc::new(ServerTls::load(f.pki.server_files(), CLIENT_NAME).expect("load"));
    let server = serve_limited(tls, strict_limits()).await;
    let mut held = vec![silent_from([127, 0, 0, 2], server.addr).await, silent_from([127, 0, 0, 2], server.addr).await];
    // Let the accept loop register both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = silent_from([127, 0, 0, 2], server.addr).await;
    assert!(closed_within(&mut third, Duration::from_secs(2)).await, "a third handshake from one address was admitted");
    for conn in &mut held {
        assert!(!closed_within(conn, Duration::from_millis(100)).await, "a handshake within the share was dropped");
    }
    health_check(server.addr, Some(f.pki.client_config())).await.expect("the operator beside them");
}

#[tokio::test]
async fn a_quiet_address_gets_a_slot_when_silent_peers_hold_them_all() {
    let f = fixture();
    let tls = Arc::new(ServerTls::load(f.pki.server_files(), CLIENT_NAME).expect("load"));
    let server = serve_limited(tls, strict_limits()).await;
    // Every slot held by two silent addresses, well within the handshake timeout and grace.
    let mut silent = Vec::new();
    for source in [[127, 0, 0, 2], [127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 3]] {
        silent.push(silent_from(source, server.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A newcomer from a held address does not take a slot from an equal share...
    let mut newcomer = silent_from([127, 0, 0, 3], server.addr).await;
    assert!(closed_within(&mut newcomer, Duration::from_secs(2)).await, "the newcomer pushed out an equal share");
    // ...but the operator, from an address with none, gets one at once.
    health_check(server.addr, Some(f.pki.client_config())).await.expect("the operator was kept out");
    let mut dropped = 0;
    for conn in &mut silent {
        dropped += usize::from(closed_within(conn, Duration::from_millis(200)).await);
    }
    assert_eq!(dropped, 1, "exactly one silent handshake made room");
}

#[tokio::test]
async fn connections_beyond_the_bound_are_closed_and_a_freed_slot_is_reused() {
    let f = fixture();
    let tls = Arc::new(ServerTls::load(f.pki.server_files(), CLIENT_NAME).expect("load"));
    let server = serve_limited(tls, strict_limits()).await;
    let channel = || async {
        Endpoint::from_shared(format!("https://{}", server.addr))
            .expect("endpoint")
            .tls_config(f.pki.client_config())
            .expect("tls")
            .timeout(Duration::from_secs(2))
            .connect()
            .await
    };
    let check =
        |ch: Channel| async move { HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await };
    let first = channel().await.expect("first connection");
    check(first.clone()).await.expect("first");
    let second = channel().await.expect("second connection");
    check(second.clone()).await.expect("second");
    // The third completes its handshake and is closed: the server holds two.
    let third = match channel().await {
        Ok(ch) => check(ch).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(third.is_err(), "a third connection was served beyond the bound of two");
    drop(first);
    let mut again = Err("not tried".to_string());
    for _ in 0..40 {
        again = match channel().await {
            Ok(ch) => check(ch).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    again.expect("the slot of the closed connection was not given back");
    check(second).await.expect("the second connection kept working throughout");
}

#[test]
fn errors_name_the_flag_and_the_file() {
    let f = fixture();
    let files = f.pki.server_files();
    let message = |files: tls::TlsFiles| ServerTls::load(files, CLIENT_NAME).expect_err("must fail").to_string();

    let missing = f.pki.dir.join("missing.pem");
    let error = message(tls::TlsFiles { cert: missing.clone(), ..files.clone() });
    assert!(error.starts_with(&format!("cannot read --tls-cert {}: ", missing.display())), "{error}");

    // A certificate where the key should be.
    let error = message(tls::TlsFiles { key: f.pki.ca_cert.clone(), ..files.clone() });
    assert!(error.starts_with(&format!("no private key found in --tls-key {}", f.pki.ca_cert.display())), "{error}");

    let empty = f.pki.dir.join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let error = message(tls::TlsFiles { client_ca: empty.clone(), ..files.clone() });
    assert!(error.starts_with(&format!("no certificates in --tls-client-ca {}", empty.display())), "{error}");

    let error = message(tls::TlsFiles { key: f.pki.client_key.clone(), ..files.clone() });
    assert!(error.contains("does not belong to the certificate in --tls-cert"), "{error}");

    let error = ServerTls::load(files, "not a name!").expect_err("bad name").to_string();
    assert!(error.contains("not a valid DNS name"), "{error}");

    let error = tls::client_config(&f.pki.client_cert, &f.pki.client_key, &missing, DEFAULT_SERVER_NAME)
        .expect_err("missing CA")
        .to_string();
    assert!(error.starts_with("cannot read --tls-ca "), "{error}");
    assert!(matches!(
        tls::client_config(&f.pki.client_cert, &f.pki.server_key, &f.pki.ca_cert, DEFAULT_SERVER_NAME),
        Err(TlsError::KeyMismatch { .. })
    ));
}

/// A raw mTLS handshake with a shared client configuration (its session cache): how the
/// server took it, full or resumed. Reads briefly afterwards so the client takes in the
/// session ticket the server sends once the handshake is over.
async fn handshake_kind(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from(DEFAULT_SERVER_NAME).expect("name"), tcp)
        .await
        .expect("handshake");
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    let (_, conn) = stream.get_ref();
    assert!(conn.peer_certificates().is_some_and(|c| !c.is_empty()), "the agent's certificate is known");
    conn.handshake_kind().expect("handshake done")
}

fn operator_config(pki: &TestPki) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca_cert).expect("CA")).expect("add CA");
    let chain = CertificateDer::pem_file_iter(&pki.client_cert).expect("client cert").map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&pki.client_key).expect("client key");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn a_reconnect_resumes_its_session_until_the_files_change() {
    let f = fixture();
    let (tls, server) = serve_pki(&f.pki, CLIENT_NAME).await;
    let config = operator_config(&f.pki);
    assert_eq!(handshake_kind(server.addr, &config).await, rustls::HandshakeKind::Full);
    assert_eq!(handshake_kind(server.addr, &config).await, rustls::HandshakeKind::Resumed, "second connection");
    assert_eq!(
        handshake_kind(server.addr, &config).await,
        rustls::HandshakeKind::Resumed,
        "each brings the next ticket"
    );

    // New files, a new configuration: tickets of the old one are not honoured.
    f.pki.reissue_server_cert();
    tls.reload_now().expect("reload");
    assert_eq!(handshake_kind(server.addr, &config).await, rustls::HandshakeKind::Full, "after the files changed");
    assert_eq!(handshake_kind(server.addr, &config).await, rustls::HandshakeKind::Resumed);

    // Another client (no session) still goes through the full check: a foreign CA is refused.
    let foreign = client_tls(&f.pki, &f.pki.foreign_client_cert, &f.pki.foreign_client_key);
    assert!(health_check(server.addr, Some(foreign)).await.is_err(), "a foreign client certificate is refused");
}
