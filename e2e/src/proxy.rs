//! A TCP proxy between an operator process and the API server that a scenario can cut:
//! the operator stays up but cannot reach the cluster (a network partition), while the
//! rest of the suite still can.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listen on 127.0.0.1 and forward every connection to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else { continue };
                if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                    o.lock().unwrap().extend([a, b]);
                }
                pipe(client.try_clone(), server.try_clone());
                pipe(server.try_clone(), client.try_clone());
            }
        });
        Ok(Self { addr, cut, open })
    }

    /// Partition: close every connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Heal the partition.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// A copy of `kubeconfig` whose clusters are reached through this proxy (the TLS
    /// server name stays the original host, so certificates still verify).
    pub fn kubeconfig(&self, kubeconfig: &Path, out: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(kubeconfig).with_context(|| format!("read {}", kubeconfig.display()))?;
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let Some(clusters) = v.get_mut("clusters").and_then(|c| c.as_sequence_mut()) else {
            bail!("{} has no clusters", kubeconfig.display());
        };
        for c in clusters {
            let Some(cluster) = c.get_mut("cluster").and_then(|c| c.as_mapping_mut()) else { continue };
            let server = cluster.get("server").and_then(|s| s.as_str()).unwrap_or_default().to_string();
            let host = server.trim_start_matches("https://").split(['/', ':']).next().unwrap_or_default().to_string();
            cluster.insert("server".into(), format!("https://{}", self.addr).into());
            if host.parse::<std::net::IpAddr>().is_err() && !host.is_empty() {
                cluster.insert("tls-server-name".into(), host.into());
            }
        }
        std::fs::write(out, serde_yaml::to_string(&v)?)?;
        Ok(())
    }
}

/// The API server address of the first cluster in `kubeconfig`.
pub fn api_server_addr(kubeconfig: &Path) -> anyhow::Result<SocketAddr> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let server = v["clusters"][0]["cluster"]["server"].as_str().context("no cluster server")?;
    let hostport = server.trim_start_matches("https://").split('/').next().unwrap_or_default();
    use std::net::ToSocketAddrs;
    let with_port = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:443") };
    with_port.to_socket_addrs()?.next().context("the API server address does not resolve")
}

fn pipe(from: std::io::Result<TcpStream>, to: std::io::Result<TcpStream>) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else { return };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_until_cut_and_again_after_restore() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in server.incoming().flatten() {
                let mut b = [0u8; 4];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
        let proxy = Proxy::start(target).unwrap();
        let echo = || -> std::io::Result<[u8; 4]> {
            let mut s = TcpStream::connect(proxy.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"ping")?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b)?;
            Ok(b)
        };
        assert_eq!(&echo().unwrap(), b"ping");
        proxy.cut();
        assert!(echo().is_err(), "a cut proxy forwards nothing");
        proxy.restore();
        assert_eq!(&echo().unwrap(), b"ping");
    }

    #[test]
    fn kubeconfig_points_at_the_proxy_and_keeps_the_server_name() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kc");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://api.example:6443\n",
        )
        .unwrap();
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let proxy = Proxy::start(target).unwrap();
        let out = dir.path().join("out");
        proxy.kubeconfig(&kc, &out).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"].as_str().unwrap(), format!("https://{}", proxy.addr));
        assert_eq!(v["clusters"][0]["cluster"]["tls-server-name"].as_str(), Some("api.example"));
    }
}
