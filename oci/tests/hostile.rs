//! A hostile registry (issue 21, point 5): a small fake on loopback that redirects, names
//! token realms, answers with bodies, lists thousands of signatures or never finishes.
//! The registry itself listens on 127.0.0.1, which stays usable: the rule is about
//! where it sends the client *besides* itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oci::manifest::{Descriptor, Manifest, OCI_CONFIG, OCI_MANIFEST};
use oci::{Client, ClientOptions, Digest, ErrorKind, Reference};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Handler = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// A server on `ip` answering each request line with `handler(line)` (a whole HTTP
/// answer); counts requests. Returns (host:port, requests).
async fn serve(ip: &str, handler: Handler) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let resp = handler(text.lines().next().unwrap_or(""));
                let _ = sock.write_all(resp.as_bytes()).await;
                // Hold the connection until the client drops it (an answer that
                // promised more bytes than it sent never ends).
                while let Ok(n) = sock.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (host, count)
}

/// A listener that records connections and never answers: where an SSRF would land.
async fn victim(ip: &str) -> (u16, Arc<AtomicUsize>) {
    let (host, count) = serve(ip, Arc::new(|_| String::new())).await;
    (host.rsplit_once(':').unwrap().1.parse().unwrap(), count)
}

fn answer(status: &str, headers: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

fn redirect_to(location: String) -> Handler {
    Arc::new(move |_| answer("307 Temporary Redirect", &format!("Location: {location}\r\n"), ""))
}

fn client(options: ClientOptions) -> Client {
    Client::new(ClientOptions { insecure_http: true, ..options }).unwrap()
}

async fn pull(c: &Client, host: &str) -> oci::Error {
    let r = Reference::parse(&format!("{host}/r@{}", Digest::of(b"x"))).unwrap();
    c.pull(&r, &oci::Platform::linux("amd64")).await.unwrap_err()
}

#[tokio::test]
async fn a_redirect_to_a_private_address_is_refused_and_nothing_connects_there() {
    // Another loopback address and port than the registry's: "elsewhere", though on loopback.
    let (port, hits) = victim("127.0.0.2").await;
    for location in [
        format!("https://127.0.0.2:{port}/latest/meta-data/"),
        format!("https://localhost:{port}/internal"), // a name of private addresses
        format!("https://[::ffff:127.0.0.2]:{port}/"),
        format!("http://127.0.0.2:{port}/"), // plain HTTP elsewhere, even from an insecure registry
    ] {
        let (host, _) = serve("127.0.0.1", redirect_to(location.clone())).await;
        let e = pull(&client(ClientOptions::default()), &host).await;
        assert_eq!(e.kind(), ErrorKind::RedirectRefused, "{location}: {e}");
        assert!(!e.to_string().contains("meta-data") && !e.to_string().contains("internal"), "{e}");
        assert!(!e.is_transient(), "a refusal is not retried: {e}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no connection ever reached the private address");
}

#[tokio::test]
async fn a_token_realm_on_a_link_local_address_is_refused() {
    let (host, _) = serve(
        "127.0.0.1",
        Arc::new(|_| {
            answer(
                "401 Unauthorized",
                "WWW-Authenticate: Bearer realm=\"https://169.254.169.254/latest/meta-data/iam\",service=\"x\"\r\n",
                "",
            )
        }),
    )
    .await;
    let e = pull(&client(ClientOptions::default()), &host).await;
    assert_eq!(e.kind(), ErrorKind::RedirectRefused, "{e}");
    assert!(e.to_string().contains("169.254.169.254") && !e.to_string().contains("meta-data"), "{e}");
}

#[tokio::test]
async fn allowed_ranges_are_followed() {
    let (port, hits) = victim("127.0.0.2").await;
    let (host, _) = serve("127.0.0.1", redirect_to(format!("https://localhost:{port}/blob"))).await;
    let options = ClientOptions {
        allow_private_ranges: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    // localhost resolves to 127.0.0.1 (or ::1), not 127.0.0.2: connect to the victim by
    // its literal instead, once allowed.
    let (host2, _) = serve("127.0.0.1", redirect_to(format!("https://127.0.0.2:{port}/blob"))).await;
    let e = pull(&client(options.clone()), &host2).await;
    assert_ne!(e.kind(), ErrorKind::RedirectRefused, "{e}");
    assert!(hits.load(Ordering::SeqCst) >= 1, "the allowed address was connected to");
    let e = pull(&client(options), &host).await;
    assert_ne!(e.kind(), ErrorKind::RedirectRefused, "an allowed name: {e}");
}

#[tokio::test]
async fn error_bodies_never_reach_the_message() {
    let (host, _) = serve(
        "127.0.0.1",
        Arc::new(|line| {
            if line.contains("/manifests/") {
                answer("500 Internal Server Error", "", "root:x:0:0:SECRET-FROM-AN-INTERNAL-SERVICE")
            } else {
                String::new()
            }
        }),
    )
    .await;
    let e = pull(&client(ClientOptions::default()), &host).await;
    assert!(!e.to_string().contains("SECRET"), "{e}");
    assert!(e.to_string().contains("500") && e.to_string().contains("Internal Server Error"), "{e}");
    let (host, _) = serve(
        "127.0.0.1",
        Arc::new(|_| {
            answer(
                "404 Not Found",
                "",
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"SECRET"},{"code":"<script>","message":"x"}]}"#,
            )
        }),
    )
    .await;
    let e = pull(&client(ClientOptions::default()), &host).await;
    assert!(!e.to_string().contains("SECRET") && !e.to_string().contains("script"), "{e}");
}

#[tokio::test]
async fn a_signature_manifest_of_thousands_of_layers_is_refused_unread() {
    let layers: Vec<Descriptor> = (0..5000)
        .map(|i| Descriptor::of(oci::sign::SIMPLE_SIGNING_MEDIA_TYPE, format!("payload {i}").as_bytes()))
        .collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::of(OCI_CONFIG, b"{}"),
        layers,
        annotations: Default::default(),
    };
    let body = serde_json::to_string(&manifest).unwrap();
    let (host, requests) = serve(
        "127.0.0.1",
        Arc::new(move |line| {
            if line.contains(".sig") {
                answer("200 OK", &format!("Content-Type: {OCI_MANIFEST}\r\n"), &body)
            } else {
                answer("404 Not Found", "", "")
            }
        }),
    )
    .await;
    let r = Reference::parse(&format!("{host}/r")).unwrap();
    let key = oci::PublicKey::parse_pem(oci::generate_key_pair().unwrap().1.as_bytes()).unwrap();
    let e = client(ClientOptions::default()).verify(&r, &Digest::of(b"x"), &key).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureInvalid, "{e}");
    assert!(e.to_string().contains("5000 signatures; at most 16"), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "only the signature manifest was fetched");
}

#[tokio::test]
async fn a_registry_that_never_finishes_meets_the_image_deadline() {
    // Answers headers, then trickles nothing: each request's own timeout is long.
    let (host, _) =
        serve("127.0.0.1", Arc::new(|_| "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_string())).await;
    let options = ClientOptions {
        timeout: Duration::from_secs(60),
        image_deadline: Duration::from_millis(300),
        ..Default::default()
    };
    let start = Instant::now();
    let e = pull(&client(options), &host).await;
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(e.to_string().contains("deadline"), "{e}");
}

#[tokio::test]
async fn pulls_share_one_budget_across_clients() {
    let budget = oci::PullBudget::new(1, 1 << 20);
    // One pull holds the only permit (a registry that never finishes)...
    let (slow, _) =
        serve("127.0.0.1", Arc::new(|_| "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_string())).await;
    let (fast, fast_hits) = serve("127.0.0.1", Arc::new(|_| answer("404 Not Found", "", ""))).await;
    let a =
        client(ClientOptions { budget: budget.clone(), image_deadline: Duration::from_secs(1), ..Default::default() });
    let b = client(ClientOptions { budget: budget.clone(), ..Default::default() });
    let first = tokio::spawn(async move { pull(&a, &slow).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so another client's pull waits for it, without a request.
    let second = tokio::spawn(async move { pull(&b, &fast).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fast_hits.load(Ordering::SeqCst), 0, "the second pull waits for the budget");
    first.await.unwrap();
    let e = second.await.unwrap();
    assert_eq!(e.kind(), ErrorKind::ImageNotFound, "{e}");
    assert_eq!(budget.available_pulls(), 1);
}
