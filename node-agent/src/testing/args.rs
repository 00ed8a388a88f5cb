//! The command line of an agent process, as the process tests, harnesses and benches
//! start it. Only the arguments: each caller keeps its own environment (`NO_COLOR`,
//! `RUST_LOG`, which fault hooks it clears or sets) and its own stdio.

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::path::Path;

use crate::tls::testpki::{CLIENT_NAME, TestPki};

/// Arguments of `bpfleet-agent` / `bpfleet-agent-test`, in the order they are added.
#[derive(Clone, Debug, Default)]
pub struct AgentArgs(Vec<OsString>);

impl AgentArgs {
    /// `--node-name`, `--bpffs-root` and `--state-dir`: what every agent is started with.
    pub fn new(node_name: &str, bpffs_root: &Path, state_dir: &Path) -> Self {
        Self::default()
            .arg("--node-name")
            .arg(node_name)
            .arg("--bpffs-root")
            .arg(bpffs_root)
            .arg("--state-dir")
            .arg(state_dir)
    }

    /// `--listen ADDR` (the gRPC server).
    pub fn listen(self, addr: impl Display) -> Self {
        self.arg("--listen").arg(addr.to_string())
    }

    /// `--tls-cert`, `--tls-key` and `--tls-client-ca`.
    pub fn server_tls(self, cert: &Path, key: &Path, client_ca: &Path) -> Self {
        self.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key).arg("--tls-client-ca").arg(client_ca)
    }

    /// [`server_tls`](Self::server_tls) with the test PKI's server side.
    pub fn pki_server_tls(self, pki: &TestPki) -> Self {
        self.server_tls(&pki.server_cert, &pki.server_key, &pki.ca_cert)
    }

    /// `--tls-client-name` of the test PKI's operator identity.
    pub fn operator_client_name(self) -> Self {
        self.arg("--tls-client-name").arg(CLIENT_NAME)
    }

    /// `--metrics-listen ADDR`.
    pub fn metrics_listen(self, addr: impl Display) -> Self {
        self.arg("--metrics-listen").arg(addr.to_string())
    }

    /// `--cri-socket PATH`: the container runtime (a fake one, in tests) where pods are found.
    pub fn cri_socket(self, socket: &Path) -> Self {
        self.arg("--cri-socket").arg(socket)
    }

    /// `--standalone DIR`: no gRPC, the manifests in `dir`.
    pub fn standalone(self, dir: &Path) -> Self {
        self.arg("--standalone").arg(dir)
    }

    /// One more argument, as given.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.push(arg.as_ref().to_os_string());
        self
    }

    /// More arguments, as given.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(self, args: I) -> Self {
        args.into_iter().fold(self, |s, a| s.arg(a))
    }

    /// The arguments, for `Command::args`.
    pub fn build(self) -> Vec<OsString> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_come_in_the_order_added() {
        let args = AgentArgs::new("n1", Path::new("/sys/fs/bpf/x"), Path::new("/tmp/s"))
            .listen("127.0.0.1:5")
            .operator_client_name()
            .cri_socket(Path::new("/tmp/cri.sock"))
            .args(["--tc-backend", "clsact"])
            .build();
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--node-name",
                "n1",
                "--bpffs-root",
                "/sys/fs/bpf/x",
                "--state-dir",
                "/tmp/s",
                "--listen",
                "127.0.0.1:5",
                "--tls-client-name",
                "bpfleet-operator",
                "--cri-socket",
                "/tmp/cri.sock",
                "--tc-backend",
                "clsact"
            ]
        );
    }
}
