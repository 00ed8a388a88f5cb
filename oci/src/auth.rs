//! Registry credentials (from a `kubernetes.io/dockerconfigjson` blob or given
//! directly) and the `WWW-Authenticate` challenges registries answer with.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::error::{Error, Result};

/// A user name and password (or token) for HTTP Basic, and for the token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BasicAuth({:?}, <redacted>)", self.username)
    }
}

impl BasicAuth {
    pub fn header(&self) -> String {
        format!("Basic {}", STANDARD.encode(format!("{}:{}", self.username, self.password)))
    }
}

/// Credentials by registry host (`host[:port]`). Empty = anonymous.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, BasicAuth>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    pub fn anonymous() -> Credentials {
        Credentials::default()
    }

    /// One user for one registry.
    pub fn basic(registry: &str, username: &str, password: &str) -> Credentials {
        let mut c = Credentials::default();
        c.insert(registry, BasicAuth { username: username.into(), password: password.into() });
        c
    }

    pub fn insert(&mut self, registry: &str, auth: BasicAuth) {
        self.by_host.insert(host_key(registry), auth);
    }

    /// Parse a Docker config (`~/.docker/config.json`, or the `.dockerconfigjson` key of a
    /// `kubernetes.io/dockerconfigjson` Secret): `{"auths": {"host": {"auth": base64(user:pass)}
    /// or {"username", "password"}}}`. Keys may carry a scheme and path
    /// (`https://index.docker.io/v1/`); they are matched by host.
    pub fn from_docker_config(json: &[u8]) -> Result<Credentials> {
        let bad = |reason: String| Error::InvalidCredentials { reason };
        let config: DockerConfig = serde_json::from_slice(json)
            .map_err(|e| bad(format!("not a Docker config JSON ({{\"auths\": {{…}}}}): {e}")))?;
        let mut c = Credentials::default();
        for (key, entry) in config.auths {
            let auth = match (entry.auth.as_deref().filter(|a| !a.is_empty()), entry.username, entry.password) {
                (Some(b64), _, _) => {
                    let decoded = STANDARD
                        .decode(b64.trim())
                        .ok()
                        .and_then(|d| String::from_utf8(d).ok())
                        .ok_or_else(|| bad(format!("auths[{key:?}].auth is not base64 of user:password")))?;
                    let (u, p) = decoded
                        .split_once(':')
                        .ok_or_else(|| bad(format!("auths[{key:?}].auth must decode to user:password")))?;
                    BasicAuth { username: u.into(), password: p.into() }
                }
                (None, Some(username), Some(password)) => BasicAuth { username, password },
                // Entries that only name a credential helper carry nothing we can use.
                _ => continue,
            };
            c.insert(&key, auth);
        }
        Ok(c)
    }

    /// The credentials for `registry` (`host[:port]`, as in the image reference).
    pub fn for_registry(&self, registry: &str) -> Option<&BasicAuth> {
        let key = host_key(registry);
        self.by_host.get(&key).or_else(|| {
            // Docker Hub's credentials are stored under its v1 index URL.
            if ["docker.io", "registry-1.docker.io", "index.docker.io"].contains(&key.as_str()) {
                ["index.docker.io", "docker.io", "registry-1.docker.io"].iter().find_map(|k| self.by_host.get(*k))
            } else {
                None
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// `https://host:port/v1/` -> `host:port`.
fn host_key(s: &str) -> String {
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    s.split('/').next().unwrap_or(s).to_ascii_lowercase()
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

impl Challenge {
    /// Parse `Basic realm="x"` or `Bearer realm="https://…",service="…",scope="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `k="v", k2=v2` (quoted values may hold commas).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = after.trim_start_matches([',', ' ']);
    }
    out
}

/// The token endpoint's answer.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auth_and_username_password() {
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},
                "localhost:5000":{{"username":"u","password":"p:w"}},
                "helper.example":{{}}}},"credHelpers":{{"x":"y"}}}}"#,
            STANDARD.encode("hub:secret")
        );
        let c = Credentials::from_docker_config(json.as_bytes()).unwrap();
        assert_eq!(c.for_registry("docker.io").unwrap().username, "hub");
        assert_eq!(c.for_registry("registry-1.docker.io").unwrap().password, "secret");
        assert_eq!(c.for_registry("LOCALHOST:5000").unwrap().password, "p:w");
        assert!(c.for_registry("localhost:5001").is_none());
        assert!(c.for_registry("helper.example").is_none());
        assert!(!format!("{c:?}").contains("secret"));
        let bad = Credentials::from_docker_config(br#"{"auths":{"r":{"auth":"!!"}}}"#).unwrap_err();
        assert!(bad.to_string().contains("auths[\"r\"].auth is not base64"), "{bad}");
        assert!(Credentials::from_docker_config(b"\"x\"").is_err());
        assert_eq!(BasicAuth { username: "a".into(), password: "b".into() }.header(), "Basic YTpi");
    }

    #[test]
    fn challenges() {
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://127.0.0.1:1/t"),
            Some(Challenge::Bearer { realm: "http://127.0.0.1:1/t".into(), service: None, scope: None })
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
    }
}
