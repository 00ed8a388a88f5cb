//! Image references: `[registry/]repository[:tag][@sha256:…]`, with Docker's rules for
//! which first component is a registry (it has a `.` or a `:`, or is `localhost`).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::Error;

/// Docker Hub's name in references, and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference. At least one of `tag` and `digest` is set after parsing
/// (a bare `repo` means `repo:latest`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` when none was).
    pub registry: String,
    /// `path/to/repo` (`library/x` for an official Docker Hub image `x`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let err = |reason: &str| Error::InvalidReference { reference: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(err("it is empty; write registry/repository:tag or registry/repository@sha256:<hex>"));
        }
        if s.contains("://") {
            return Err(err("leave out the scheme (http:// or https://): write host[:port]/repository:tag"));
        }
        if s.chars().any(|c| c.is_whitespace()) {
            return Err(err("it contains whitespace"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| err(&e))?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.is_empty() || registry.starts_with(':') || registry.ends_with(':') {
            return Err(err("the registry host is empty"));
        }
        if let Some((_, port)) = registry.rsplit_once(':')
            && port.parse::<u16>().is_err()
        {
            return Err(err("the registry port is not a number"));
        }
        check_repository(&repository).map_err(|r| err(&r))?;
        let tag = match tag {
            Some(t) => {
                check_tag(t).map_err(|r| err(&r))?;
                Some(t.to_string())
            }
            None if digest.is_none() => Some("latest".to_string()),
            None => None,
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host the registry API answers on (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API } else { &self.registry }
    }

    /// `registry/repository`, without tag or digest (cosign's `docker-reference`).
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { tag: None, digest: Some(digest), ..self.clone() }
    }

    /// The same repository at `tag` (the digest is dropped).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference { tag: Some(tag.to_string()), digest: None, ..self.clone() }
    }

    /// What to put after `/manifests/`: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repo.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for component in repo.split('/') {
        let ok = !component.is_empty()
            && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && component.as_bytes()[0].is_ascii_alphanumeric()
            && component.as_bytes()[component.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "repository component {component:?} must be lowercase letters and digits, separated by '.', '_' or '-'"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("tag {tag:?} must be up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (r.registry, r.repository, r.tag, r.digest.map(|d| d.to_string()))
    }

    #[test]
    fn registries_repositories_tags_and_digests() {
        let s = |x: &str| x.to_string();
        assert_eq!(parts("localhost:5000/x:v1"), (s("localhost:5000"), s("x"), Some(s("v1")), None));
        assert_eq!(parts("localhost/x"), (s("localhost"), s("x"), Some(s("latest")), None));
        assert_eq!(parts("127.0.0.1:5000/a/b/c"), (s("127.0.0.1:5000"), s("a/b/c"), Some(s("latest")), None));
        assert_eq!(parts("quay.io/bpfman-bytecode/xdp_pass:latest").1, "bpfman-bytecode/xdp_pass");
        assert_eq!(parts("ubuntu"), (s("docker.io"), s("library/ubuntu"), Some(s("latest")), None));
        assert_eq!(parts("user/img:1.0").1, "user/img");
        assert_eq!(parts(&format!("ghcr.io/o/r@{D}")), (s("ghcr.io"), s("o/r"), None, Some(s(D))));
        assert_eq!(parts(&format!("ghcr.io/o/r:v2@{D}")), (s("ghcr.io"), s("o/r"), Some(s("v2")), Some(s(D))));
        let r = Reference::parse("localhost:5000/x:v1").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/x:v1");
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(Reference::parse("x").unwrap().api_host(), "registry-1.docker.io");
        let pinned = r.with_digest(Digest::parse(D).unwrap());
        assert_eq!(pinned.to_string(), format!("localhost:5000/x@{D}"));
        assert_eq!(pinned.manifest_reference(), D);
        assert_eq!(r.manifest_reference(), "v1");
        assert_eq!(r.repository_name(), "localhost:5000/x");
    }

    #[test]
    fn clear_errors() {
        for (bad, says) in [
            ("", "empty"),
            ("https://localhost:5000/x", "scheme"),
            ("localhost:5000/X", "lowercase"),
            ("localhost:5000/x:", "tag"),
            ("localhost:5000/x:-v", "tag"),
            ("localhost:5000/x@sha256:12", "64"),
            ("localhost:5000/x@md5:12", "not supported"),
            ("localhost:abc/x", "port"),
            ("localhost:5000/a//b", "component"),
            ("a b", "whitespace"),
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
            assert_eq!(e.kind(), crate::ErrorKind::InvalidReference);
        }
    }
}
