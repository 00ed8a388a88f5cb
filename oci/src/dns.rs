//! Registry host names resolved in Rust, from the files a pod is given (`/etc/hosts`,
//! `/etc/resolv.conf` with its search list and `ndots`), not through glibc's
//! `getaddrinfo`: the operator ships as one static binary in an image FROM scratch, where
//! getaddrinfo has no NSS modules to load and every name would fail to resolve.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hyper_util::client::legacy::connect::dns::Name;

/// A resolver for hyper's `HttpConnector`. IP literals never reach it (the connector
/// parses them first).
#[derive(Clone)]
pub struct Resolver(Arc<TokioResolver>);

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
        Resolver(Arc::new(resolver))
    }
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
        let resolver = self.0.clone();
        Box::pin(async move {
            let ips = resolver.lookup_ip(name.as_str()).await.map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("cannot resolve {}: {e}", name.as_str()))
            })?;
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
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
}
