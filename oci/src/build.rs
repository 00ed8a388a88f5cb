//! Making bytecode images: bpfman's format (one gzip'd tar layer with the object at its
//! root, labels `io.ebpf.programs` and `io.ebpf.maps`), reproducible (fixed times, so
//! the same object gives the same digest), and OCI image layouts on disk.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;

use crate::client::Client;
use crate::digest::Digest;
use crate::elf::{ElfContents, describe};
use crate::error::{Error, Result};
use crate::manifest::{
    Descriptor, Index, MAPS_LABEL, Manifest, ManifestDoc, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR_GZIP, OCI_MANIFEST,
    PROGRAMS_LABEL,
};
use crate::platform::Platform;
use crate::reference::Reference;

/// An image ready to write or push: its manifest and every blob it references.
#[derive(Clone, Debug)]
pub struct ImageBundle {
    pub manifest: Bytes,
    pub media_type: String,
    pub digest: Digest,
    /// Config and layer blobs.
    pub blobs: Vec<(Digest, Bytes)>,
}

/// A built bytecode image and what its labels say.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub bundle: ImageBundle,
    pub contents: ElfContents,
    pub labels: BTreeMap<String, String>,
}

/// Build an image holding `elf` as `file_name` (at the layer's root) for `platform`,
/// labelled from the object's programs and maps plus `extra_labels`.
pub fn build_image(
    elf: &[u8],
    file_name: &str,
    platform: &Platform,
    extra_labels: &BTreeMap<String, String>,
) -> Result<BuiltImage> {
    if file_name.is_empty() || file_name.contains('/') {
        return Err(Error::NotBytecode { reason: format!("file name {file_name:?} must be a plain name like prog.o") });
    }
    let contents = describe(file_name, elf)?;
    let mut labels = extra_labels.clone();
    labels.insert(PROGRAMS_LABEL.into(), serde_json::to_string(&contents.programs).expect("json"));
    labels.insert(MAPS_LABEL.into(), serde_json::to_string(&contents.maps).expect("json"));
    let layer = tar_gz(file_name, elf)?;
    let diff_id = Digest::of(&tar_only(file_name, elf)?);
    let mut config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    if let Some(v) = &platform.variant {
        config["variant"] = serde_json::Value::String(v.clone());
    }
    let config = serde_json::to_vec(&config).expect("json");
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::of(OCI_CONFIG, &config),
        layers: vec![Descriptor::of(OCI_LAYER_TAR_GZIP, &layer)],
        annotations: BTreeMap::new(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
    let bundle = ImageBundle {
        digest: Digest::of(&manifest_bytes),
        manifest: manifest_bytes.into(),
        media_type: OCI_MANIFEST.into(),
        blobs: vec![(manifest.config.digest.clone(), config.into()), (manifest.layers[0].digest.clone(), layer.into())],
    };
    Ok(BuiltImage { bundle, contents, labels })
}

/// An index over single-platform images (already pushed or written by digest).
pub fn build_index(entries: &[(Platform, &ImageBundle)]) -> ImageBundle {
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: entries
            .iter()
            .map(|(p, b)| Descriptor { platform: Some(p.clone()), ..Descriptor::of(&b.media_type, &b.manifest) })
            .collect(),
        annotations: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&index).expect("json");
    ImageBundle { digest: Digest::of(&bytes), manifest: bytes.into(), media_type: OCI_INDEX.into(), blobs: vec![] }
}

fn tar_only(file_name: &str, elf: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(elf.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let io = |e: std::io::Error| Error::invalid_image(format!("building the layer: {e}"));
    builder.append_data(&mut header, file_name, elf).map_err(io)?;
    builder.into_inner().map_err(io)
}

fn tar_gz(file_name: &str, elf: &[u8]) -> Result<Vec<u8>> {
    let tar = tar_only(file_name, elf)?;
    // GzEncoder writes mtime 0 and no file name: the bytes depend on the content only.
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    let io = |e: std::io::Error| Error::invalid_image(format!("compressing the layer: {e}"));
    gz.write_all(&tar).map_err(io)?;
    gz.finish().map_err(io)
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Write `bundle` as an OCI image layout in `dir` (created if missing; an existing
/// layout gets the image added), tagged `tag` in `index.json` if given.
pub fn write_layout(dir: &Path, bundle: &ImageBundle, tag: Option<&str>) -> Result<()> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
    let write = |path: &Path, bytes: &[u8]| std::fs::write(path, bytes).map_err(|e| Error::io(path, e));
    write(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for (digest, data) in bundle.blobs.iter().chain([(bundle.digest.clone(), bundle.manifest.clone())].iter()) {
        write(&blobs.join(digest.hex()), data)?;
    }
    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice::<Index>(&bytes)
            .map_err(|e| Error::invalid_image(format!("{}: {e}", index_path.display())))?,
        Err(_) => Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![],
            annotations: BTreeMap::new(),
        },
    };
    let mut desc = Descriptor::of(&bundle.media_type, &bundle.manifest);
    if let Some(tag) = tag {
        desc.annotations.insert(REF_NAME.into(), tag.into());
        index.manifests.retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(tag));
    }
    index.manifests.retain(|d| d.digest != desc.digest || !d.annotations.is_empty());
    index.manifests.push(desc);
    write(&index_path, &serde_json::to_vec_pretty(&index).expect("json"))
}

/// Read the image tagged `tag` (or the only image) from the OCI layout in `dir`.
pub fn read_layout(dir: &Path, tag: Option<&str>) -> Result<ImageBundle> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| Error::io(path, e));
    let index_path = dir.join("index.json");
    let index: Index = serde_json::from_slice(&read(&index_path)?)
        .map_err(|e| Error::invalid_image(format!("{}: {e}", index_path.display())))?;
    let desc = match tag {
        Some(t) => index.manifests.iter().find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t)),
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => {
            return Err(Error::invalid_image(format!(
                "{} holds {} images; name one by its tag (DIR:TAG)",
                dir.display(),
                index.manifests.len()
            )));
        }
    }
    .ok_or_else(|| Error::invalid_image(format!("{} has no image tagged {:?}", dir.display(), tag.unwrap_or(""))))?;
    let blob = |d: &Digest| -> Result<Bytes> {
        let bytes = read(&dir.join("blobs").join("sha256").join(d.hex()))?;
        if !d.matches(&bytes) {
            return Err(Error::Tampered {
                what: "blob in the layout".into(),
                expected: d.clone(),
                actual: Digest::of(&bytes),
            });
        }
        Ok(bytes.into())
    };
    let manifest = blob(&desc.digest)?;
    let ManifestDoc::Image(m) = ManifestDoc::parse(&manifest, Some(&desc.media_type))? else {
        return Err(Error::invalid_image("pushing an index from a layout is not supported; push each image"));
    };
    let mut blobs = vec![(m.config.digest.clone(), blob(&m.config.digest)?)];
    for l in &m.layers {
        blobs.push((l.digest.clone(), blob(&l.digest)?));
    }
    Ok(ImageBundle { manifest, media_type: desc.media_type.clone(), digest: desc.digest.clone(), blobs })
}

impl Client {
    /// Push every blob of `bundle`, then its manifest under `reference`'s tag (or by
    /// digest). Returns the manifest digest.
    pub async fn push(&self, reference: &Reference, bundle: &ImageBundle) -> Result<Digest> {
        for (digest, data) in &bundle.blobs {
            self.push_blob(reference, digest, data.clone()).await?;
        }
        self.push_manifest(reference, &bundle.media_type, bundle.manifest.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::extract_elf;
    use crate::layer::tests::fake_bpf_elf;

    #[test]
    fn layer_is_reproducible_and_unpacks() {
        let elf = fake_bpf_elf(100);
        let (a, b) = (tar_gz("p.o", &elf).unwrap(), tar_gz("p.o", &elf).unwrap());
        assert_eq!(a, b);
        let f = extract_elf(&a, "l").unwrap();
        assert_eq!((f.name.as_str(), f.bytes), ("p.o", elf));
    }

    #[test]
    fn layout_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = ImageBundle {
            manifest: Bytes::from_static(b"{}"),
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(b"{}"),
            blobs: vec![],
        };
        write_layout(dir.path(), &bundle, Some("v1")).unwrap();
        assert!(dir.path().join("oci-layout").exists());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "v1");
        // "{}" is not a manifest: reading says so instead of pushing garbage.
        assert_eq!(read_layout(dir.path(), Some("v1")).unwrap_err().kind(), crate::ErrorKind::InvalidImage);
        assert!(read_layout(dir.path(), Some("v2")).unwrap_err().to_string().contains("no image tagged \"v2\""));
    }
}
