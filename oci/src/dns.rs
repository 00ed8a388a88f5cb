//! Registry host names resolved in Rust, from the files a pod is given (`/etc/hosts`,
//! `/etc/resolv.conf` with its search list and `ndots`), not through glibc's
//! `getaddrinfo`: the operator ships as one static binary in an image FROM scratch, where
//! getaddrinfo has no NSS modules to load and every name would fail to resolve.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hyper_util::client::legacy::connect::dns::Name;

use crate::policy::{Cidr, address_allowed};

/// A resolver for hyper's `HttpConnector`. IP literals never reach it (the connector
/// parses them first).
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    /// Restricted ([`Resolver::restricted`]): special addresses are dropped from every
    /// answer unless in these ranges; a name left without an address is refused.
    restrict: Option<Arc<[Cidr]>>,
}

impl Resolver {
    /// From the system's configuration; without a readable `/etc/resolv.conf`, only
    /// `/etc/hosts` answers (never a public resolver this network did not name).
    pub fn from_system() -> Resolver {
        let resolver = match TokioResolver::builder_tokio() {
            Ok(b) => b.build(),
            Err(error) => {
                tracing::warn!(%error, "cannot read /etc/resolv.conf: registry names resolve from /etc/hosts only");
                let mut b =
                    TokioResolver::builder_with_config(ResolverConfig::new(), TokioConnectionProvider::default());
                *b.options_mut() = ResolverOpts::default();
                b.build()
            }
        };
        Resolver { inner: Arc::new(resolver), restrict: None }
    }

    /// The same resolver, answering only public addresses and those in `allowed`: for
    /// the hosts a registry points to that are not the registry itself (see
    /// [`crate::policy`]). The addresses returned are the ones connected to, so a name
    /// that changes its answer between a check and a connection gains nothing.
    pub fn restricted(&self, allowed: &[Cidr]) -> Resolver {
        Resolver { inner: self.inner.clone(), restrict: Some(allowed.into()) }
    }
}

/// The addresses of `name` a restricted resolver may return, or why none.
pub fn keep_allowed(name: &str, addrs: Vec<IpAddr>, allowed: &[Cidr]) -> Result<Vec<IpAddr>, std::io::Error> {
    let kept: Vec<IpAddr> = addrs.iter().copied().filter(|ip| address_allowed(*ip, allowed)).collect();
    if kept.is_empty() && !addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "refused to follow the registry to {name}: it resolves to private, loopback or link-local \
                 addresses only and is not the registry itself (allow the range with \
                 --registry-allow-private-ranges if it is meant)"
            ),
        ));
    }
    Ok(kept)
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (resolver, restrict) = (self.inner.clone(), self.restrict.clone());
        Box::pin(async move {
            let ips = resolver.lookup_ip(name.as_str()).await.map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("cannot resolve {}: {e}", name.as_str()))
            })?;
            let mut ips: Vec<IpAddr> = ips.iter().collect();
            if let Some(allowed) = &restrict {
                ips = keep_allowed(name.as_str(), ips, allowed)?;
            }
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use tower_service::Service;

    use super::*;

    #[tokio::test]
    async fn names_in_etc_hosts_resolve_without_getaddrinfo() {
        // `localhost` is in every /etc/hosts; hickory reads the file itself.
        let mut r = Resolver::from_system();
        let addrs: Vec<SocketAddr> = r.call(Name::from_str("localhost").unwrap()).await.unwrap().collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn a_restricted_resolver_refuses_names_of_private_addresses() {
        let mut r = Resolver::from_system().restricted(&[]);
        let e = r.call(Name::from_str("localhost").unwrap()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("refused to follow the registry to localhost"), "{e}");
        let mut allowed = Resolver::from_system().restricted(&["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        assert!(allowed.call(Name::from_str("localhost").unwrap()).await.is_ok());
        let mixed = vec!["10.0.0.1".parse().unwrap(), "1.1.1.1".parse().unwrap()];
        assert_eq!(keep_allowed("x", mixed, &[]).unwrap(), vec!["1.1.1.1".parse::<IpAddr>().unwrap()]);
    }
}
