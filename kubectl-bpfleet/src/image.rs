//! `kubectl bpfleet image …`: make bytecode images from an ELF object, push them, sign
//! them, inspect them. No Docker, no cosign, no cluster: only the registry.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use oci::{Client, ClientOptions, Credentials, Platform, PublicKey, Reference, SigningKey};

use crate::Exit;

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Make a bytecode image (bpfman's format) from an ELF object: one layer with the
    /// object at its root, labels io.ebpf.programs and io.ebpf.maps from the object.
    ///
    /// Writes an OCI image layout with -o DIR, pushes with --tag REF --push, or both.
    /// The same object always gives the same digest.
    Build {
        /// The eBPF object (clang -target bpf).
        elf: PathBuf,
        /// Write the image as an OCI layout into this directory.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The image reference (registry/repository:tag); also the tag in the layout.
        #[arg(short, long)]
        tag: Option<String>,
        /// Push the image to --tag.
        #[arg(long, requires = "tag")]
        push: bool,
        /// The object's file name in the image (default: the ELF's file name).
        #[arg(long)]
        file_name: Option<String>,
        /// The architecture recorded in the image config (Go name: amd64, arm64).
        #[arg(long, default_value_t = Platform::host().architecture)]
        arch: String,
        /// More labels, KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Push an image from an OCI layout directory to REF.
    Push {
        /// The OCI layout directory (from `image build -o`).
        dir: PathBuf,
        /// Where to push: registry/repository:tag.
        reference: String,
        /// Which image of the layout (its tag there), when it holds several.
        #[arg(long)]
        layout_tag: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Sign an image (cosign format) with a private key and push the signature
    /// (tag sha256-<digest>.sig in the same repository).
    Sign {
        /// The image; a tag is resolved to its digest first, and the digest is signed.
        reference: String,
        /// The PKCS#8 PEM private key (cosign.key from `image generate-key`).
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Check an image's signature against public keys, as the operator does.
    Verify {
        reference: String,
        /// PEM public key file(s) (cosign.pub).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Write a new ECDSA P-256 key pair: DIR/cosign.key (private, PKCS#8 PEM, mode 0600)
    /// and DIR/cosign.pub (public, PEM; put it in the signature policy's Secret).
    GenerateKey {
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Pull an image and show its digest, labels, programs and maps.
    Inspect {
        reference: String,
        /// The architecture to pick from a multi-arch index (Go name).
        #[arg(long, default_value_t = Platform::host().architecture)]
        arch: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// How to reach the registry.
#[derive(Args, Debug, Default, Clone)]
pub struct RegistryArgs {
    /// Plain HTTP instead of HTTPS (loopback test registries only).
    #[arg(long)]
    pub insecure_http: bool,
    /// PEM CA certificate(s) to trust besides the system's.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Registry user (with --password).
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// Registry password or token.
    #[arg(long, env = "BPFLEET_REGISTRY_PASSWORD", hide_env_values = true, requires = "username")]
    pub password: Option<String>,
    /// Docker config with credentials (default: $DOCKER_CONFIG/config.json, then
    /// ~/.docker/config.json, when present).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} must be KEY=VALUE")),
    }
}

impl RegistryArgs {
    /// Credentials for `registry`: --username/--password, else the Docker config.
    pub fn credentials(&self, registry: &str) -> anyhow::Result<Credentials> {
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            return Ok(Credentials::basic(registry, u, p));
        }
        let path = match &self.docker_config {
            Some(p) => Some(p.clone()),
            None => default_docker_config().filter(|p| p.exists()),
        };
        let Some(path) = path else { return Ok(Credentials::anonymous()) };
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Credentials::from_docker_config(&bytes).with_context(|| path.display().to_string())
    }

    pub fn client(&self, registry: &str) -> anyhow::Result<Client> {
        let ca_pem = match &self.ca_file {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
            None => None,
        };
        let options = ClientOptions {
            credentials: self.credentials(registry)?,
            insecure_http: self.insecure_http,
            ca_pem,
            ..Default::default()
        };
        Ok(Client::new(options)?)
    }
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

fn reference(s: &str) -> anyhow::Result<Reference> {
    Ok(Reference::parse(s)?)
}

pub async fn run(cmd: ImageCommand, out: &mut dyn Write) -> anyhow::Result<Exit> {
    match cmd {
        ImageCommand::Build { elf, output, tag, push, file_name, arch, labels, registry } => {
            if output.is_none() && !push {
                bail!("nothing to do: give -o DIR (an OCI layout) and/or --tag REF --push");
            }
            let target = tag.as_deref().map(reference).transpose()?;
            let bytes = std::fs::read(&elf).with_context(|| format!("cannot read {}", elf.display()))?;
            let name = match file_name {
                Some(n) => n,
                None => elf
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("the ELF path has no file name")?,
            };
            let extra: BTreeMap<String, String> = labels.into_iter().collect();
            let built = oci::build_image(&bytes, &name, &Platform::linux(&arch), &extra)?;
            writeln!(out, "digest: {}", built.bundle.digest)?;
            writeln!(out, "programs: {}", serde_json::to_string(&built.contents.programs)?)?;
            writeln!(out, "maps: {}", serde_json::to_string(&built.contents.maps)?)?;
            if let Some(dir) = output {
                let layout_tag = target.as_ref().and_then(|t| t.tag.clone()).unwrap_or_else(|| "latest".into());
                oci::write_layout(&dir, &built.bundle, Some(&layout_tag))?;
                writeln!(out, "wrote OCI layout {} (tag {layout_tag})", dir.display())?;
            }
            if push {
                let target = target.expect("clap requires --tag with --push");
                let client = registry.client(&target.registry)?;
                let digest = client.push(&target, &built.bundle).await?;
                writeln!(out, "pushed {}", target.with_digest(digest))?;
            }
        }
        ImageCommand::Push { dir, reference: r, layout_tag, registry } => {
            let target = reference(&r)?;
            let bundle = oci::read_layout(&dir, layout_tag.as_deref())?;
            let client = registry.client(&target.registry)?;
            let digest = client.push(&target, &bundle).await?;
            writeln!(out, "pushed {}", target.with_digest(digest))?;
        }
        ImageCommand::Sign { reference: r, key, registry } => {
            let target = reference(&r)?;
            let pem = std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let key = SigningKey::from_pem(&pem).with_context(|| key.display().to_string())?;
            let client = registry.client(&target.registry)?;
            let digest = client.resolve(&target).await?;
            client.sign(&target, &digest, &key).await?;
            writeln!(out, "signed {} ({})", target.with_digest(digest.clone()), oci::sign::signature_tag(&digest))?;
        }
        ImageCommand::Verify { reference: r, keys, registry } => {
            let target = reference(&r)?;
            let mut trusted = Vec::new();
            for path in &keys {
                let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                trusted.extend(PublicKey::parse_pem(&pem).with_context(|| path.display().to_string())?);
            }
            let client = registry.client(&target.registry)?;
            let digest = client.resolve(&target).await?;
            let verified = client.verify(&target, &digest, &trusted).await?;
            writeln!(out, "verified {} with key {}", target.with_digest(digest), verified.key_index + 1)?;
        }
        ImageCommand::GenerateKey { out: dir, force } => {
            let (private, public) = generate_key(&dir, force)?;
            writeln!(out, "wrote {} and {}", private.display(), public.display())?;
        }
        ImageCommand::Inspect { reference: r, arch, registry } => {
            let target = reference(&r)?;
            let client = registry.client(&target.registry)?;
            let image = client.pull(&target, &Platform::linux(&arch)).await?;
            write_inspect(&image, out)?;
        }
    }
    Ok(Exit::Ok)
}

/// Write DIR/cosign.key (0600) and DIR/cosign.pub; refuse to overwrite without `force`.
pub fn generate_key(dir: &Path, force: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (private_path, public_path) = (dir.join("cosign.key"), dir.join("cosign.pub"));
    for p in [&private_path, &public_path] {
        if p.exists() && !force {
            bail!("{} exists; pass --force to overwrite it", p.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (private, public) = oci::generate_key_pair()?;
    write_private(&private_path, private.as_bytes())?;
    std::fs::write(&public_path, public).with_context(|| format!("cannot write {}", public_path.display()))?;
    Ok((private_path, public_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn write_inspect(image: &oci::Image, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "reference: {}", image.reference)?;
    writeln!(out, "digest: {}", image.digest)?;
    if image.manifest_digest != image.digest {
        let platform = image.platform.as_ref().map(|p| p.to_string()).unwrap_or_default();
        writeln!(out, "manifest: {} ({platform})", image.manifest_digest)?;
    }
    writeln!(out, "layer: {}", image.layer_digest)?;
    writeln!(out, "object: {} ({} bytes)", image.elf_name, image.elf.len())?;
    let table = |m: &Option<BTreeMap<String, String>>| match m {
        None => "(no label)".to_string(),
        Some(m) if m.is_empty() => "(none)".to_string(),
        Some(m) => m.iter().map(|(k, v)| format!("{k} ({v})")).collect::<Vec<_>>().join(", "),
    };
    writeln!(out, "programs: {}", table(&image.programs))?;
    writeln!(out, "maps: {}", table(&image.maps))?;
    let others: Vec<_> = image.labels.iter().filter(|(k, _)| !k.starts_with("io.ebpf.")).collect();
    for (k, v) in others {
        writeln!(out, "label {k}: {v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn image(args: &[&str]) -> Result<ImageCommand, clap::Error> {
        let cli = Cli::try_parse_from(["kubectl-bpfleet", "image"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Command::Image(c) => Ok(*c),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn command_lines() {
        match image(&["build", "x.o", "-o", "out", "--tag", "localhost:5000/x:v1", "--push", "--insecure-http"])
            .unwrap()
        {
            ImageCommand::Build { elf, output, tag, push, registry, arch, .. } => {
                assert_eq!((elf, output), (PathBuf::from("x.o"), Some(PathBuf::from("out"))));
                assert_eq!((tag.as_deref(), push, registry.insecure_http), (Some("localhost:5000/x:v1"), true, true));
                assert_eq!(arch, Platform::host().architecture);
            }
            c => panic!("{c:?}"),
        }
        // --push needs --tag; --username needs --password.
        assert!(image(&["build", "x.o", "--push"]).is_err());
        assert!(image(&["inspect", "r", "--username", "u"]).is_err());
        assert!(image(&["build", "x.o", "-o", "d", "--label", "novalue"]).is_err());
        match image(&["build", "x.o", "-o", "d", "--label", "a=b=c", "--arch", "arm64"]).unwrap() {
            ImageCommand::Build { labels, arch, .. } => {
                assert_eq!((labels, arch.as_str()), (vec![("a".into(), "b=c".into())], "arm64"))
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(image(&["push", "dir", "r:v1"]).unwrap(), ImageCommand::Push { .. }));
        assert!(matches!(image(&["sign", "r:v1", "--key", "k.pem"]).unwrap(), ImageCommand::Sign { .. }));
        assert!(image(&["sign", "r:v1"]).is_err());
        assert!(matches!(image(&["verify", "r", "--key", "a.pub", "--key", "b.pub"]).unwrap(),
            ImageCommand::Verify { keys, .. } if keys.len() == 2));
        assert!(matches!(image(&["generate-key", "--out", "d"]).unwrap(), ImageCommand::GenerateKey { .. }));
        match image(&["inspect", "r", "--ca-file", "ca.pem", "--docker-config", "c.json"]).unwrap() {
            ImageCommand::Inspect { registry, .. } => {
                assert_eq!(registry.ca_file, Some(PathBuf::from("ca.pem")));
                assert_eq!(registry.docker_config, Some(PathBuf::from("c.json")));
            }
            c => panic!("{c:?}"),
        }
    }

    #[tokio::test]
    async fn build_needs_an_output_or_a_push() {
        let cmd = image(&["build", "x.o"]).unwrap();
        let e = run(cmd, &mut Vec::new()).await.unwrap_err();
        assert!(e.to_string().contains("nothing to do"), "{e}");
        let cmd = image(&["build", "/nonexistent/x.o", "-o", "d"]).unwrap();
        assert!(run(cmd, &mut Vec::new()).await.unwrap_err().to_string().contains("cannot read /nonexistent/x.o"));
    }

    #[test]
    fn credentials_from_flags_or_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let args = RegistryArgs { username: Some("u".into()), password: Some("p".into()), ..Default::default() };
        assert_eq!(args.credentials("r:5000").unwrap().for_registry("r:5000").unwrap().username, "u");
        let config = dir.path().join("config.json");
        std::fs::write(&config, r#"{"auths":{"r:5000":{"auth":"dTI6cDI="}}}"#).unwrap();
        let args = RegistryArgs { docker_config: Some(config), ..Default::default() };
        assert_eq!(args.credentials("r:5000").unwrap().for_registry("r:5000").unwrap().username, "u2");
        let args = RegistryArgs { docker_config: Some(dir.path().join("missing.json")), ..Default::default() };
        assert!(args.credentials("r:5000").unwrap_err().to_string().contains("cannot read"));
    }

    #[test]
    fn generate_key_writes_a_pair_and_keeps_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_key(dir.path(), false).unwrap();
        let key = SigningKey::from_pem(&std::fs::read(&private).unwrap()).unwrap();
        assert_eq!(PublicKey::parse_pem(&std::fs::read(&public).unwrap()).unwrap(), vec![key.public_key()]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(generate_key(dir.path(), false).unwrap_err().to_string().contains("--force"));
        generate_key(dir.path(), true).unwrap();
    }
}
