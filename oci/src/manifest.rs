//! The JSON documents of the OCI image spec and Docker's schema 2 that bytecode images
//! use: manifests, indexes (manifest lists), descriptors, the image config's labels.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::platform::Platform;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The `Accept` header for manifests: every manifest and index type we can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The image config labels bpfman's format defines: JSON objects, name -> type.
pub const PROGRAMS_LABEL: &str = "io.ebpf.programs";
pub const MAPS_LABEL: &str = "io.ebpf.maps";

/// Points at content by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI or Docker schema 2: same shape).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest document as fetched: either kind.
#[derive(Clone, Debug)]
pub enum ManifestDoc {
    Image(Manifest),
    Index(Index),
}

impl ManifestDoc {
    /// Parse by the served `Content-Type` when it names a known type, else by the
    /// document's own `mediaType` or shape.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ManifestDoc> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_image(format!("the manifest is not JSON: {e}")))?;
        if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
            return Err(Error::invalid_image(
                "the manifest is Docker schema 1, which is deprecated; push the image again with a current tool",
            ));
        }
        let declared = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST].contains(c))
            .or_else(|| value.get("mediaType").and_then(|v| v.as_str()))
            .map(str::to_string);
        let is_index = match declared.as_deref() {
            Some(OCI_INDEX) | Some(DOCKER_MANIFEST_LIST) => true,
            Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
            _ => value.get("manifests").is_some(),
        };
        let bad = |e: serde_json::Error| Error::invalid_image(format!("malformed manifest: {e}"));
        Ok(if is_index {
            ManifestDoc::Index(serde_json::from_value(value).map_err(bad)?)
        } else {
            ManifestDoc::Image(serde_json::from_value(value).map_err(bad)?)
        })
    }
}

impl Index {
    /// The entry for `wanted`. An index whose single entry has no platform (an
    /// artifact index) serves every platform.
    pub fn select(&self, wanted: &Platform) -> Result<&Descriptor> {
        if let [only] = self.manifests.as_slice()
            && only.platform.is_none()
        {
            return Ok(only);
        }
        self.manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p))).ok_or_else(|| {
            Error::PlatformNotFound {
                wanted: wanted.clone(),
                available: self.manifests.iter().filter_map(|d| d.platform.as_ref()).map(|p| p.to_string()).collect(),
            }
        })
    }
}

/// The part of an image config we read: its labels.
#[derive(Debug, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl ImageConfig {
    pub fn labels(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
        let c: ImageConfig =
            serde_json::from_slice(bytes).map_err(|e| Error::invalid_image(format!("malformed image config: {e}")))?;
        Ok(c.config.and_then(|c| c.labels).unwrap_or_default())
    }
}

/// Whether a layer's media type is a tar (gzip'd or not) we can unpack.
pub fn is_tar_layer(media_type: &str) -> bool {
    [OCI_LAYER_TAR, OCI_LAYER_TAR_GZIP, DOCKER_LAYER_TAR, DOCKER_LAYER_TAR_GZIP].contains(&media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: Option<&str>) -> Descriptor {
        Descriptor {
            platform: arch.map(Platform::linux),
            ..Descriptor::of(OCI_MANIFEST, arch.unwrap_or("").as_bytes())
        }
    }

    #[test]
    fn index_selection() {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![desc(Some("amd64")), desc(Some("arm64"))],
            annotations: Default::default(),
        };
        assert_eq!(index.select(&Platform::linux("arm64")).unwrap().digest, Digest::of(b"arm64"));
        let e = index.select(&Platform::linux("riscv64")).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::PlatformNotFound);
        assert!(e.to_string().contains("linux/amd64, linux/arm64"), "{e}");
        let single = Index { manifests: vec![desc(None)], ..index };
        assert!(single.select(&Platform::linux("s390x")).is_ok());
    }

    #[test]
    fn documents_by_content_type_or_shape() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        assert!(matches!(ManifestDoc::parse(m, Some(DOCKER_MANIFEST)).unwrap(), ManifestDoc::Image(_)));
        assert!(matches!(ManifestDoc::parse(m, Some("application/json")).unwrap(), ManifestDoc::Image(_)));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(ManifestDoc::parse(i, None).unwrap(), ManifestDoc::Index(_)));
        let s1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(ManifestDoc::parse(s1, None).unwrap_err().to_string().contains("schema 1"));
        assert_eq!(ManifestDoc::parse(b"<html>", None).unwrap_err().kind(), crate::ErrorKind::InvalidImage);
    }

    #[test]
    fn config_labels() {
        let c = br#"{"architecture":"amd64","config":{"Labels":{"io.ebpf.programs":"{\"pass\":\"xdp\"}"}}}"#;
        assert_eq!(ImageConfig::labels(c).unwrap()[PROGRAMS_LABEL], r#"{"pass":"xdp"}"#);
        assert!(ImageConfig::labels(br#"{"config":{"Labels":null}}"#).unwrap().is_empty());
        assert!(ImageConfig::labels(b"{}").unwrap().is_empty());
    }
}
