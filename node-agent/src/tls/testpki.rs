//! A throw-away PKI for tests (here and in other crates): a CA, the agent's server
//! certificate, the operator's client certificate, and a foreign CA with a client of its
//! own. Always compiled because cfg(test) does not cross crates; it is small.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tonic::transport::ClientTlsConfig;

use super::{DEFAULT_SERVER_NAME, TlsFiles};

/// The operator's identity in the test PKI.
pub const CLIENT_NAME: &str = "bpfleet-operator";

/// Files written by [`TestPki::generate`] into `dir`.
#[derive(Debug)]
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub foreign_ca_cert: PathBuf,
    pub foreign_ca_key: PathBuf,
    pub foreign_client_cert: PathBuf,
    pub foreign_client_key: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// Writes ca.pem/.key, server.pem/.key (DNS `bpfleet-agent`, `localhost`, IP
    /// 127.0.0.1), client.pem/.key (DNS `bpfleet-operator`), foreign-ca.pem/.key and
    /// foreign-client.pem/.key (same name, other CA).
    ///
    /// # Panics
    /// On any failure to generate or write: this is test scaffolding.
    pub fn generate(dir: &Path) -> TestPki {
        let file = |name: &str| dir.join(name);
        let ca = new_ca("bpfleet test CA", &file("ca.pem"), &file("ca.key"));
        let foreign_ca = new_ca("foreign test CA", &file("foreign-ca.pem"), &file("foreign-ca.key"));
        let pki = TestPki {
            dir: dir.to_owned(),
            ca_cert: file("ca.pem"),
            ca_key: file("ca.key"),
            server_cert: file("server.pem"),
            server_key: file("server.key"),
            client_cert: file("client.pem"),
            client_key: file("client.key"),
            foreign_ca_cert: file("foreign-ca.pem"),
            foreign_ca_key: file("foreign-ca.key"),
            foreign_client_cert: file("foreign-client.pem"),
            foreign_client_key: file("foreign-client.key"),
            ca,
        };
        pki.reissue_server_cert();
        issue_leaf(&pki.ca, CLIENT_NAME, ExtendedKeyUsagePurpose::ClientAuth, &pki.client_cert, &pki.client_key);
        issue_leaf(
            &foreign_ca,
            CLIENT_NAME,
            ExtendedKeyUsagePurpose::ClientAuth,
            &pki.foreign_client_cert,
            &pki.foreign_client_key,
        );
        pki
    }

    /// The agent's files: server certificate and key, the CA as client CA.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles { cert: self.server_cert.clone(), key: self.server_key.clone(), client_ca: self.ca_cert.clone() }
    }

    /// The operator's identity: its certificate, its key and the CA, in that order.
    pub fn client_files(&self) -> [&std::path::Path; 3] {
        [&self.client_cert, &self.client_key, &self.ca_cert]
    }

    /// A tonic client configuration presenting `client.pem` and trusting the CA.
    ///
    /// # Panics
    /// If the files are unusable.
    pub fn client_config(&self) -> ClientTlsConfig {
        super::client_config(&self.client_cert, &self.client_key, &self.ca_cert, DEFAULT_SERVER_NAME)
            .expect("test PKI client config")
    }

    /// A tokio-rustls connector presenting client.pem and trusting the CA, for tests that
    /// talk TLS below gRPC.
    ///
    /// # Panics
    /// If the files are unusable.
    pub fn client_connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&self.ca_cert).expect("test CA")).expect("add test CA");
        let chain = CertificateDer::pem_file_iter(&self.client_cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .expect("test client certificate");
        let key = PrivateKeyDer::from_pem_file(&self.client_key).expect("test client key");
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("test client identity");
        TlsConnector::from(Arc::new(config))
    }

    /// Issues a new server certificate with a new key (so a new serial) over server.pem and
    /// server.key, and returns its DER.
    pub fn reissue_server_cert(&self) -> CertificateDer<'static> {
        issue_leaf(
            &self.ca,
            DEFAULT_SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
            &self.server_cert,
            &self.server_key,
        )
    }

    /// Issues a server certificate for the DNS names `names` (e.g. one node's own name),
    /// signed by the right CA, into `<first name>.pem`/`.key`; returns (cert, key).
    pub fn issue_server(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let first = names.first().expect("at least one name");
        let (cert, key) = (self.dir.join(format!("{first}.pem")), self.dir.join(format!("{first}.key")));
        issue_leaf_names(&self.ca, names, ExtendedKeyUsagePurpose::ServerAuth, &cert, &key);
        (cert, key)
    }

    /// Issues a client certificate for DNS `name`, signed by the right CA, into
    /// `<name>.pem`/`<name>.key`; returns (cert, key).
    pub fn issue_client(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        issue_leaf(&self.ca, name, ExtendedKeyUsagePurpose::ClientAuth, &cert, &key);
        (cert, key)
    }
}

fn new_ca(common_name: &str, cert_path: &Path, key_path: &Path) -> Issuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("generate CA key");
    let cert = params.self_signed(&key).expect("self-sign CA");
    write_atomically(cert_path, cert.pem().as_bytes());
    write_atomically(key_path, key.serialize_pem().as_bytes());
    Issuer::new(params, key)
}

fn issue_leaf(
    ca: &Issuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    cert_path: &Path,
    key_path: &Path,
) -> CertificateDer<'static> {
    let mut names = vec![name];
    if usage == ExtendedKeyUsagePurpose::ServerAuth {
        names.extend(["localhost", "127.0.0.1"]);
    }
    issue_leaf_names(ca, &names, usage, cert_path, key_path)
}

fn issue_leaf_names(
    ca: &Issuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    cert_path: &Path,
    key_path: &Path,
) -> CertificateDer<'static> {
    let name = names[0];
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("valid test names");
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generate leaf key");
    let cert = params.signed_by(&key, ca).expect("sign leaf");
    // Key first: a poller reading in between sees a mismatch, rejects it, and picks up
    // the pair on its next look.
    write_atomically(key_path, key.serialize_pem().as_bytes());
    write_atomically(cert_path, cert.pem().as_bytes());
    cert.der().clone()
}

fn write_atomically(path: &Path, contents: &[u8]) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}
