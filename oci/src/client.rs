//! HTTP to registries: TLS (system roots plus an optional CA file) or plain HTTP when
//! asked, redirects, size-bounded bodies, timeouts, and authentication (anonymous,
//! Basic, and the Bearer token flow a `WWW-Authenticate` challenge starts).
//!
//! Against a hostile registry: redirects and token realms go only where
//! [`crate::policy`] allows (HTTPS, public addresses, unless it is the registry
//! itself); answers are read within a [`PullBudget`] shared by every client of the
//! process; an error answer's body never reaches a message, only its status and the
//! registry's error codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, LOCATION, USER_AGENT, WWW_AUTHENTICATE,
};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::auth::{Challenge, Credentials, TokenResponse};
use crate::budget::PullBudget;
use crate::error::{Error, Result};
use crate::policy::{self, Cidr};

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Credentials by registry host; anonymous where there are none.
    pub credentials: Credentials,
    /// Talk plain HTTP instead of HTTPS (for loopback test registries only).
    pub insecure_http: bool,
    /// PEM certificates to trust in addition to the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Per request, including reading the answer.
    pub timeout: Duration,
    /// Per image: resolving, pulling or verifying one image as a whole.
    pub image_deadline: Duration,
    /// Special address ranges (private, loopback, link-local…) that redirects and token
    /// realms may lead to anyway. The registry's own host needs no entry.
    pub allow_private_ranges: Vec<Cidr>,
    /// Pulls and bytes in flight; share one among every client of a process.
    pub budget: Arc<PullBudget>,
}

/// Pulls at once and bytes in flight of a client made with `ClientOptions::default()`.
pub const DEFAULT_MAX_PULLS: usize = 4;
pub const DEFAULT_MAX_BYTES_IN_FLIGHT: u64 = 64 << 20;

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: Credentials::anonymous(),
            insecure_http: false,
            ca_pem: None,
            timeout: Duration::from_secs(30),
            image_deadline: Duration::from_secs(120),
            allow_private_ranges: Vec::new(),
            budget: PullBudget::new(DEFAULT_MAX_PULLS, DEFAULT_MAX_BYTES_IN_FLIGHT),
        }
    }
}

/// Pull or push access to a repository (the token scope's action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Pull,
    Push,
}

/// A registry client. Cheap to clone; tokens are cached per registry and scope.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

type Http = HyperClient<HttpsConnector<HttpConnector<crate::dns::Resolver>>, Full<Bytes>>;

struct Inner {
    /// To the registry itself, wherever it is.
    http: Http,
    /// To anywhere else a registry points (redirects, token realms): public addresses only.
    elsewhere: Http,
    options: ClientOptions,
    /// (registry, scope) -> Authorization header value. Scope "*" for Basic.
    auth: Mutex<HashMap<(String, String), String>>,
}

/// An answer, its body read (up to a limit).
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

const MAX_ERROR_BODY: u64 = 64 << 10;
const MAX_REDIRECTS: usize = 5;

impl Client {
    pub fn new(options: ClientOptions) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are not fatal: a private CA may be all we need.
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = &options.ca_pem {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::InvalidKey { reason: format!("the CA file is not PEM certificates: {e}") })?;
            if certs.is_empty() {
                return Err(Error::InvalidKey { reason: "the CA file holds no PEM certificate".into() });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| Error::InvalidKey {
                    reason: format!("a certificate in the CA file is unusable: {e}"),
                })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidKey { reason: format!("TLS setup: {e}") })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let resolver = crate::dns::Resolver::from_system();
        let build = |resolver: crate::dns::Resolver| -> Http {
            let mut tcp = HttpConnector::new_with_resolver(resolver);
            tcp.enforce_http(false);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(tcp);
            HyperClient::builder(TokioExecutor::new()).build(connector)
        };
        let elsewhere = build(resolver.restricted(&options.allow_private_ranges));
        let http = build(resolver);
        Ok(Client { inner: Arc::new(Inner { http, elsewhere, options, auth: Mutex::new(HashMap::new()) }) })
    }

    /// Run `work` (one image's resolve, pull or verification) holding one of the
    /// budget's pulls, within the image deadline.
    pub(crate) async fn image_work<T>(
        &self,
        registry: &str,
        what: &str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let deadline = self.inner.options.image_deadline;
        let budget = self.inner.options.budget.clone();
        let _permit = budget.pull().await;
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::RegistryUnreachable {
                registry: registry.to_string(),
                detail: format!("{what} did not complete within the deadline of {}s per image", deadline.as_secs()),
            }),
        }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// `scheme://host` of a registry's API.
    pub(crate) fn base(&self, host: &str) -> String {
        let scheme = if self.inner.options.insecure_http { "http" } else { "https" };
        format!("{scheme}://{host}")
    }

    /// A request to `registry` (`host[:port]` of the API) on behalf of `repository`,
    /// authenticating when challenged. `target` is a path (`/v2/…`) or a full URL (an
    /// upload location). Non-2xx answers are returned, bodies cut to a short prefix.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn request(
        &self,
        registry: &str,
        repository: &str,
        access: Access,
        method: Method,
        target: &str,
        headers: &[(HeaderName, String)],
        body: Bytes,
        limit: u64,
        what: &str,
    ) -> Result<Response> {
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else {
            format!("{}{target}", self.base(registry))
        };
        let scope = match access {
            Access::Pull => format!("repository:{repository}:pull"),
            Access::Push => format!("repository:{repository}:pull,push"),
        };
        let cached = self.cached_auth(registry, &scope);
        let resp = self.send(registry, &method, &url, headers, cached.as_deref(), &body, limit, what).await?;
        if resp.status != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp.header(WWW_AUTHENTICATE.as_str()).unwrap_or("").to_string();
        let authorization = self.authenticate(registry, &challenge, &scope).await?;
        let resp = self.send(registry, &method, &url, headers, Some(&authorization), &body, limit, what).await?;
        if resp.status == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthorized {
                registry: registry.to_string(),
                detail: format!("credentials rejected for {what}: {}", error_detail(&resp)),
            });
        }
        Ok(resp)
    }

    fn cached_auth(&self, registry: &str, scope: &str) -> Option<String> {
        let cache = self.inner.auth.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&(registry.to_string(), scope.to_string()))
            .or_else(|| cache.get(&(registry.to_string(), "*".into())))
            .cloned()
    }

    /// Answer a challenge: Basic with our credentials, or a token from the realm.
    async fn authenticate(&self, registry: &str, challenge: &str, scope: &str) -> Result<String> {
        let unauthorized = |detail: String| Error::Unauthorized { registry: registry.to_string(), detail };
        let creds = self.inner.options.credentials.for_registry(registry);
        let (key_scope, header) = match Challenge::parse(challenge) {
            Some(Challenge::Basic) => {
                let creds = creds.ok_or_else(|| {
                    unauthorized("the registry requires a user name and password and none were given for it".into())
                })?;
                ("*".to_string(), creds.header())
            }
            Some(Challenge::Bearer { realm, service, scope: asked }) => {
                let scope = asked.unwrap_or_else(|| scope.to_string());
                let mut url = realm.clone();
                let mut sep = if realm.contains('?') { '&' } else { '?' };
                for (k, v) in [("service", service.as_deref()), ("scope", Some(scope.as_str()))] {
                    if let Some(v) = v {
                        url.push_str(&format!("{sep}{k}={}", percent_encode(v)));
                        sep = '&';
                    }
                }
                let auth = creds.map(|c| c.header());
                let resp = self
                    .send(registry, &Method::GET, &url, &[], auth.as_deref(), &Bytes::new(), 1 << 20, "a token")
                    .await?;
                // Messages name the realm's host only: the rest of the URL is the registry's text.
                let at = policy::host_of(&realm);
                if !resp.status.is_success() {
                    return Err(unauthorized(format!(
                        "the token service at {at} answered HTTP {} ({}){}",
                        resp.status.as_u16(),
                        error_detail(&resp),
                        if creds.is_none() { "; no credentials were given for this registry" } else { "" }
                    )));
                }
                let token: TokenResponse = serde_json::from_slice(&resp.body).map_err(|e| {
                    unauthorized(format!(
                        "the token service at {at} answered no token (JSON error at column {})",
                        e.column()
                    ))
                })?;
                let token = token
                    .token
                    .or(token.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| unauthorized(format!("the token service at {at} answered no token")))?;
                (scope, format!("Bearer {token}"))
            }
            None => {
                return Err(unauthorized(if challenge.is_empty() {
                    "HTTP 401 without a WWW-Authenticate challenge".into()
                } else {
                    format!("unsupported authentication challenge {challenge:?}")
                }));
            }
        };
        let mut cache = self.inner.auth.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert((registry.to_string(), key_scope), header.clone());
        Ok(header)
    }

    /// One request, following redirects (without our Authorization once the host
    /// changes: blob storage behind a redirect must not see registry credentials). Every
    /// hop, the first included (a token realm), is checked by [`policy::check_target`]
    /// against `registry`, the registry's own `host[:port]`.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        registry: &str,
        method: &Method,
        url: &str,
        headers: &[(HeaderName, String)],
        authorization: Option<&str>,
        body: &Bytes,
        limit: u64,
        what: &str,
    ) -> Result<Response> {
        let timeout = self.inner.options.timeout;
        let unreachable = |detail: String| Error::RegistryUnreachable { registry: registry.to_string(), detail };
        let options = &self.inner.options;
        let work = async {
            let mut url: Uri = url
                .parse()
                .map_err(|_| unreachable(format!("unusable URL for {what} (host {})", policy::host_of(url))))?;
            let first_host = url.authority().map(|a| a.to_string());
            for _ in 0..=MAX_REDIRECTS {
                policy::check_target(&url, registry, options.insecure_http, &options.allow_private_ranges)
                    .map_err(|reason| Error::RedirectRefused { registry: registry.to_string(), reason })?;
                let http = if policy::is_own(&url, registry) { &self.inner.http } else { &self.inner.elsewhere };
                let mut req = Request::builder().method(method.clone()).uri(url.clone());
                for (name, value) in headers {
                    req = req.header(name, value);
                }
                req = req.header(USER_AGENT, concat!("bpfleet-oci/", env!("CARGO_PKG_VERSION")));
                if let Some(a) = authorization
                    && url.authority().map(|x| x.to_string()) == first_host
                {
                    req = req.header(AUTHORIZATION, a);
                }
                if !body.is_empty() || *method == Method::PUT || *method == Method::POST {
                    req = req.header(CONTENT_LENGTH, HeaderValue::from(body.len()));
                }
                let req = req.body(Full::new(body.clone())).map_err(|e| unreachable(format!("bad request: {e}")))?;
                let resp = http.request(req).await.map_err(|e| refused_or_unreachable(registry, &e))?;
                let status = resp.status();
                if status.is_redirection() && (*method == Method::GET || *method == Method::HEAD) {
                    let location = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("");
                    url = join_location(&url, location).ok_or_else(|| {
                        unreachable(format!("HTTP {} to {what} redirects to an unusable location", status.as_u16()))
                    })?;
                    continue;
                }
                let headers = resp.headers().clone();
                let limit = if status.is_success() { limit } else { MAX_ERROR_BODY };
                if status.is_success()
                    && let Some(len) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    && len > limit
                    && *method != Method::HEAD
                {
                    return Err(Error::TooLarge { what: format!("{what} ({len} bytes)"), limit });
                }
                // Reserve what this answer may bring before reading it: the declared
                // length when it is within the limit, else the limit.
                let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let _in_flight = options.budget.bytes(declared.map_or(limit, |n| n.min(limit))).await;
                let mut body = resp.into_body();
                let mut buf = Vec::new();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| unreachable(format!("reading the answer: {}", error_chain(&e))))?;
                    if let Ok(data) = frame.into_data() {
                        if (buf.len() + data.len()) as u64 > limit {
                            if !status.is_success() {
                                buf.extend_from_slice(&data[..(limit as usize).saturating_sub(buf.len())]);
                                break;
                            }
                            return Err(Error::TooLarge { what: what.to_string(), limit });
                        }
                        buf.extend_from_slice(&data);
                    }
                }
                return Ok(Response { status, headers, body: buf.into() });
            }
            Err(unreachable(format!("more than {MAX_REDIRECTS} redirects")))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!("no answer within {}s to {what}", timeout.as_secs()))),
        }
    }
}

/// A registry's error answer, short and never its text: the distribution API's error
/// codes (`MANIFEST_UNKNOWN`, `DENIED`, …: upper-case words, at most 4) when it gave
/// some, else the status's reason phrase. A body (or an error message in it) is the
/// registry's text, and through a redirect possibly another service's: echoed into
/// status, it would make the operator a reader of whatever it can reach.
pub(crate) fn error_detail(resp: &Response) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
    }
    let is_code = |c: &str| (1..=32).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    let reason = resp.status.canonical_reason().unwrap_or("error").to_string();
    match serde_json::from_slice::<Errors>(&resp.body) {
        Ok(e) => {
            let mut codes: Vec<&str> = e.errors.iter().map(|i| i.code.as_str()).filter(|c| is_code(c)).collect();
            codes.dedup();
            codes.truncate(4);
            if codes.is_empty() { reason } else { format!("{reason}, error code {}", codes.join(", ")) }
        }
        Err(_) => reason,
    }
}

/// A connection error: refused by the address policy (a name of private addresses
/// only), or unreachable.
fn refused_or_unreachable(registry: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return Error::RedirectRefused { registry: registry.to_string(), reason: io.to_string() };
        }
        source = s.source();
    }
    Error::RegistryUnreachable { registry: registry.to_string(), detail: with_hint(error_chain(e)) }
}

/// The error and its sources on one line ("connection refused" sits several levels down).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Say what to do about the connection errors users meet most.
fn with_hint(detail: String) -> String {
    let lower = detail.to_ascii_lowercase();
    let hint = if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        "; the registry seems to speak plain HTTP: allow that explicitly (insecure HTTP) for loopback registries only"
    } else if lower.contains("certificate") || lower.contains("unknownissuer") {
        "; the registry's certificate is not trusted: give its CA certificate (CA file)"
    } else if lower.contains("connection refused") {
        "; nothing listens there: is the registry running, and are host and port right?"
    } else {
        ""
    };
    format!("{detail}{hint}")
}

/// A `Location` header, absolute or relative to `base`.
pub(crate) fn join_location(base: &Uri, location: &str) -> Option<Uri> {
    if location.is_empty() {
        return None;
    }
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    Uri::builder().scheme(base.scheme()?.clone()).authority(base.authority()?.clone()).path_and_query(path).build().ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_encoding() {
        let base: Uri = "http://127.0.0.1:5000/v2/x/blobs/uploads/".parse().unwrap();
        assert_eq!(
            join_location(&base, "/v2/x/blobs/uploads/abc?_state=1").unwrap().to_string(),
            "http://127.0.0.1:5000/v2/x/blobs/uploads/abc?_state=1"
        );
        assert_eq!(
            join_location(&base, "https://s3.example/b?sig=1").unwrap().to_string(),
            "https://s3.example/b?sig=1"
        );
        assert!(join_location(&base, "").is_none());
        assert_eq!(percent_encode("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
    }

    #[test]
    fn bad_ca_file() {
        let options = ClientOptions { ca_pem: Some(b"not pem".to_vec()), ..Default::default() };
        assert!(Client::new(options).err().unwrap().to_string().contains("CA file"));
    }
}
