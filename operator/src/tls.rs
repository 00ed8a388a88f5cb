//! The operator's client identity for agents, from PEM files that cert-manager (or
//! the chart) renews in place. The files are read again every few seconds; when their
//! content changes and still makes a valid identity, the connection pool switches to it
//! for every new connection. A half-written or broken set is ignored (and logged) until
//! it is whole again, so a renewal in progress never takes the operator down.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent_tls::AgentTls;
use crate::dispatch::AgentPool;
use anyhow::Context as _;
use sha2::{Digest, Sha256};

/// The three files and the name agents' certificates carry.
#[derive(Clone, Debug)]
pub struct ClientTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub server_name: String,
}

/// What the files held when last read: their bytes' digest, and the config built.
pub struct Loaded {
    pub fingerprint: [u8; 32],
    pub config: AgentTls,
}

impl ClientTlsFiles {
    /// Read and check the files. Fails with the file at fault when one is missing,
    /// unreadable or not PEM of the right kind.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        self.load_unless(None).map(|l| l.expect("no fingerprint to skip"))
    }

    /// [`ClientTlsFiles::load`], but `None` without building anything when the files'
    /// fingerprint is still `known` (the poller reads them every few seconds).
    pub fn load_unless(&self, known: Option<&[u8; 32]>) -> anyhow::Result<Option<Loaded>> {
        let read =
            |flag: &str, p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {flag} {}", p.display()));
        let cert = read("--tls-cert", &self.cert)?;
        let key = read("--tls-key", &self.key)?;
        let ca = read("--tls-ca", &self.ca)?;
        check_pem(&cert, "CERTIFICATE", "--tls-cert", &self.cert)?;
        check_pem(&key, "PRIVATE KEY", "--tls-key", &self.key)?;
        check_pem(&ca, "CERTIFICATE", "--tls-ca", &self.ca)?;
        let mut h = Sha256::new();
        for part in [&cert, &key, &ca] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let fingerprint: [u8; 32] = h.finalize().into();
        if known == Some(&fingerprint) {
            return Ok(None);
        }
        let config = AgentTls::from_pem(&cert, &key, &ca, &self.server_name).with_context(|| {
            format!(
                "--tls-cert {}, --tls-key {}, --tls-ca {}",
                self.cert.display(),
                self.key.display(),
                self.ca.display()
            )
        })?;
        Ok(Some(Loaded { fingerprint, config }))
    }
}

fn check_pem(bytes: &[u8], kind: &str, flag: &str, path: &std::path::Path) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(bytes);
    let ok = text.contains("-----BEGIN ") && text.contains("-----END ") && text.contains(kind);
    if !ok {
        anyhow::bail!("{flag} {} holds no PEM {kind}", path.display());
    }
    Ok(())
}

/// Re-read `files` every `every` and give `pool` the new identity when they change.
/// `current` is the fingerprint of what the pool was built with. Runs forever.
pub async fn reload_on_change(files: ClientTlsFiles, pool: AgentPool, mut current: [u8; 32], every: Duration) {
    let mut broken_reported = false;
    loop {
        tokio::time::sleep(every).await;
        match files.load_unless(Some(&current)) {
            Ok(Some(loaded)) => {
                pool.set_tls(loaded.config);
                current = loaded.fingerprint;
                broken_reported = false;
                tracing::info!(cert = %files.cert.display(), "client certificate files changed: new connections use them");
            }
            Ok(_) => broken_reported = false,
            Err(e) if !broken_reported => {
                broken_reported = true;
                tracing::warn!(error = %format!("{e:#}"), "certificate files unusable; keeping the identity in use");
            }
            Err(_) => {}
        }
    }
}
