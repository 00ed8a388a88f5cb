//! A real registry on loopback for tests (feature `testing`): Debian's
//! `docker-registry` (distribution), without auth over HTTP or with htpasswd (bcrypt)
//! over TLS with a fresh self-signed certificate.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Client, ClientOptions, Digest, Reference};

/// Where Debian installs the registry.
pub const REGISTRY: &str = "/usr/bin/docker-registry";

/// Tests must run, not skip (`CI` or `BPFLEET_REQUIRE_REGISTRY` set).
pub fn required() -> bool {
    std::env::var_os("BPFLEET_REQUIRE_REGISTRY").is_some() || std::env::var_os("CI").is_some()
}

/// Whether `binary` exists; prints one skip line for `test` when it does not (and fails
/// when [`required`]).
pub fn have(binary: &str, test: &str) -> bool {
    let found = Path::new(binary).exists();
    if !found {
        assert!(!required(), "{binary} is missing (scripts/install-deps.sh installs it)");
        eprintln!("skipping {test}: {binary} is not installed (scripts/install-deps.sh installs it)");
    }
    found
}

pub struct Registry {
    child: Option<Child>,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// The filesystem driver's storage directory.
    pub root: PathBuf,
    dir: tempfile::TempDir,
    /// The CA to trust when it serves TLS.
    pub ca_pem: Option<Vec<u8>>,
}

impl Registry {
    /// Start a registry; with `user` it serves TLS (a fresh self-signed certificate) and
    /// requires htpasswd (bcrypt) Basic auth.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        Self::start_at("127.0.0.1", &[], user)
    }

    /// A TLS registry listening on `ip` whose certificate also names `names` (a host name
    /// a pod is given through /etc/hosts, say), without auth.
    pub fn start_tls_at(ip: &str, names: &[&str]) -> Registry {
        Self::start_at(ip, names, Some(("", "")))
    }

    fn start_at(ip: &str, names: &[&str], user: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).unwrap();
        let port = TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port();
        let host = format!("{ip}:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n  secret: bpfleet-test\n",
            root.display()
        );
        let mut ca_pem = None;
        if user.is_some() {
            let mut sans = vec![ip.to_string(), "127.0.0.1".to_string(), "localhost".to_string()];
            sans.extend(names.iter().map(|n| n.to_string()));
            sans.dedup();
            let cert = rcgen::generate_simple_self_signed(sans).unwrap();
            let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&crt, cert.cert.pem()).unwrap();
            std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
            ca_pem = Some(cert.cert.pem().into_bytes());
            config.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", crt.display(), key.display()));
        }
        if let Some((u, p)) = user.filter(|(u, _)| !u.is_empty()) {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd").args(["-B", "-b", "-c"]).arg(&htpasswd).args([u, p]).output().unwrap();
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            config
                .push_str(&format!("auth:\n  htpasswd:\n    realm: bpfleet-test\n    path: {}\n", htpasswd.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut r = Registry { child: Some(child), host, root, dir, ca_pem };
        r.wait_ready();
        r
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.host).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen on {}: {}", self.host, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn reference(&self, s: &str) -> Reference {
        Reference::parse(&format!("{}/{s}", self.host)).unwrap()
    }

    /// Where the filesystem driver keeps a blob's bytes.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join(format!("docker/registry/v2/blobs/sha256/{}/{}/data", &d.hex()[..2], d.hex()))
    }

    pub fn client(&self) -> Client {
        Client::new(ClientOptions { insecure_http: self.ca_pem.is_none(), ..Default::default() }).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
