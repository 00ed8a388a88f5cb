//! The distribution API operations: resolve a tag, fetch manifests and blobs (each
//! checked against its digest), pull a bytecode image, push blobs and manifests.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, StatusCode};

use crate::client::{Access, Client, Response, error_detail};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::labels::{check_programs, parse_label};
use crate::layer::extract_elf;
use crate::limits::{MAX_LAYER_BYTES, MAX_MANIFEST_BYTES};
use crate::manifest::{
    Descriptor, ImageConfig, MANIFEST_ACCEPT, MAPS_LABEL, Manifest, ManifestDoc, PROGRAMS_LABEL, is_tar_layer,
};
use crate::platform::Platform;
use crate::reference::Reference;

/// A pulled, checked bytecode image.
#[derive(Clone, Debug)]
pub struct Image {
    /// `registry/repository@digest`: what every node runs.
    pub reference: Reference,
    /// The digest pinned: of the index when the reference names one, else of the manifest.
    pub digest: Digest,
    /// The digest of the platform's image manifest (equal to `digest` without an index).
    pub manifest_digest: Digest,
    /// The index entry chosen, when there was an index.
    pub platform: Option<Platform>,
    pub layer_digest: Digest,
    /// Every label of the image config.
    pub labels: BTreeMap<String, String>,
    /// `io.ebpf.programs`, name -> type, when the image has it.
    pub programs: Option<BTreeMap<String, String>>,
    /// `io.ebpf.maps`, name -> type, when the image has it.
    pub maps: Option<BTreeMap<String, String>>,
    /// The object's file name in the layer.
    pub elf_name: String,
    /// The ELF object.
    pub elf: Bytes,
}

impl Image {
    /// Check the programs a spec names (`(function name, type)`, types as the spec spells
    /// them: `XDP`, `TC`, `Kprobe`, …) against the `io.ebpf.programs` label. An image
    /// without the label passes: the ELF itself is checked where it is loaded.
    pub fn check_programs(&self, expected: &[(&str, &str)]) -> Result<()> {
        match &self.programs {
            Some(labeled) => check_programs(labeled, expected).map_err(Error::LabelsMismatch),
            None => Ok(()),
        }
    }
}

impl Client {
    /// The digest `reference` names now: its digest if it has one (not checked here:
    /// [`Client::pull`] verifies it), else the tag's current manifest (or index) digest.
    pub async fn resolve(&self, reference: &Reference) -> Result<Digest> {
        let what = format!("resolving {reference}");
        self.image_work(reference.api_host(), &what, self.resolve_inner(reference)).await
    }

    async fn resolve_inner(&self, reference: &Reference) -> Result<Digest> {
        if let Some(d) = &reference.digest {
            return Ok(d.clone());
        }
        let resp = self.manifest_request(reference, Method::HEAD, &reference.manifest_reference()).await?;
        if let Some(d) = resp.header("docker-content-digest").and_then(|d| Digest::parse(d).ok()) {
            return Ok(d);
        }
        // Not every registry sends the header: hash the manifest itself.
        let (bytes, _) = self.fetch_manifest(reference, &reference.manifest_reference()).await?;
        Ok(Digest::of(&bytes))
    }

    /// Pull `reference` (resolved first if it has no digest) for `platform`: the
    /// manifest (the platform's entry of an index), the config's labels and the ELF
    /// object of its single tar layer, every piece checked against its digest.
    /// One pull of the shared budget and the image deadline apply.
    pub async fn pull(&self, reference: &Reference, platform: &Platform) -> Result<Image> {
        let what = format!("pulling {reference}");
        self.image_work(reference.api_host(), &what, self.pull_inner(reference, platform)).await
    }

    async fn pull_inner(&self, reference: &Reference, platform: &Platform) -> Result<Image> {
        let digest = self.resolve_inner(reference).await?;
        let pinned = reference.with_digest(digest.clone());
        let (bytes, content_type) = self.fetch_manifest(&pinned, digest.as_str()).await?;
        check_digest("manifest", &digest, &bytes)?;
        let (manifest, manifest_digest, chosen) = match ManifestDoc::parse(&bytes, content_type.as_deref())? {
            ManifestDoc::Image(m) => (m, digest.clone(), None),
            ManifestDoc::Index(index) => {
                let entry = index.select(platform)?.clone();
                let (bytes, content_type) = self.fetch_manifest(&pinned, entry.digest.as_str()).await?;
                check_digest("manifest", &entry.digest, &bytes)?;
                match ManifestDoc::parse(&bytes, content_type.as_deref())? {
                    ManifestDoc::Image(m) => (m, entry.digest.clone(), entry.platform.clone()),
                    ManifestDoc::Index(_) => {
                        return Err(Error::invalid_image(format!(
                            "the index entry {} for {platform} is itself an index; nested indexes are not supported",
                            entry.digest
                        )));
                    }
                }
            }
        };
        let layer = bytecode_layer(&manifest)?;
        let config = self.fetch_blob(&pinned, &manifest.config, MAX_MANIFEST_BYTES, "image config").await?;
        let labels = ImageConfig::labels(&config)?;
        let programs = labels.get(PROGRAMS_LABEL).map(|v| parse_label(PROGRAMS_LABEL, v)).transpose()?;
        let maps = labels.get(MAPS_LABEL).map(|v| parse_label(MAPS_LABEL, v)).transpose()?;
        let blob = self.fetch_blob(&pinned, layer, MAX_LAYER_BYTES, "layer").await?;
        let layer_digest = layer.digest.clone();
        let elf = tokio::task::spawn_blocking(move || extract_elf(&blob, layer_digest.as_str()))
            .await
            .map_err(|e| Error::invalid_image(format!("unpacking the layer failed: {e}")))??;
        Ok(Image {
            reference: pinned,
            digest,
            manifest_digest,
            platform: chosen,
            layer_digest: layer.digest.clone(),
            labels,
            programs,
            maps,
            elf_name: elf.name,
            elf: elf.bytes.into(),
        })
    }

    /// The raw manifest at `mref` (tag or digest) and its served content type.
    pub async fn fetch_manifest(&self, reference: &Reference, mref: &str) -> Result<(Bytes, Option<String>)> {
        let resp = self.manifest_request(reference, Method::GET, mref).await?;
        let content_type = resp.header(CONTENT_TYPE.as_str()).map(str::to_string);
        Ok((resp.body, content_type))
    }

    async fn manifest_request(&self, reference: &Reference, method: Method, mref: &str) -> Result<Response> {
        let path = format!("/v2/{}/manifests/{mref}", reference.repository);
        let what = format!("manifest {}:{mref}", reference.repository);
        let resp = self
            .request(
                reference.api_host(),
                &reference.repository,
                Access::Pull,
                method,
                &path,
                &[(ACCEPT, MANIFEST_ACCEPT.to_string())],
                Bytes::new(),
                MAX_MANIFEST_BYTES,
                &what,
            )
            .await?;
        match resp.status {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(Error::ImageNotFound {
                registry: reference.registry.clone(),
                reference: if mref.starts_with("sha256:") {
                    format!("{}@{mref}", reference.repository)
                } else {
                    format!("{}:{mref}", reference.repository)
                },
            }),
            _ => Err(status_error(reference, &resp, &what)),
        }
    }

    /// A blob, at most `limit` bytes, checked against the descriptor's digest.
    pub async fn fetch_blob(&self, reference: &Reference, desc: &Descriptor, limit: u64, what: &str) -> Result<Bytes> {
        let what = format!("{what} {}", desc.digest);
        if desc.size > limit {
            return Err(Error::TooLarge { what: format!("{what} ({} bytes)", desc.size), limit });
        }
        let path = format!("/v2/{}/blobs/{}", reference.repository, desc.digest);
        let resp = self
            .request(
                reference.api_host(),
                &reference.repository,
                Access::Pull,
                Method::GET,
                &path,
                &[],
                Bytes::new(),
                limit,
                &what,
            )
            .await?;
        match resp.status {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::ImageNotFound { registry: reference.registry.clone(), reference: what });
            }
            _ => return Err(status_error(reference, &resp, &what)),
        }
        let kind = what.split(' ').next().unwrap_or("blob").to_string();
        check_digest(&kind, &desc.digest, &resp.body)?;
        Ok(resp.body)
    }

    /// Upload a blob unless the repository has it (monolithic: POST, then PUT).
    pub async fn push_blob(&self, reference: &Reference, digest: &Digest, data: Bytes) -> Result<()> {
        let (host, repo) = (reference.api_host(), reference.repository.as_str());
        let what = format!("blob {digest}");
        let path = format!("/v2/{repo}/blobs/{digest}");
        let head = self.request(host, repo, Access::Push, Method::HEAD, &path, &[], Bytes::new(), 0, &what).await?;
        if head.status.is_success() {
            return Ok(());
        }
        let start = format!("/v2/{repo}/blobs/uploads/");
        let resp =
            self.request(host, repo, Access::Push, Method::POST, &start, &[], Bytes::new(), 1 << 16, &what).await?;
        if resp.status != StatusCode::ACCEPTED {
            return Err(status_error(reference, &resp, &format!("starting the upload of {what}")));
        }
        let location = resp.header("location").ok_or_else(|| Error::Registry {
            registry: reference.registry.clone(),
            status: resp.status.as_u16(),
            what: format!("starting the upload of {what}"),
            detail: "no Location header".into(),
        })?;
        let base: http::Uri = format!("{}{start}", self.base(host)).parse().expect("valid URL");
        let url = crate::client::join_location(&base, location).ok_or_else(|| Error::Registry {
            registry: reference.registry.clone(),
            status: resp.status.as_u16(),
            what: format!("starting the upload of {what}"),
            detail: format!("unusable Location {location:?}"),
        })?;
        let url = url.to_string();
        let url = format!("{url}{}digest={digest}", if url.contains('?') { '&' } else { '?' });
        let headers = [(CONTENT_TYPE, "application/octet-stream".to_string())];
        let resp = self.request(host, repo, Access::Push, Method::PUT, &url, &headers, data, 1 << 16, &what).await?;
        if resp.status != StatusCode::CREATED {
            return Err(status_error(reference, &resp, &format!("uploading {what}")));
        }
        Ok(())
    }

    /// Put a manifest (or index) under `reference`'s tag, or its digest if untagged.
    pub async fn push_manifest(&self, reference: &Reference, media_type: &str, manifest: Bytes) -> Result<Digest> {
        let digest = Digest::of(&manifest);
        let mref = reference.tag.clone().unwrap_or_else(|| digest.to_string());
        let path = format!("/v2/{}/manifests/{mref}", reference.repository);
        let what = format!("manifest {}:{mref}", reference.repository);
        let headers = [(CONTENT_TYPE, media_type.to_string())];
        let resp = self
            .request(
                reference.api_host(),
                &reference.repository,
                Access::Push,
                Method::PUT,
                &path,
                &headers,
                manifest,
                1 << 16,
                &what,
            )
            .await?;
        if resp.status != StatusCode::CREATED && !resp.status.is_success() {
            return Err(status_error(reference, &resp, &format!("putting {what}")));
        }
        Ok(digest)
    }
}

/// The one tar layer of a bytecode image.
fn bytecode_layer(manifest: &Manifest) -> Result<&Descriptor> {
    let tars: Vec<&Descriptor> = manifest.layers.iter().filter(|l| is_tar_layer(&l.media_type)).collect();
    match tars.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::NotBytecode {
            reason: format!(
                "the manifest has no tar layer (layer media types: {}); a bytecode image has one \
                 application/vnd.oci.image.layer.v1.tar+gzip layer with the .o file at its root",
                if manifest.layers.is_empty() {
                    "none".to_string()
                } else {
                    manifest.layers.iter().map(|l| l.media_type.as_str()).collect::<Vec<_>>().join(", ")
                }
            ),
        }),
        many => Err(Error::NotBytecode {
            reason: format!(
                "the manifest has {} tar layers; a bytecode image has exactly one, with the .o file at its root",
                many.len()
            ),
        }),
    }
}

fn check_digest(what: &str, expected: &Digest, bytes: &[u8]) -> Result<()> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(Error::Tampered { what: what.to_string(), expected: expected.clone(), actual });
    }
    Ok(())
}

pub(crate) fn status_error(reference: &Reference, resp: &Response, what: &str) -> Error {
    let registry = reference.registry.clone();
    let detail = error_detail(resp);
    match resp.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Error::Unauthorized { registry, detail: format!("{what}: {detail}") }
        }
        s => Error::Registry { registry, status: s.as_u16(), what: what.to_string(), detail },
    }
}
