//! The Bearer token flow against a small fake registry and token service on loopback
//! (docker-registry's token auth needs a separate token server, so it is faked here).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oci::{Client, ClientOptions, Credentials, Digest, ErrorKind, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;

/// Serves /v2/r/manifests/v1 to `Bearer good-token` only, and /token to Basic u:p.
async fn fake_registry(tokens_issued: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{host}/token");
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (realm, tokens_issued) = (realm.clone(), tokens_issued.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let line = text.lines().next().unwrap_or("").to_string();
                let auth = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: ").or_else(|| l.strip_prefix("Authorization: ")))
                    .unwrap_or("")
                    .to_string();
                let basic = format!("Basic {}", STANDARD.encode("u:p"));
                let (status, headers, body) = if line.contains(" /token?") {
                    assert!(line.contains("service=fake") && line.contains("scope=repository%3Ar%3Apull"), "{line}");
                    if auth == basic {
                        tokens_issued.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", String::new(), r#"{"token":"good-token"}"#.to_string())
                    } else {
                        (
                            "401 Unauthorized",
                            String::new(),
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad user"}]}"#.into(),
                        )
                    }
                } else if auth == "Bearer good-token" {
                    let digest = Digest::of(MANIFEST.as_bytes());
                    let h = format!(
                        "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {digest}\r\n"
                    );
                    ("200 OK", h, if line.starts_with("HEAD") { String::new() } else { MANIFEST.to_string() })
                } else {
                    let h = format!(
                        "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:r:pull\"\r\n"
                    );
                    ("401 Unauthorized", h, String::new())
                };
                let length = if line.starts_with("HEAD") { MANIFEST.len() } else { body.len() };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {length}\r\nConnection: close\r\n\r\n{}",
                    if line.starts_with("HEAD") { "" } else { body.as_str() }
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    host
}

fn client(credentials: Credentials) -> Client {
    Client::new(ClientOptions { credentials, insecure_http: true, ..Default::default() }).unwrap()
}

#[tokio::test]
async fn bearer_tokens_are_fetched_with_basic_credentials_and_cached() {
    let issued = Arc::new(AtomicUsize::new(0));
    let host = fake_registry(issued.clone()).await;
    let reference = Reference::parse(&format!("{host}/r:v1")).unwrap();

    let good = client(Credentials::basic(&host, "u", "p"));
    let digest = good.resolve(&reference).await.unwrap();
    assert_eq!(digest, Digest::of(MANIFEST.as_bytes()));
    let (bytes, _) = good.fetch_manifest(&reference, "v1").await.unwrap();
    assert_eq!(bytes.as_ref(), MANIFEST.as_bytes());
    assert_eq!(issued.load(Ordering::SeqCst), 1, "the token is reused for the same scope");

    for (name, c) in
        [("anonymous", client(Credentials::anonymous())), ("wrong", client(Credentials::basic(&host, "u", "x")))]
    {
        let e = c.resolve(&reference).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "{name}: {e}");
        assert!(e.to_string().contains(&format!("registry {host} refused access")), "{name}: {e}");
        // The registry's error code, never its message (issue 21, point 5).
        assert!(e.to_string().contains("error code UNAUTHORIZED"), "{name}: {e}");
        assert!(!e.to_string().contains("bad user"), "{name}: {e}");
    }
}
