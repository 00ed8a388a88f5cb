//! bpfleet as users install it: on a whole cluster (kubelet, a container runtime, CNI),
//! the images built by `scripts/images.sh` and loaded into the runtime, the chart
//! installed with Helm, the agent as a pod. The scenario (`tests/cluster.rs`) talks to it
//! only as a user would — kubectl, helm — and reads the kernel of the node it runs on
//! (this machine) with bpftool.
//!
//! It needs a cluster whose nodes run a kubelet on this machine; with only an API server
//! (process-mode nodes, see `env`) it skips with one line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::util::{repo_root, wait_for};

/// Where the chart is installed.
pub const NAMESPACE: &str = "bpfleet-system";
pub const RELEASE: &str = "bpfleet";
/// Image names of the images built for the run (`--repo` of scripts/images.sh).
pub const IMAGE_REPO: &str = "bpfleet.local";

/// The cluster's kubeconfig when `KUBECONFIG` names a whole cluster; `None` (and one
/// printed line) otherwise.
pub fn cluster_or_skip(test: &str) -> Option<PathBuf> {
    let skip = |why: &str| {
        let _ = writeln!(std::io::stderr(), "SKIP e2e {test}: {why}");
        None
    };
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()) else {
        return skip("KUBECONFIG is not set (no cluster)");
    };
    let kubelets = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "nodes", "-o", "jsonpath={.items[*].status.nodeInfo.kubeletVersion}"])
        .output();
    match kubelets {
        Ok(out) if out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty() => {
            Some(kubeconfig.into())
        }
        Ok(out) if out.status.success() => skip(
            "the cluster at KUBECONFIG has no node with a kubelet (an API server only: see the process-mode suites)",
        ),
        _ => skip("kubectl cannot reach the cluster at KUBECONFIG"),
    }
}

/// One run's handle on the cluster.
pub struct Installed {
    pub kubeconfig: PathBuf,
    pub helm: PathBuf,
    /// The chart as installed: the project's, or a copy admitting an older API server.
    pub chart: PathBuf,
    _chart_copy: Option<tempfile::TempDir>,
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    checked(cmd.output().with_context(|| format!("cannot run {what}"))?, what)
}

/// A finished command's stdout, or an error carrying both its outputs.
fn checked(out: std::process::Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl ARGS` against `kubeconfig`, with `input` on its standard input when given
/// (for `-f -`); its stdout, or an error carrying both outputs (what the API server said,
/// e.g. an admission refusal).
pub fn kubectl(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let what = format!("kubectl {}", args.join(" "));
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    if let Some(input) = input {
        child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    }
    checked(child.wait_with_output()?, &what)
}

/// The helm binary, installed by `scripts/install-helm.sh` if missing.
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    let out = run(Command::new("bash").arg(repo_root().join("scripts/install-helm.sh")), "install-helm.sh")?;
    Ok(PathBuf::from(out.lines().last().unwrap_or_default().trim()))
}

impl Installed {
    pub fn new(kubeconfig: &Path) -> anyhow::Result<Installed> {
        let mut me = Installed {
            kubeconfig: kubeconfig.into(),
            helm: helm_binary()?,
            chart: repo_root().join("charts/bpfleet"),
            _chart_copy: None,
        };
        // The chart requires Kubernetes 1.25 (CEL validation rules). A lab cluster built
        // from an older tree gets a copy admitting it, and says so: there the API server
        // does not check the CRDs' rules.
        let version: Value = serde_json::from_str(&me.kubectl(&["version", "-o", "json"])?)?;
        let minor: u32 =
            version["serverVersion"]["minor"].as_str().unwrap_or("0").trim_end_matches('+').parse().unwrap_or(0);
        if minor < 25 {
            eprintln!(
                "note: the cluster is v1.{minor}, below the chart's minimum (1.25): installing a copy of the chart \
                 that admits it; CRD validation rules are not checked on this cluster"
            );
            let dir = tempfile::tempdir()?;
            run(Command::new("cp").arg("-a").arg(&me.chart).arg(dir.path()), "cp chart")?;
            let chart = dir.path().join("bpfleet");
            let meta = std::fs::read_to_string(chart.join("Chart.yaml"))?;
            let meta: String =
                meta.lines()
                    .map(|l| {
                        if l.starts_with("kubeVersion:") {
                            format!("kubeVersion: \">=1.{minor}.0-0\"")
                        } else {
                            l.into()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            std::fs::write(chart.join("Chart.yaml"), meta + "\n")?;
            me.chart = chart;
            me._chart_copy = Some(dir);
        }
        Ok(me)
    }

    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        kubectl(&self.kubeconfig, args, None)
    }

    pub fn kubectl_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&a)?)?)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        kubectl(&self.kubeconfig, &["apply", "-f", "-"], Some(yaml)).map(|_| ())
    }

    /// [`kubectl`] with `input` on its standard input (for `-f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        kubectl(&self.kubeconfig, args, Some(input))
    }

    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        run(
            Command::new(&self.helm).env("KUBECONFIG", &self.kubeconfig).args(args),
            &format!("helm {}", args.join(" ")),
        )
    }

    /// Whether a release of bpfleet is installed (the suite refuses to touch one it did
    /// not install).
    pub fn release_exists(&self) -> bool {
        self.helm(&["status", RELEASE, "-n", NAMESPACE]).is_ok()
    }

    /// Build both images and the examples' workload as `IMAGE_REPO/bpfleet-*:version` and
    /// load them into containerd.
    /// Returns what scripts/images.sh printed (the sizes).
    pub fn build_images(&self, version: &str) -> anyhow::Result<String> {
        run(
            Command::new("bash").arg(repo_root().join("scripts/images.sh")).args([
                "--version",
                version,
                "--repo",
                IMAGE_REPO,
                "--load",
                "--examples",
            ]),
            "scripts/images.sh",
        )
    }

    /// `helm upgrade --install` of `version`'s images, with `sets` on top, waiting for
    /// every workload. The namespace carries the Pod Security label the agent needs.
    pub fn install(&self, version: &str, sets: &[String]) -> anyhow::Result<()> {
        if self.kubectl(&["get", "namespace", NAMESPACE]).is_err() {
            self.kubectl(&["create", "namespace", NAMESPACE])?;
        }
        self.kubectl(&[
            "label",
            "--overwrite",
            "namespace",
            NAMESPACE,
            "pod-security.kubernetes.io/enforce=privileged",
        ])?;
        let mut args: Vec<String> = ["upgrade", "--install", RELEASE]
            .iter()
            .map(|s| s.to_string())
            .chain([self.chart.display().to_string()])
            .chain(["-n", NAMESPACE, "--wait", "--timeout", "5m"].iter().map(|s| s.to_string()))
            .collect();
        for (k, v) in [
            ("image.operator.repository", format!("{IMAGE_REPO}/bpfleet-operator")),
            ("image.agent.repository", format!("{IMAGE_REPO}/bpfleet-agent")),
            ("image.operator.tag", version.to_string()),
            ("image.agent.tag", version.to_string()),
            ("image.pullPolicy", "Never".to_string()),
        ] {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        // A node without systemd has a private /: the node's root can then be mounted
        // into the agent only without propagation (the chart's default needs it shared).
        let root_shared = Command::new("findmnt")
            .args(["-no", "PROPAGATION", "/"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("shared"));
        if !root_shared {
            args.push("--set".into());
            args.push("agent.hostRootPropagation=None".into());
        }
        for s in sets {
            args.push("--set".into());
            args.push(s.clone());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.helm(&a)?;
        self.wait_workloads()
    }

    /// Every pod of the release Ready (the DaemonSet and the Deployment rolled out).
    pub fn wait_workloads(&self) -> anyhow::Result<()> {
        for w in [format!("daemonset/{RELEASE}-agent"), format!("deployment/{RELEASE}-operator")] {
            self.kubectl(&["-n", NAMESPACE, "rollout", "status", &w, "--timeout=180s"])?;
        }
        wait_for(Duration::from_secs(120), "every bpfleet pod Ready", || {
            let pods = self.pods("").map_err(|e| e.to_string())?;
            let not_ready: Vec<&String> = pods.iter().filter(|(_, ready)| !**ready).map(|(n, _)| n).collect();
            if pods.is_empty() || !not_ready.is_empty() {
                return Err(format!("not Ready: {not_ready:?}"));
            }
            Ok(())
        });
        Ok(())
    }

    /// Pods of the release (whose name starts with `prefix`) and whether each is Ready;
    /// finished hook pods are left out.
    pub fn pods(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, bool>> {
        let pods = self.kubectl_json(&["-n", NAMESPACE, "get", "pods"])?;
        Ok(pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed")))
            .filter_map(|p| {
                let name = p["metadata"]["name"].as_str()?.to_string();
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                name.starts_with(prefix).then_some((name, ready))
            })
            .collect())
    }

    /// A BpfProgram as JSON (`None` when absent).
    pub fn program(&self, name: &str) -> anyhow::Result<Option<Value>> {
        match self.kubectl_json(&["get", "bpfprogram", name]) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.to_string().contains("NotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The `status.programs[]` entry of `owner` in `node`'s BpfNode.
    pub fn node_program(&self, node: &str, owner: &str) -> anyhow::Result<Option<Value>> {
        let b = match self.kubectl_json(&["get", "bpfnode", node]) {
            Ok(b) => b,
            Err(e) if e.to_string().contains("NotFound") => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(b["status"]["programs"].as_array().into_iter().flatten().find(|p| p["owner"] == owner).cloned())
    }

    /// Names of the cluster's nodes.
    pub fn nodes(&self) -> anyhow::Result<Vec<String>> {
        let out = self.kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// A node's InternalIP.
    pub fn node_ip(&self, node: &str) -> anyhow::Result<String> {
        let out = self.kubectl(&[
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
        ])?;
        Ok(out.trim().to_string())
    }
}

/// A veth pair on this host (the node): `name` is what programs attach to; frames sent
/// out of its peer arrive on it. IPv6 is off on both, so the kernel sends nothing of its
/// own and every frame counted is one the test sent. Removed on drop.
pub struct TestLink {
    pub name: String,
    pub peer: String,
}

impl TestLink {
    pub fn create(name: &str) -> anyhow::Result<TestLink> {
        let peer = format!("{name}p");
        let _ = Command::new("ip").args(["link", "del", name]).output();
        let sh = |c: &str| run(Command::new("sh").args(["-c", c]), c);
        sh(&format!("ip link add {name} type veth peer name {peer}"))?;
        for i in [name, peer.as_str()] {
            sh(&format!("sysctl -qw net.ipv6.conf.{i}.disable_ipv6=1"))?;
            sh(&format!("ip link set {i} up"))?;
        }
        Ok(TestLink { name: name.into(), peer })
    }

    /// Send `n` Ethernet frames (an experimental EtherType, broadcast) out of the peer.
    pub fn send(&self, n: usize) -> anyhow::Result<()> {
        send_frames(&self.peer, n)
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.name]).output();
    }
}

/// `n` raw frames out of `ifname` (AF_PACKET).
pub fn send_frames(ifname: &str, n: usize) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: `c` is NUL-terminated.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}");
    }
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
    }
    let mut frame = vec![0xffu8; 6];
    frame.extend([0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]);
    frame.extend(b"bpfleet-e2e");
    frame.resize(60, 0);
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut result = Ok(());
    for _ in 0..n {
        // SAFETY: `frame` and `addr` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            result = Err(anyhow::anyhow!("sendto {ifname}: {}", std::io::Error::last_os_error()));
            break;
        }
    }
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    result
}
