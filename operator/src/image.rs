//! `bytecode.image`: resolve the tag to a digest once per spec generation, pull that
//! digest once (a cache bounded in bytes), check it (digests, limits, labels against the
//! spec, the signature policy), and hand the ELF to the controller like any other
//! bytecode. Agents never reach a registry.
//!
//! Against a hostile registry (issue 21, point 5): one [`oci::PullBudget`] per
//! leadership term bounds pulls and bytes in flight across every program and pull
//! secret; the image cache is sized from the memory limit ([`crate::memory`]); each
//! image has a deadline; redirects and token realms follow [`oci::policy`] (private
//! ranges only when `--registry-allow-private-ranges` lists them); what reaches the
//! status is the oci crate's message (never a registry's body), stripped of control
//! characters.
//!
//! What is recorded in `status.image` makes the digest stick: an unchanged spec is
//! never re-resolved, so a tag moved in the registry reaches no node until the spec
//! changes or the `bpfleet.dev/resolve-image` annotation gets a new value.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crds::program::{ImageStatus, PullPolicy};
use crds::reason::Reason;
use crds::{BpfProgram, ProgramSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use sha2::{Digest as _, Sha256};

use crate::bytecode::Payload;
use crate::status::SpecProblem;

/// Annotation whose new value makes the operator resolve the image's tag again.
pub const RESOLVE_ANNOTATION: &str = "bpfleet.dev/resolve-image";
/// Pulled images kept, in ELF bytes (least recently used go first), without a memory
/// limit; [`crate::memory::MemoryBudget`] sizes it from the limit.
pub const MAX_CACHE_BYTES: usize = 128 << 20;
/// How long the signature policy's Secret is trusted before it is read again.
const POLICY_TTL: Duration = Duration::from_secs(30);

/// How the operator reaches registries and what it trusts.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// Where pull secrets and the signature policy's Secret live.
    pub namespace: String,
    /// Registries (`host[:port]`) spoken to over plain HTTP (loopback test registries).
    pub insecure_registries: Vec<String>,
    /// PEM certificates trusted besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A Secret whose `*.pub` keys are the signature policy: with it, only images signed
    /// by one of them run.
    pub signature_keys_secret: Option<String>,
    /// Special address ranges redirects and token realms may lead to (the registry's
    /// own host needs none).
    pub allow_private_ranges: Vec<oci::Cidr>,
    /// Pulled images kept, in ELF bytes.
    pub cache_bytes: usize,
    /// Pulls (and signature checks) at once, across every program.
    pub max_pulls: usize,
    /// Registry answers being read at once, in bytes.
    pub max_bytes_in_flight: u64,
    /// Resolving, pulling or verifying one image, as a whole.
    pub image_deadline: Duration,
}

impl Default for ImageConfig {
    fn default() -> Self {
        let memory = crate::memory::MemoryBudget::default();
        ImageConfig {
            namespace: String::new(),
            insecure_registries: Vec::new(),
            ca_pem: None,
            signature_keys_secret: None,
            allow_private_ranges: Vec::new(),
            cache_bytes: memory.image_cache_bytes,
            max_pulls: memory.max_pulls,
            max_bytes_in_flight: memory.registry_bytes_in_flight,
            image_deadline: DEFAULT_IMAGE_DEADLINE,
        }
    }
}

/// Resolving, pulling or verifying one image, as a whole, unless configured.
pub const DEFAULT_IMAGE_DEADLINE: Duration = Duration::from_secs(120);

/// A resolved, pulled and checked image.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub payload: Payload,
    pub status: ImageStatus,
}

struct Policy {
    read: Instant,
    /// (data key, key)
    keys: Vec<(String, oci::PublicKey)>,
    fingerprint: String,
}

/// Where image bytecode comes from: the registries, through [`Images`], or nowhere
/// ([`ImageSource::disabled`]: an operator not set up for it, as in tests, refuses every
/// image-sourced program).
pub struct ImageSource(Option<Images>);

impl ImageSource {
    pub fn registries(images: Images) -> Self {
        Self(Some(images))
    }

    pub fn disabled() -> Self {
        Self(None)
    }

    /// The registries, when set up.
    pub fn images(&self) -> Option<&Images> {
        self.0.as_ref()
    }

    /// The image of an image-sourced program, for the architecture of its target nodes.
    pub async fn resolve(
        &self,
        p: &BpfProgram,
        nodes: &[crate::targets::NodeInfo],
        targets: &std::collections::BTreeSet<String>,
    ) -> Result<Resolved, SpecProblem> {
        let Some(images) = &self.0 else {
            return Err(problem(Reason::InvalidSpec, "this operator is not set up for image bytecode".into()));
        };
        let arch = target_arch(archs(nodes, targets))?;
        images.resolve(p, &arch).await
    }
}

/// Images of one leadership term.
pub struct Images {
    client: Client,
    cfg: ImageConfig,
    pulled: Mutex<Lru>,
    budget: Arc<oci::PullBudget>,
    /// (image digest, policy fingerprint) -> the key name that verified it, or why not.
    verified: Mutex<HashMap<(String, String), Result<String, SpecProblem>>>,
    policy: Mutex<Option<Arc<Policy>>>,
}

struct Lru {
    order: VecDeque<String>,
    images: HashMap<String, Arc<oci::Image>>,
    bytes: usize,
    capacity: usize,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru { order: VecDeque::new(), images: HashMap::new(), bytes: 0, capacity }
    }

    fn get(&mut self, key: &str) -> Option<Arc<oci::Image>> {
        let hit = self.images.get(key).cloned()?;
        self.order.retain(|k| k != key);
        self.order.push_back(key.to_string());
        Some(hit)
    }

    fn put(&mut self, key: String, image: Arc<oci::Image>) {
        if let Some(old) = self.images.insert(key.clone(), image.clone()) {
            self.bytes -= old.elf.len();
            self.order.retain(|k| *k != key);
        }
        self.bytes += image.elf.len();
        self.order.push_back(key);
        while self.bytes > self.capacity && self.order.len() > 1 {
            if let Some(k) = self.order.pop_front()
                && let Some(gone) = self.images.remove(&k)
            {
                self.bytes -= gone.elf.len();
            }
        }
    }
}

fn problem(reason: Reason, message: String) -> SpecProblem {
    SpecProblem { reason, message }
}

/// The status reason of an image error: what the user must look at.
pub fn reason_of(e: &oci::Error) -> Reason {
    use oci::ErrorKind as K;
    match e.kind() {
        K::InvalidReference | K::InvalidKey | K::InvalidCredentials => Reason::InvalidSpec,
        K::ImageNotFound | K::Unauthorized | K::RegistryUnreachable | K::RedirectRefused | K::RegistryError | K::Io => {
            Reason::ImageUnavailable
        }
        K::Tampered | K::TooLarge | K::NotBytecode | K::InvalidImage | K::LabelsMismatch | K::PlatformNotFound => {
            Reason::ImageInvalid
        }
        K::Unsigned => Reason::ImageUnsigned,
        K::SignatureInvalid => Reason::ImageSignatureInvalid,
        K::UnknownKey => Reason::ImageUntrustedKey,
    }
}

/// The oci crate's message, which names hosts and digests but quotes no registry
/// body; what a registry may still put in it (a tag, a media type) is stripped of
/// control characters and bounded.
fn from_oci(e: oci::Error) -> SpecProblem {
    problem(reason_of(&e), crds::sanitize::for_status(&e.to_string()))
}

/// Which digest the spec runs now, without a registry when it can: the spec's own
/// digest, else the one recorded for this url (and resolve token), else `None` (resolve
/// the tag).
pub fn pinned_digest(
    image: &crds::program::ImageBytecode,
    previous: Option<&ImageStatus>,
    token: Option<&str>,
) -> Option<String> {
    if let Some(d) = &image.digest {
        return Some(d.clone());
    }
    // Only a change of the image itself (its url) or of the resolve annotation resolves
    // again: a resume, a pause or a selector edit must not pick up a moved tag.
    previous.filter(|s| s.url == image.url && s.resolve_token.as_deref() == token).map(|s| s.digest.clone())
}

/// The one architecture of the target nodes (`kubernetes.io/arch`, amd64 when unset).
pub fn target_arch<'a>(archs: impl Iterator<Item = Option<&'a str>>) -> Result<String, SpecProblem> {
    let set: std::collections::BTreeSet<&str> = archs.map(|a| a.unwrap_or("amd64")).collect();
    match set.len() {
        0 => Ok("amd64".into()),
        1 => Ok(set.into_iter().next().unwrap_or("amd64").to_string()),
        _ => Err(problem(
            Reason::InvalidSpec,
            format!(
                "the selected nodes span architectures {}: an image BpfProgram runs one architecture's \
                 bytecode; select the nodes of one architecture (kubernetes.io/arch) per BpfProgram",
                set.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn spec_programs(programs: &[ProgramSpec]) -> Vec<(String, String)> {
    programs
        .iter()
        .map(|p| {
            let t = serde_json::to_value(p.program_type).ok().and_then(|v| v.as_str().map(str::to_string));
            (p.name.clone(), t.unwrap_or_default())
        })
        .collect()
}

impl Images {
    pub fn new(client: Client, cfg: ImageConfig) -> Self {
        let budget = oci::PullBudget::new(cfg.max_pulls, cfg.max_bytes_in_flight);
        Self {
            client,
            pulled: Mutex::new(Lru::new(cfg.cache_bytes)),
            budget,
            cfg,
            verified: Default::default(),
            policy: Default::default(),
        }
    }

    async fn secret(&self, name: &str) -> Result<Secret, SpecProblem> {
        let ns = &self.cfg.namespace;
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| problem(Reason::ImageUnavailable, format!("cannot read Secret {ns}/{name}: {e}")))?
            .ok_or_else(|| problem(Reason::ImageUnavailable, format!("Secret {ns}/{name} does not exist")))
    }

    async fn registry_client(&self, pull_secret: Option<&str>) -> Result<oci::Client, SpecProblem> {
        let credentials = match pull_secret {
            None => oci::Credentials::anonymous(),
            Some(name) => {
                let s = self.secret(name).await?;
                let at = format!("pull secret {}/{name}", self.cfg.namespace);
                if s.type_.as_deref() != Some("kubernetes.io/dockerconfigjson") {
                    return Err(problem(
                        Reason::InvalidSpec,
                        format!("{at} must be of type kubernetes.io/dockerconfigjson, not {:?}", s.type_),
                    ));
                }
                let json = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(".dockerconfigjson"))
                    .ok_or_else(|| problem(Reason::InvalidSpec, format!("{at} has no .dockerconfigjson key")))?;
                oci::Credentials::from_docker_config(&json.0)
                    .map_err(|e| problem(Reason::InvalidSpec, format!("{at}: {e}")))?
            }
        };
        let opts = oci::ClientOptions {
            credentials,
            insecure_http: false,
            ca_pem: self.cfg.ca_pem.clone(),
            timeout: Duration::from_secs(30),
            image_deadline: self.cfg.image_deadline,
            allow_private_ranges: self.cfg.allow_private_ranges.clone(),
            budget: self.budget.clone(),
        };
        oci::Client::new(opts).map_err(from_oci)
    }

    fn options_for(&self, reference: &oci::Reference, client: oci::Client) -> Result<oci::Client, SpecProblem> {
        if !self.cfg.insecure_registries.iter().any(|r| r == reference.api_host()) {
            return Ok(client);
        }
        let mut opts = client.options().clone();
        opts.insecure_http = true;
        oci::Client::new(opts).map_err(from_oci)
    }

    async fn policy(&self) -> Result<Option<Arc<Policy>>, SpecProblem> {
        let Some(name) = &self.cfg.signature_keys_secret else { return Ok(None) };
        if let Some(p) = self.policy.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && p.read.elapsed() < POLICY_TTL
        {
            return Ok(Some(p.clone()));
        }
        let s = self.secret(name).await?;
        let mut keys = Vec::new();
        let mut h = Sha256::new();
        for (k, v) in s.data.unwrap_or_default().into_iter().filter(|(k, _)| k.ends_with(".pub")) {
            h.update(k.as_bytes());
            h.update(&v.0);
            for key in oci::PublicKey::parse_pem(&v.0)
                .map_err(|e| problem(Reason::InvalidSpec, format!("signature policy Secret {name}, key {k}: {e}")))?
            {
                keys.push((k.clone(), key));
            }
        }
        if keys.is_empty() {
            return Err(problem(
                Reason::InvalidSpec,
                format!("signature policy Secret {}/{name} holds no *.pub public key", self.cfg.namespace),
            ));
        }
        let p = Arc::new(Policy { read: Instant::now(), keys, fingerprint: hex::encode(h.finalize()) });
        *self.policy.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
        Ok(Some(p))
    }

    /// Resolve, pull and check the image of `p` for nodes of `arch`.
    pub async fn resolve(&self, p: &BpfProgram, arch: &str) -> Result<Resolved, SpecProblem> {
        let Some(image) = &p.spec.bytecode.image else {
            return Err(problem(Reason::InvalidSpec, "bytecode.image is not set".into()));
        };
        let reference = oci::Reference::parse(&image.url).map_err(from_oci)?;
        let generation = p.metadata.generation.unwrap_or(0);
        let token = p.annotations().get(RESOLVE_ANNOTATION).cloned();
        let previous = p.status.as_ref().and_then(|s| s.image.as_ref());
        let pinned = pinned_digest(image, previous, token.as_deref());
        let fresh = pinned.is_none();
        let mut client: Option<oci::Client> = None;
        let digest = match pinned {
            Some(d) => oci::Digest::parse(&d).map_err(|e| problem(Reason::InvalidSpec, e))?,
            None if image.pull_policy == PullPolicy::Never => {
                return Err(problem(
                    Reason::ImageUnavailable,
                    format!("pullPolicy Never, and no digest is pinned for {}: set bytecode.image.digest", image.url),
                ));
            }
            None => {
                let c = self.options_for(&reference, self.registry_client(image.pull_secret.as_deref()).await?)?;
                let d = c.resolve(&reference).await.map_err(from_oci)?;
                client = Some(c);
                d
            }
        };
        let pinned_ref = reference.with_digest(digest.clone());
        let key = cache_key(&reference, &digest, arch, image.pull_secret.as_deref());
        let cached = self.pulled.lock().unwrap_or_else(|e| e.into_inner()).get(&key);
        let pulled = match cached {
            Some(img) if !(fresh && image.pull_policy == PullPolicy::Always) => img,
            _ if image.pull_policy == PullPolicy::Never => {
                return Err(problem(
                    Reason::ImageUnavailable,
                    format!(
                        "pullPolicy Never, and the operator does not hold {pinned_ref} (pulled images are kept in memory only)"
                    ),
                ));
            }
            _ => {
                let c = match client.take() {
                    Some(c) => c,
                    None => self.options_for(&reference, self.registry_client(image.pull_secret.as_deref()).await?)?,
                };
                let img = Arc::new(c.pull(&pinned_ref, &oci::Platform::linux(arch)).await.map_err(from_oci)?);
                self.pulled.lock().unwrap_or_else(|e| e.into_inner()).put(key, img.clone());
                client = Some(c);
                img
            }
        };
        let expected = spec_programs(&p.spec.programs);
        let expected: Vec<(&str, &str)> = expected.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        pulled.check_programs(&expected).map_err(from_oci)?;
        let verified_by = match self.policy().await? {
            None => None,
            Some(policy) => {
                Some(self.verify(&reference, &digest, &policy, client, image.pull_secret.as_deref()).await?)
            }
        };
        Ok(Resolved {
            payload: Payload::Elf(pulled.elf.clone()),
            status: ImageStatus {
                url: image.url.clone(),
                digest: digest.as_str().to_string(),
                resolved_generation: generation,
                resolve_token: token,
                verified_by,
            },
        })
    }

    /// The ELF of an image pinned by digest (a revision recorded by reference), through
    /// the cache; the signature policy applies as to any image.
    pub async fn pull_pinned(
        &self,
        image: &crds::program::ImageBytecode,
        arch: &str,
    ) -> Result<bytes::Bytes, SpecProblem> {
        let Some(d) = &image.digest else {
            return Err(problem(Reason::InvalidSpec, format!("{} is not pinned to a digest", image.url)));
        };
        let reference = oci::Reference::parse(&image.url).map_err(from_oci)?;
        let digest = oci::Digest::parse(d).map_err(|e| problem(Reason::InvalidSpec, e))?;
        let key = cache_key(&reference, &digest, arch, image.pull_secret.as_deref());
        if let Some(img) = self.pulled.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(img.elf.clone());
        }
        let c = self.options_for(&reference, self.registry_client(image.pull_secret.as_deref()).await?)?;
        let img = Arc::new(
            c.pull(&reference.with_digest(digest.clone()), &oci::Platform::linux(arch)).await.map_err(from_oci)?,
        );
        if let Some(policy) = self.policy().await? {
            self.verify(&reference, &digest, &policy, Some(c), image.pull_secret.as_deref()).await?;
        }
        self.pulled.lock().unwrap_or_else(|e| e.into_inner()).put(key, img.clone());
        Ok(img.elf.clone())
    }

    async fn verify(
        &self,
        reference: &oci::Reference,
        digest: &oci::Digest,
        policy: &Policy,
        client: Option<oci::Client>,
        pull_secret: Option<&str>,
    ) -> Result<String, SpecProblem> {
        let key = (digest.as_str().to_string(), policy.fingerprint.clone());
        if let Some(hit) = self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return hit.clone();
        }
        let c = match client {
            Some(c) => c,
            None => self.options_for(reference, self.registry_client(pull_secret).await?)?,
        };
        let keys: Vec<oci::PublicKey> = policy.keys.iter().map(|(_, k)| k.clone()).collect();
        let result = match c.verify(reference, digest, &keys).await {
            Ok(v) => Ok(policy.keys.get(v.key_index).map(|(n, _)| n.clone()).unwrap_or_default()),
            Err(e) if e.is_transient() => return Err(from_oci(e)),
            Err(e) => Err(from_oci(e)),
        };
        // Only a success is kept: an image signed after it was refused is accepted at
        // the next reconcile.
        if result.is_ok() {
            self.verified.lock().unwrap_or_else(|e| e.into_inner()).insert(key, result.clone());
        }
        result
    }
}

/// The architecture label of Kubernetes nodes.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// Architectures of the target nodes, by node.
pub fn archs<'a>(
    nodes: &'a [crate::targets::NodeInfo],
    targets: &'a std::collections::BTreeSet<String>,
) -> impl Iterator<Item = Option<&'a str>> + 'a {
    nodes.iter().filter(|n| targets.contains(&n.name)).map(|n| n.labels.get(ARCH_LABEL).map(String::as_str))
}

/// The pull cache's key. The credentials are part of it: bytes pulled with one program's
/// pull secret are never served to a program that names another (or none), which the
/// registry may refuse; a digest pinned in the spec skips resolution, so this is the check.
fn cache_key(reference: &oci::Reference, digest: &oci::Digest, arch: &str, pull_secret: Option<&str>) -> String {
    format!("{}@{}#{arch}#{}", reference.repository_name(), digest.as_str(), pull_secret.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::program::ImageBytecode;

    fn img(url: &str, digest: Option<&str>) -> ImageBytecode {
        ImageBytecode {
            url: url.into(),
            digest: digest.map(str::to_string),
            pull_policy: PullPolicy::IfNotPresent,
            pull_secret: None,
        }
    }

    fn st(url: &str, digest: &str, generation: i64, token: Option<&str>) -> ImageStatus {
        ImageStatus {
            url: url.into(),
            digest: digest.into(),
            resolved_generation: generation,
            resolve_token: token.map(str::to_string),
            verified_by: None,
        }
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_tag_is_resolved_once_per_url_and_on_request() {
        let i = img("r.example/x:v1", None);
        assert_eq!(pinned_digest(&i, None, None), None, "never resolved: resolve");
        let s = st("r.example/x:v1", D1, 1, None);
        assert_eq!(
            pinned_digest(&i, Some(&s), None).as_deref(),
            Some(D1),
            "the same url keeps its digest, whatever else of the spec changes (resume, pause, selector)"
        );
        assert_eq!(pinned_digest(&i, Some(&s), Some("now")), None, "a new annotation value resolves again");
        let other = st("r.example/x:v2", D1, 1, None);
        assert_eq!(pinned_digest(&i, Some(&other), None), None, "another url");
        let pinned = img("r.example/x:v1", Some(D2));
        assert_eq!(pinned_digest(&pinned, Some(&s), None).as_deref(), Some(D2), "the spec's digest wins");
    }

    #[test]
    fn one_architecture_per_program() {
        assert_eq!(target_arch([Some("arm64"), Some("arm64")].into_iter()).unwrap(), "arm64");
        assert_eq!(target_arch([None, Some("amd64")].into_iter()).unwrap(), "amd64");
        assert_eq!(target_arch(std::iter::empty()).unwrap(), "amd64");
        let e = target_arch([Some("arm64"), Some("amd64")].into_iter()).unwrap_err();
        assert!(e.message.contains("amd64, arm64"), "{}", e.message);
    }

    #[test]
    fn errors_map_to_the_reason_a_user_acts_on() {
        let unsigned = oci::Error::Unsigned { reference: "r/x".into(), tag: "sha256-1.sig".into() };
        assert_eq!(reason_of(&unsigned), Reason::ImageUnsigned);
        let down = oci::Error::RegistryUnreachable { registry: "r".into(), detail: "refused".into() };
        assert_eq!(reason_of(&down), Reason::ImageUnavailable);
    }

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let mut lru = Lru::new(MAX_CACHE_BYTES);
        let image = |n: usize| {
            Arc::new(oci::Image {
                reference: oci::Reference::parse("r.example/x:v1").unwrap(),
                digest: oci::Digest::of(b"x"),
                manifest_digest: oci::Digest::of(b"x"),
                platform: None,
                layer_digest: oci::Digest::of(b"x"),
                labels: Default::default(),
                programs: None,
                maps: None,
                elf_name: "x.o".into(),
                elf: bytes::Bytes::from(vec![0u8; n]),
            })
        };
        for k in 0..20 {
            lru.put(format!("k{k}"), image(16 << 20));
        }
        assert!(lru.bytes <= MAX_CACHE_BYTES);
        assert!(lru.get("k19").is_some() && lru.get("k0").is_none());
        let mut small = Lru::new(32 << 20);
        for k in 0..4 {
            small.put(format!("k{k}"), image(16 << 20));
        }
        assert_eq!((small.bytes, small.images.len()), (32 << 20, 2), "the capacity given, from the memory limit");
    }

    #[test]
    fn a_refused_redirect_is_an_unavailable_image_and_its_message_is_clean() {
        let e = oci::Error::RedirectRefused { registry: "r".into(), reason: "refused \x1b[31mred\u{7}".into() };
        assert_eq!(reason_of(&e), Reason::ImageUnavailable);
        let p = from_oci(e);
        assert!(!p.message.chars().any(char::is_control), "{:?}", p.message);
    }
}
