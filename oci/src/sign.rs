//! Cosign-format signatures, verified offline against public keys.
//!
//! A signature of image `repo@sha256:H` lives in the same repository under the tag
//! `sha256-H.sig`: a manifest whose layers are simple-signing payloads
//! (`application/vnd.dev.cosign.simplesigning.v1+json`), each with its ECDSA P-256
//! signature (DER, base64) in the annotation `dev.cosignproject.cosign/signature`. The
//! payload names the signed digest in `critical.image.docker-manifest-digest`.
//! No transparency log, no certificates: a signature counts when one of the trusted
//! keys verifies it and it names the image's digest.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::limits::{MAX_SIGNATURE_LAYERS, MAX_SIGNATURE_PAYLOAD_BYTES};
use crate::manifest::{Descriptor, Manifest, ManifestDoc, OCI_CONFIG, OCI_MANIFEST};
use crate::reference::Reference;

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_TYPE: &str = "cosign container image signature";

/// DER prefix of a P-256 SubjectPublicKeyInfo (ecPublicKey, prime256v1, BIT STRING of
/// 66 bytes); the 65-byte uncompressed point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The tag a digest's signatures are stored under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// A trusted ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The uncompressed point (0x04 || x || y).
    point: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(sha256:{})", &Digest::of(&self.spki_der()).hex()[..12])
    }
}

impl PublicKey {
    /// Every `PUBLIC KEY` block in `pem` (cosign.pub, or several keys in one Secret value).
    pub fn parse_pem(pem: &[u8]) -> Result<Vec<PublicKey>> {
        let blocks = pem_blocks(pem, "PUBLIC KEY")?;
        if blocks.is_empty() {
            return Err(Error::InvalidKey {
                reason: "no -----BEGIN PUBLIC KEY----- block found (a cosign.pub file is expected)".into(),
            });
        }
        blocks.iter().map(|der| PublicKey::from_spki_der(der)).collect()
    }

    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(PublicKey { point: point.to_vec() }),
            _ => Err(Error::InvalidKey {
                reason: "the public key is not an ECDSA P-256 key (the only kind cosign key pairs use)".into(),
            }),
        }
    }

    pub fn spki_der(&self) -> Vec<u8> {
        [&P256_SPKI_PREFIX[..], &self.point].concat()
    }

    pub fn to_pem(&self) -> String {
        to_pem("PUBLIC KEY", &self.spki_der())
    }

    /// Whether `signature` (ASN.1 DER) over `message` verifies with this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point).verify(message, signature).is_ok()
    }
}

/// An ECDSA P-256 private key to sign with.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// From an unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as written by
    /// [`generate_key_pair`] or `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`).
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey> {
        let text = String::from_utf8_lossy(pem);
        if text.contains("ENCRYPTED") {
            return Err(Error::InvalidKey {
                reason: "encrypted private keys (cosign's own format included) are not supported; \
                         use an unencrypted PKCS#8 PEM, e.g. from `kubectl bpfleet image generate-key`"
                    .into(),
            });
        }
        let blocks = pem_blocks(pem, "PRIVATE KEY")?;
        let [der] = blocks.as_slice() else {
            return Err(Error::InvalidKey { reason: "expected one -----BEGIN PRIVATE KEY----- (PKCS#8) block".into() });
        };
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
            .map_err(|e| Error::InvalidKey { reason: format!("not an ECDSA P-256 PKCS#8 private key: {e}") })?;
        Ok(SigningKey { pair, rng })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey { point: self.pair.public_key().as_ref().to_vec() }
    }

    /// An ASN.1 DER ECDSA signature of `message` (SHA-256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::InvalidKey { reason: "signing failed".into() })
    }
}

/// A new key pair: (PKCS#8 private key PEM, public key PEM).
pub fn generate_key_pair() -> Result<(String, String)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| Error::InvalidKey { reason: "key generation failed".into() })?;
    let private = to_pem("PRIVATE KEY", pkcs8.as_ref());
    let public = SigningKey::from_pem(private.as_bytes())?.public_key().to_pem();
    Ok((private, public))
}

/// The simple-signing payload for `digest` of `repository` (`registry/repository`).
pub fn payload(repository: &str, digest: &Digest) -> Vec<u8> {
    let p = Payload {
        critical: Critical {
            identity: Identity { docker_reference: repository.to_string() },
            image: ImageRef { docker_manifest_digest: digest.to_string() },
            kind: SIGNATURE_TYPE.to_string(),
        },
        optional: None,
    };
    serde_json::to_vec(&p).expect("plain data serializes")
}

#[derive(Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    #[serde(default)]
    optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: ImageRef,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
struct ImageRef {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// One signature as stored: the payload and the base64 signature annotation.
#[derive(Clone, Debug)]
pub struct StoredSignature {
    pub payload: Bytes,
    /// `None` when the layer has no signature annotation.
    pub signature_b64: Option<String>,
}

/// A successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub digest: Digest,
    /// Which of the trusted keys verified it.
    pub key_index: usize,
}

/// Decide whether `signatures` show that a trusted key signed `digest`. Pure: the
/// caller fetched the signatures. Outcomes: `Ok` when a key verifies a payload naming
/// `digest`; `SignatureInvalid` when a trusted key signed something that is not a valid
/// signature of this digest (another digest, a malformed payload) or a signature is
/// unreadable; `UnknownKey` when no trusted key verifies any signature.
pub fn verify_signatures(
    reference: &str,
    digest: &Digest,
    signatures: &[StoredSignature],
    keys: &[PublicKey],
) -> Result<Verified> {
    let mut invalid = Vec::new();
    for sig in signatures {
        let Some(b64) = &sig.signature_b64 else {
            invalid.push(format!("a layer has no {SIGNATURE_ANNOTATION} annotation"));
            continue;
        };
        let Ok(der) = STANDARD.decode(b64.trim()) else {
            invalid.push("a signature annotation is not base64".to_string());
            continue;
        };
        let Some(key_index) = keys.iter().position(|k| k.verifies(&sig.payload, &der)) else { continue };
        match serde_json::from_slice::<Payload>(&sig.payload) {
            Ok(p) if p.critical.kind != SIGNATURE_TYPE => {
                invalid.push(format!("the signed payload's type is {:?}, not {SIGNATURE_TYPE:?}", p.critical.kind))
            }
            Ok(p) if p.critical.image.docker_manifest_digest == digest.as_str() => {
                return Ok(Verified { digest: digest.clone(), key_index });
            }
            Ok(p) => invalid.push(format!(
                "a trusted key signed {}, not this image's digest {digest} (the signature was copied from another image)",
                p.critical.image.docker_manifest_digest
            )),
            Err(e) => invalid.push(format!("a signed payload is not a simple-signing document: {e}")),
        }
    }
    if invalid.is_empty() {
        Err(Error::UnknownKey { reference: reference.to_string(), signatures: signatures.len(), keys: keys.len() })
    } else {
        Err(Error::SignatureInvalid { reference: reference.to_string(), reason: invalid.join("; ") })
    }
}

impl Client {
    /// Verify that one of `keys` signed `digest` in `reference`'s repository (cosign
    /// format, offline). `Unsigned` when there is no signature tag.
    /// At most [`MAX_SIGNATURE_LAYERS`] signatures are read, one pull of the shared
    /// budget and the image deadline apply.
    pub async fn verify(&self, reference: &Reference, digest: &Digest, keys: &[PublicKey]) -> Result<Verified> {
        let what = format!("verifying the signature of {}@{digest}", reference.repository);
        self.image_work(reference.api_host(), &what, self.verify_inner(reference, digest, keys)).await
    }

    async fn verify_inner(&self, reference: &Reference, digest: &Digest, keys: &[PublicKey]) -> Result<Verified> {
        let pinned = reference.with_digest(digest.clone()).to_string();
        if keys.is_empty() {
            return Err(Error::InvalidKey { reason: "the signature policy has no public key".into() });
        }
        let tag = signature_tag(digest);
        let (bytes, content_type) = match self.fetch_manifest(reference, &tag).await {
            Err(Error::ImageNotFound { .. }) => return Err(Error::Unsigned { reference: pinned, tag }),
            r => r?,
        };
        let invalid = |reason: String| Error::SignatureInvalid { reference: pinned.clone(), reason };
        let manifest = match ManifestDoc::parse(&bytes, content_type.as_deref()) {
            Ok(ManifestDoc::Image(m)) => m,
            Ok(ManifestDoc::Index(_)) => return Err(invalid(format!("{tag} is an index, not a signature manifest"))),
            Err(e) => return Err(invalid(format!("{tag}: {e}"))),
        };
        let layers: Vec<&Descriptor> =
            manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE).collect();
        if layers.len() > MAX_SIGNATURE_LAYERS {
            return Err(invalid(format!(
                "{tag} holds {} signatures; at most {MAX_SIGNATURE_LAYERS} are read (none was fetched): \
                 prune old signatures of this image",
                layers.len()
            )));
        }
        let mut signatures = Vec::new();
        for layer in layers {
            let payload =
                match self.fetch_blob(reference, layer, MAX_SIGNATURE_PAYLOAD_BYTES, "signature payload").await {
                    Ok(p) => p,
                    Err(e @ (Error::Tampered { .. } | Error::TooLarge { .. })) => return Err(invalid(e.to_string())),
                    Err(e) => return Err(e),
                };
            signatures
                .push(StoredSignature { payload, signature_b64: layer.annotations.get(SIGNATURE_ANNOTATION).cloned() });
        }
        if signatures.is_empty() {
            return Err(invalid(format!("{tag} holds no {SIMPLE_SIGNING_MEDIA_TYPE} layer")));
        }
        verify_signatures(&pinned, digest, &signatures, keys)
    }

    /// Sign `digest` of `reference`'s repository with `key` and push the signature,
    /// keeping the signatures already there. Returns the signature manifest's digest.
    pub async fn sign(&self, reference: &Reference, digest: &Digest, key: &SigningKey) -> Result<Digest> {
        let payload = payload(&reference.repository_name(), digest);
        let signature = STANDARD.encode(key.sign(&payload)?);
        let tag = signature_tag(digest);
        let mut layers = match self.fetch_manifest(reference, &tag).await {
            Ok((bytes, ct)) => match ManifestDoc::parse(&bytes, ct.as_deref())? {
                ManifestDoc::Image(m) => m.layers,
                ManifestDoc::Index(_) => Vec::new(),
            },
            Err(Error::ImageNotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut layer = Descriptor::of(SIMPLE_SIGNING_MEDIA_TYPE, &payload);
        layer.annotations.insert(SIGNATURE_ANNOTATION.into(), signature);
        layers.retain(|l| {
            l.digest != layer.digest
                || l.annotations.get(SIGNATURE_ANNOTATION) != layer.annotations.get(SIGNATURE_ANNOTATION)
        });
        layers.push(layer);
        self.push_blob(reference, &Digest::of(&payload), Bytes::from(payload)).await?;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>()},
        }))
        .expect("json");
        let config_desc = Descriptor::of(OCI_CONFIG, &config);
        self.push_blob(reference, &config_desc.digest, Bytes::from(config)).await?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            artifact_type: None,
            config: config_desc,
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&manifest).expect("json");
        self.push_manifest(&reference.with_tag(&tag), OCI_MANIFEST, Bytes::from(bytes)).await
    }
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER contents of every `-----BEGIN {label}-----` block.
fn pem_blocks(pem: &[u8], label: &str) -> Result<Vec<Vec<u8>>> {
    let text =
        std::str::from_utf8(pem).map_err(|_| Error::InvalidKey { reason: "the key file is not text (PEM)".into() })?;
    let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let stop = after
            .find(&end)
            .ok_or_else(|| Error::InvalidKey { reason: format!("a {begin} block has no {end} line") })?;
        let b64: String = after[..stop].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(
            STANDARD
                .decode(b64)
                .map_err(|e| Error::InvalidKey { reason: format!("bad base64 in a PEM block: {e}") })?,
        );
        rest = &after[stop + end.len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn digest(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn signed(key: &SigningKey, payload: Vec<u8>) -> StoredSignature {
        let sig = STANDARD.encode(key.sign(&payload).unwrap());
        StoredSignature { payload: payload.into(), signature_b64: Some(sig) }
    }

    #[test]
    fn keys_roundtrip_through_pem() {
        let (private, public) = generate_key_pair().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let key = SigningKey::from_pem(private.as_bytes()).unwrap();
        let pubs = PublicKey::parse_pem(format!("{public}\n{public}").as_bytes()).unwrap();
        assert_eq!(pubs.len(), 2);
        assert_eq!(pubs[0], key.public_key());
        let sig = key.sign(b"m").unwrap();
        assert!(pubs[0].verifies(b"m", &sig) && !pubs[0].verifies(b"n", &sig));
        assert_eq!(PublicKey::parse_pem(b"nothing").unwrap_err().kind(), ErrorKind::InvalidKey);
        assert!(SigningKey::from_pem(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----").is_err());
        // An RSA SPKI (different algorithm OID) is refused with a reason.
        let e = PublicKey::from_spki_der(&[0x30, 0x82, 0x01, 0x22]).unwrap_err();
        assert!(e.to_string().contains("P-256"), "{e}");
    }

    #[test]
    fn payload_format() {
        let d = digest("img");
        let p: serde_json::Value = serde_json::from_slice(&payload("localhost:5000/x", &d)).unwrap();
        assert_eq!(p["critical"]["image"]["docker-manifest-digest"], d.as_str());
        assert_eq!(p["critical"]["identity"]["docker-reference"], "localhost:5000/x");
        assert_eq!(p["critical"]["type"], "cosign container image signature");
        assert!(p["optional"].is_null());
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
    }

    #[test]
    fn outcomes() {
        let key = SigningKey::from_pem(generate_key_pair().unwrap().0.as_bytes()).unwrap();
        let other = SigningKey::from_pem(generate_key_pair().unwrap().0.as_bytes()).unwrap();
        let (d, d2) = (digest("a"), digest("b"));
        let trusted = [other.public_key(), key.public_key()];

        let good = signed(&key, payload("r/x", &d));
        assert_eq!(verify_signatures("r", &d, std::slice::from_ref(&good), &trusted).unwrap().key_index, 1);
        // Signed by a key not trusted.
        let e = verify_signatures("r", &d, std::slice::from_ref(&good), &[other.public_key()]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownKey, "{e}");
        // The payload altered after signing: no key verifies it.
        let mut altered = good.clone();
        altered.payload = payload("r/y", &d).into();
        assert_eq!(verify_signatures("r", &d, &[altered], &trusted).unwrap_err().kind(), ErrorKind::UnknownKey);
        // A valid signature of another digest, copied over.
        let e = verify_signatures("r", &d, &[signed(&key, payload("r/x", &d2))], &trusted).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SignatureInvalid);
        assert!(e.to_string().contains(&format!("signed {d2}, not this image's digest {d}")), "{e}");
        // Garbage annotation, missing annotation, signed non-payload.
        let junk = StoredSignature { payload: good.payload.clone(), signature_b64: Some("%%%".into()) };
        assert_eq!(verify_signatures("r", &d, &[junk], &trusted).unwrap_err().kind(), ErrorKind::SignatureInvalid);
        let none = StoredSignature { payload: good.payload.clone(), signature_b64: None };
        assert_eq!(verify_signatures("r", &d, &[none], &trusted).unwrap_err().kind(), ErrorKind::SignatureInvalid);
        let e = verify_signatures("r", &d, &[signed(&key, b"{}".to_vec())], &trusted).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SignatureInvalid);
        // One good signature among bad ones is enough.
        let bad = signed(&other, payload("r/x", &d2));
        assert!(verify_signatures("r", &d, &[bad, good], &trusted).is_ok());
    }
}
