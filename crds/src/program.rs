//! `BpfProgram`: the user-facing resource. Bytecode, where to attach it, which nodes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits;
use crate::shared_text::SharedText;

/// Desired state of a BpfProgram: which ELF object to load, which of its functions to
/// attach to which hooks, and on which nodes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bpfleet.dev",
    version = "v1alpha1",
    kind = "BpfProgram",
    plural = "bpfprograms",
    shortname = "bpfprog",
    doc = "A set of eBPF programs (one ELF object) to load and attach on the nodes a label selector picks.",
    status = "BpfProgramStatus",
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.rollout.desiredNodes"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","jsonPath":".status.rollout.updatedNodes"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.rollout.readyNodes"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.rollout.availableNodes"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failedNodes"}"#,
    printcolumn = r#"{"name":"Waiting","type":"integer","jsonPath":".status.waitingNodes"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Targets","type":"integer","priority":1,"jsonPath":".status.targetNodes"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","priority":1,"jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BpfProgramSpec {
    /// Nodes that run the programs, as a label selector over Node objects.
    /// An empty selector (`{}`) selects every node.
    #[serde(default)]
    pub node_selector: LabelSelector,

    /// Where the ELF object comes from. Exactly one source must be set.
    pub bytecode: BytecodeSource,

    /// Values for global variables in the object's `.rodata` / `.data` sections, set
    /// before the kernel loads it: variable name -> raw bytes (base64). The byte length
    /// must equal the variable's size in the ELF (a `__u32` takes 4 bytes, little-endian).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::MAX_GLOBALS, "additionalProperties" = {"type": "string", "maxLength": 5464}))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]{0,63}$'))").message("globalData keys must be C identifiers of at most 64 characters, e.g. SAMPLE_RATE"))]
    #[x_kube(validation = Rule::new("self.all(k, size(self[k]) <= 5464)").message("each globalData value must be at most 4096 bytes (5464 base64 characters)"))]
    pub global_data: BTreeMap<String, String>,

    /// The functions of the object to attach, each with its program type and the hooks
    /// it attaches to. Names are unique within a BpfProgram.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub programs: Vec<ProgramSpec>,

    /// How a new revision reaches the target nodes: steps, pauses, how many nodes switch
    /// at once, what a failure does. Omitted: one node at a time, stopping at the first
    /// failure (like a DaemonSet's RollingUpdate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutSpec>,

    /// Old revisions kept (as ControllerRevisions in the operator's namespace) for
    /// rollbacks and `kubectl bpfleet rollout undo`, besides the stable and the current
    /// one. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub revision_history_limit: Option<i32>,

    /// Per-map policies across revisions; maps not named keep compatible contents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub maps: Vec<crate::rollout::MapPolicy>,

    /// Maps the agent exports as Prometheus metrics on its `/metrics` (one series per map
    /// entry, labelled `program` and by key fields; docs/maps.md). The number of series a
    /// program exports per node is bounded by the agent's `--max-metric-series-per-program`;
    /// a map with more entries exports that many and the BpfNode says so (`metricsLimited`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub metrics: Vec<crate::metrics::MetricSpec>,
}

/// Where the ELF bytecode comes from. Exactly one of `inline`, `configMap`, `path`, `image`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.inline) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.image) ? 1 : 0) == 1").message("bytecode must set exactly one of inline, configMap, path or image"))]
#[x_kube(validation = Rule::new("!has(self.digest) || !has(self.image)").message("digest does not apply to image bytecode: pin the image with image.digest"))]
pub struct BytecodeSource {
    /// The ELF object itself, base64-encoded, at most 1 MiB decoded. For small objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1398104))]
    #[schemars(extend("format" = "byte"))]
    pub inline: Option<SharedText>,

    /// A key of a ConfigMap holding the object (as binaryData or data). The operator
    /// reads it and sends the bytes to the agents; agents never read the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapBytecode>,

    /// An absolute path to an object that already exists on every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/[^\x00]*$"))]
    #[x_kube(validation = Rule::new("!self.contains('/../') && !self.endsWith('/..') && !self.contains('/./')").message("path must be absolute and must not contain '.' or '..' segments"))]
    pub path: Option<String>,

    /// The SHA-256 of the object, as `sha256:<64 lowercase hex>` (`sha256sum FILE`), for
    /// `path`, `inline` or `configMap` bytecode (an image is pinned by `image.digest`).
    /// With `path`, agents refuse to load a file with another digest, and the digest is
    /// part of the revision, so a new file with its new digest rolls out like any other
    /// change; without it the operator cannot see a replaced file (the revision hashes
    /// only the path string). With `inline` or `configMap`, the operator refuses bytes
    /// with another digest before it sends anything: whoever can edit the ConfigMap
    /// cannot change what the nodes run without also changing this BpfProgram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 71, max = 71), regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: Option<String>,

    /// An OCI image holding the object (bpfman's format: one layer with the ELF at its
    /// root, labels `io.ebpf.programs` / `io.ebpf.maps`). The operator pulls it, pins it
    /// by digest and sends the bytes to the agents; agents never reach a registry.
    /// Up to 16 MiB of bytecode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageBytecode>,
}

/// Bytecode from an OCI image.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageBytecode {
    /// `registry/repository:tag` or `registry/repository@sha256:…`, e.g.
    /// `quay.io/bpfman-bytecode/xdp_pass:latest`.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[a-z0-9][^\s]*$"))]
    pub url: String,
    /// The image (manifest or index) digest to run, `sha256:<64 hex>`. Without it, the
    /// tag is resolved when this url first appears (or the `bpfleet.dev/resolve-image`
    /// annotation changes) and the digest recorded in `status.image`; every node runs
    /// exactly that digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 71, max = 71), regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: Option<String>,
    /// `IfNotPresent` (default): pull a digest once and keep it in the operator's cache.
    /// `Always`: pull again whenever the spec changes. `Never`: use only what the
    /// operator already holds.
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Name of a `kubernetes.io/dockerconfigjson` Secret in the operator's namespace
    /// with credentials for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub pull_secret: Option<String>,
}

/// See `spec.bytecode.image.pullPolicy`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// Which image the operator resolved and pulled for the current generation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// `spec.bytecode.image.url` as resolved.
    pub url: String,
    /// The image digest every node runs (`sha256:…`).
    pub digest: String,
    /// The `metadata.generation` at which the tag was resolved. It is resolved again
    /// only when the url changes or the annotation `bpfleet.dev/resolve-image` gets a
    /// new value: other spec edits (a resume, a pause) never pick up a moved tag, and a
    /// moved tag never reaches nodes one by one.
    #[serde(default)]
    pub resolved_generation: i64,
    /// The `bpfleet.dev/resolve-image` annotation value the digest was resolved at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_token: Option<String>,
    /// Which key verified the image's signature, when a signature policy is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
}

/// The label a cluster admin puts on a namespace, with the value
/// [`BYTECODE_SOURCE_ALLOWED`], to let BpfPrograms take bytecode from its ConfigMaps:
/// `kubectl label namespace NS bpfleet.dev/bytecode-source=allowed`. Without it, only
/// the operator's own namespace (`--namespace`) is a ConfigMap source.
pub const LABEL_BYTECODE_SOURCE: &str = "bpfleet.dev/bytecode-source";
/// The value of [`LABEL_BYTECODE_SOURCE`] that opts a namespace in (any other does not).
pub const BYTECODE_SOURCE_ALLOWED: &str = "allowed";

/// A ConfigMap key that holds an ELF object.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapBytecode {
    /// Name of the ConfigMap.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Namespace of the ConfigMap: the operator's own namespace, or one a cluster admin
    /// labelled `bpfleet.dev/bytecode-source=allowed`. Any other is refused, and nothing
    /// is read from it.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// Key inside the ConfigMap (in `binaryData`, or `data` holding base64).
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The kind of kernel hook a program attaches to. Values are a contract and never change.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[schemars(extend("maxLength" = 16))]
pub enum ProgramType {
    /// eXpress Data Path on network interfaces.
    #[serde(rename = "XDP")]
    Xdp,
    /// Traffic control classifier (TCX on kernels >= 6.6, clsact/netlink below).
    #[serde(rename = "TC")]
    Tc,
    /// Static kernel tracepoint (`category/name`).
    Tracepoint,
    /// Raw tracepoint (`name`, without category).
    RawTracepoint,
    /// BPF trampoline on kernel function entry.
    Fentry,
    /// BPF trampoline on kernel function exit.
    Fexit,
    /// Dynamic kernel probe on function entry (or offset).
    Kprobe,
    /// Dynamic kernel probe on function return.
    Kretprobe,
    /// User-space probe on a function of a binary.
    Uprobe,
    /// User-space probe on function return.
    Uretprobe,
    /// Cgroup v2 socket buffer filter.
    CgroupSkb,
    /// Linux Security Module hook.
    Lsm,
}

impl ProgramType {
    pub const ALL: [ProgramType; 12] = [
        ProgramType::Xdp,
        ProgramType::Tc,
        ProgramType::Tracepoint,
        ProgramType::RawTracepoint,
        ProgramType::Fentry,
        ProgramType::Fexit,
        ProgramType::Kprobe,
        ProgramType::Kretprobe,
        ProgramType::Uprobe,
        ProgramType::Uretprobe,
        ProgramType::CgroupSkb,
        ProgramType::Lsm,
    ];

    /// The `type` value as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ProgramType::Xdp => "XDP",
            ProgramType::Tc => "TC",
            ProgramType::Tracepoint => "Tracepoint",
            ProgramType::RawTracepoint => "RawTracepoint",
            ProgramType::Fentry => "Fentry",
            ProgramType::Fexit => "Fexit",
            ProgramType::Kprobe => "Kprobe",
            ProgramType::Kretprobe => "Kretprobe",
            ProgramType::Uprobe => "Uprobe",
            ProgramType::Uretprobe => "Uretprobe",
            ProgramType::CgroupSkb => "CgroupSkb",
            ProgramType::Lsm => "Lsm",
        }
    }

    /// The attach block field that must accompany this type.
    pub fn block_field(self) -> &'static str {
        match self {
            ProgramType::Xdp => "xdp",
            ProgramType::Tc => "tc",
            ProgramType::Tracepoint => "tracepoint",
            ProgramType::RawTracepoint => "rawTracepoint",
            ProgramType::Fentry => "fentry",
            ProgramType::Fexit => "fexit",
            ProgramType::Kprobe => "kprobe",
            ProgramType::Kretprobe => "kretprobe",
            ProgramType::Uprobe => "uprobe",
            ProgramType::Uretprobe => "uretprobe",
            ProgramType::CgroupSkb => "cgroupSkb",
            ProgramType::Lsm => "lsm",
        }
    }

    pub fn parse(s: &str) -> Option<ProgramType> {
        ProgramType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for ProgramType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One function of the ELF object, its program type and where it attaches.
/// Exactly the attach block named after `type` must be set (`xdp` for XDP, `tc` for TC,
/// `rawTracepoint` for RawTracepoint, `cgroupSkb` for CgroupSkb, ...).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.xdp) == (self.type == 'XDP')").message("the xdp block must be set exactly when type is XDP"))]
#[x_kube(validation = Rule::new("has(self.tc) == (self.type == 'TC')").message("the tc block must be set exactly when type is TC"))]
#[x_kube(validation = Rule::new("has(self.tracepoint) == (self.type == 'Tracepoint')").message("the tracepoint block must be set exactly when type is Tracepoint"))]
#[x_kube(validation = Rule::new("has(self.rawTracepoint) == (self.type == 'RawTracepoint')").message("the rawTracepoint block must be set exactly when type is RawTracepoint"))]
#[x_kube(validation = Rule::new("has(self.fentry) == (self.type == 'Fentry')").message("the fentry block must be set exactly when type is Fentry"))]
#[x_kube(validation = Rule::new("has(self.fexit) == (self.type == 'Fexit')").message("the fexit block must be set exactly when type is Fexit"))]
#[x_kube(validation = Rule::new("has(self.kprobe) == (self.type == 'Kprobe')").message("the kprobe block must be set exactly when type is Kprobe"))]
#[x_kube(validation = Rule::new("has(self.kretprobe) == (self.type == 'Kretprobe')").message("the kretprobe block must be set exactly when type is Kretprobe"))]
#[x_kube(validation = Rule::new("has(self.uprobe) == (self.type == 'Uprobe')").message("the uprobe block must be set exactly when type is Uprobe"))]
#[x_kube(validation = Rule::new("has(self.uretprobe) == (self.type == 'Uretprobe')").message("the uretprobe block must be set exactly when type is Uretprobe"))]
#[x_kube(validation = Rule::new("has(self.cgroupSkb) == (self.type == 'CgroupSkb')").message("the cgroupSkb block must be set exactly when type is CgroupSkb"))]
#[x_kube(validation = Rule::new("has(self.lsm) == (self.type == 'Lsm')").message("the lsm block must be set exactly when type is Lsm"))]
pub struct ProgramSpec {
    /// Name of the program's function in the ELF object (a C identifier).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub name: String,

    /// Program type: XDP, TC, Tracepoint, RawTracepoint, Fentry, Fexit, Kprobe,
    /// Kretprobe, Uprobe, Uretprobe, CgroupSkb or Lsm.
    #[serde(rename = "type")]
    pub program_type: ProgramType,

    /// Attach settings for type XDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpAttach>,
    /// Attach settings for type TC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tc: Option<TcAttach>,
    /// Attach settings for type Tracepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracepoint: Option<TracepointAttach>,
    /// Attach settings for type RawTracepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_tracepoint: Option<RawTracepointAttach>,
    /// Attach settings for type Fentry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fentry: Option<KernelFunctionAttach>,
    /// Attach settings for type Fexit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fexit: Option<KernelFunctionAttach>,
    /// Attach settings for type Kprobe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kprobe: Option<KprobeAttach>,
    /// Attach settings for type Kretprobe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kretprobe: Option<KprobeAttach>,
    /// Attach settings for type Uprobe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uprobe: Option<UprobeAttach>,
    /// Attach settings for type Uretprobe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uretprobe: Option<UprobeAttach>,
    /// Attach settings for type CgroupSkb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_skb: Option<CgroupSkbAttach>,
    /// Attach settings for type Lsm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsm: Option<LsmAttach>,
}

/// How an XDP program is attached to a driver.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(extend("maxLength" = 8))]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic (skb) mode otherwise.
    #[default]
    Auto,
    /// Driver mode only; fails on interfaces whose driver lacks XDP support.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

/// XDP attach settings: on interfaces of the node, or inside pods. Exactly one of
/// `interfaces` and `pods`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.interfaces) && size(self.interfaces) > 0) != has(self.pods)").message("xdp needs exactly one of interfaces (the node's) or pods (inside each selected pod)"))]
pub struct XdpAttach {
    /// Network interfaces of the node to attach to (e.g. eth0). An interface missing on a
    /// node is reported as a failure on that node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 15), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")))]
    pub interfaces: Vec<String>,
    /// Auto (default), Native or Generic.
    #[serde(default)]
    pub mode: XdpMode,
    /// Attach inside the network namespace of each pod this selects, on the target nodes
    /// (`nodeSelector`) those pods run on, instead of on the node's interfaces. Pods that
    /// start get the program within seconds and pods that stop release it; neither makes a
    /// new revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodInterfaces>,
}

/// Interfaces inside the pods a label selector picks in one namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodInterfaces {
    /// The pods' namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// Which pods of the namespace, as a label selector; `{}` selects every pod of it.
    #[serde(default)]
    pub selector: PodSelector,
    /// Interfaces inside each pod's network namespace. Default: `[eth0]`.
    #[serde(default = "default_pod_interfaces")]
    #[schemars(
        length(min = 1, max = 8),
        inner(length(min = 1, max = 15), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$"))
    )]
    pub interfaces: Vec<String>,
}

/// A label selector over pods, written as a `metav1.LabelSelector` (`matchLabels`,
/// `matchExpressions`), with bounds the API server's rule costs need.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSelector {
    /// Labels a pod must have, each with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements on a pod's labels, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One requirement of a [`PodSelector`]: `key` `operator` `values`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// The label key, e.g. `app.kubernetes.io/name`.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    #[schemars(length(min = 1, max = 16))]
    pub operator: String,
    /// Values for In and NotIn (none for Exists and DoesNotExist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

impl PodSelector {
    /// As the `metav1.LabelSelector` it is written like.
    pub fn to_label_selector(&self) -> LabelSelector {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.clone()),
            match_expressions: (!self.match_expressions.is_empty()).then(|| {
                self.match_expressions
                    .iter()
                    .map(|r| LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: r.operator.clone(),
                        values: (!r.values.is_empty()).then(|| r.values.clone()),
                    })
                    .collect()
            }),
        }
    }
}

fn default_pod_interfaces() -> Vec<String> {
    vec!["eth0".to_string()]
}

/// Direction of traffic a hook sees.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(extend("maxLength" = 8))]
pub enum Direction {
    /// Traffic entering the interface or cgroup.
    Ingress,
    /// Traffic leaving the interface or cgroup.
    Egress,
}

/// TC attach settings. TCX is used where the kernel has it (>= 6.6), clsact otherwise.
/// Exactly one of `interfaces` and `pods`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.interfaces) && size(self.interfaces) > 0) != has(self.pods)").message("tc needs exactly one of interfaces (the node's) or pods (inside each selected pod)"))]
pub struct TcAttach {
    /// Network interfaces of the node to attach to (e.g. eth0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 15), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")))]
    pub interfaces: Vec<String>,
    /// Attach inside the network namespace of each pod this selects (see `xdp.pods`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodInterfaces>,
    /// Ingress or Egress.
    pub direction: Direction,
    /// Order among bpfleet's TC programs on the same hook: lower runs first (1..1000).
    #[serde(default = "default_tc_priority")]
    #[schemars(range(min = 1, max = 1000))]
    pub priority: i32,
}

fn default_tc_priority() -> i32 {
    1000
}

/// Tracepoint attach settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracepointAttach {
    /// Tracepoints as `category/name`, e.g. `syscalls/sys_enter_openat`.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 3, max = 128), regex(pattern = r"^[A-Za-z0-9_]+/[A-Za-z0-9_.-]+$"))
    )]
    pub names: Vec<String>,
}

/// Raw tracepoint attach settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RawTracepointAttach {
    /// Raw tracepoint names without category, e.g. `sys_enter`.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9_]+$")))]
    pub names: Vec<String>,
}

/// Fentry/Fexit attach settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KernelFunctionAttach {
    /// Kernel function to trace (must exist in the kernel's BTF), e.g. `do_unlinkat`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$"))]
    pub function: String,
}

/// Kprobe/Kretprobe attach settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KprobeAttach {
    /// Kernel function to probe, e.g. `tcp_connect`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$"))]
    pub function: String,
    /// Byte offset into the function (Kprobe only; 0 = entry).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1048576))]
    pub offset: u64,
}

/// Uprobe/Uretprobe attach settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.symbol) || has(self.offset)").message("uprobe needs a symbol, an offset, or both"))]
#[x_kube(validation = Rule::new("!has(self.containers) || !has(self.pid)").message("pid is a process id on the node: leave it out with containers (the probe fires in every process of the selected containers)"))]
pub struct UprobeAttach {
    /// Absolute path of the binary or library: on the node, e.g.
    /// `/usr/lib/x86_64-linux-gnu/libc.so.6`, or with `containers` inside each selected
    /// container (its symlinks and `..` resolve inside the container, never out of it).
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/[^\x00]*$"))]
    #[x_kube(validation = Rule::new("!self.contains('/../') && !self.endsWith('/..') && !self.contains('/./')").message("target must be absolute and must not contain '.' or '..' segments"))]
    pub target: String,
    /// Function symbol to probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.@$]*$"))]
    pub symbol: Option<String>,
    /// Byte offset: from the symbol if one is given, else from the start of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub offset: Option<u64>,
    /// Only fire for this process id; every process when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4194304))]
    pub pid: Option<i32>,
    /// Probe the binary inside the containers of the pods this selects, on the target
    /// nodes (`nodeSelector`) those pods run on, instead of the node's. Containers that
    /// start get the probe within seconds and containers that stop release it; neither
    /// makes a new revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<ContainerSelector>,
}

/// Containers of the pods a label selector picks in one namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSelector {
    /// The pods' namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// Which pods of the namespace, as a label selector; `{}` selects every pod of it.
    #[serde(default)]
    pub selector: PodSelector,
    /// Which containers of each pod (by name, as in the pod's spec); every container
    /// of the pod when left out. Init and ephemeral containers are never probed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub container_names: Vec<String>,
}

/// CgroupSkb attach settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CgroupSkbAttach {
    /// Absolute path of a cgroup v2 directory on the node, e.g. `/sys/fs/cgroup/unified/app`.
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/[^\x00]*$"))]
    #[x_kube(validation = Rule::new("!self.contains('/../') && !self.endsWith('/..') && !self.contains('/./')").message("cgroupPath must be absolute and must not contain '.' or '..' segments"))]
    pub cgroup_path: String,
    /// Ingress or Egress.
    pub direction: Direction,
}

/// LSM attach settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LsmAttach {
    /// LSM hook name without the `bpf_lsm_` prefix, e.g. `file_open`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub hook: String,
}

/// Observed state of a BpfProgram, written by the operator only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BpfProgramStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Content hash of what the selected nodes must run (bytecode, programs, globalData).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Number of nodes the nodeSelector selects.
    #[serde(default)]
    pub target_nodes: i32,
    /// Number of target nodes running the current revision with every program attached
    /// (health gates aside: `rollout.readyNodes` counts the nodes that passed them, and
    /// `rollout.availableNodes` also those still running the stable revision healthy).
    #[serde(default)]
    pub ready_nodes: i32,
    /// Number of target nodes where applying the current revision failed.
    #[serde(default)]
    pub failed_nodes: i32,
    /// Number of target nodes without a Ready agent: its pod is starting, it was Ready and
    /// stopped answering less than the operator's grace period ago, or the node runs no
    /// agent at all (the agent DaemonSet's nodeSelector or tolerations leave it out). They
    /// are waiting, not failed; each gets the program within seconds of its agent
    /// turning Ready.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waiting_nodes: i32,
    /// Programs inside pods: the running pods they attach in on the target nodes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_pods: i32,
    /// Of those, pods where the agents report every program attached.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ready_pods: i32,
    /// Of those, pods where an agent reports a program not attached (each node's BpfNode
    /// says which and why).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_pods: i32,
    /// `Ready` (for `kubectl wait`), kstatus's abnormal-true `Reconciling` (converging)
    /// and `Stalled` (failing: Flux reports it as Failed), plus `Progressing` and
    /// `Degraded`. Every condition carries the `observedGeneration` it describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Per-node failures, at most 16 (the rest are counted in failedNodes; the node's
    /// BpfNode has the full detail).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub failures: Vec<NodeFailure>,
    /// The rollout of `revision`: phase, stable and update revisions, step, node counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
    /// For `bytecode.image`: the digest resolved and pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageStatus>,
}

/// Why one node failed to run (part of) a BpfProgram.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeFailure {
    /// Node name.
    pub node: String,
    /// Program (function) that failed, when the failure is specific to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Machine-readable reason, e.g. VerifierRejected, InterfaceNotFound, AgentUnreachable.
    pub reason: String,
    /// Human-readable explanation of what failed and what to fix.
    pub message: String,
    /// Failed applies of this revision on this node in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// When the operator tries this node again (the wait doubles with each failure, up
    /// to 5 minutes; a new revision is tried at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}
