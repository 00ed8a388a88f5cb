//! What the tests run: the binaries under test, the example objects, and the one-time
//! host set-up they need.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use agent::testing::TEST_AGENT_BIN;
use anyhow::{Context as _, bail};

use super::sh;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

/// The binaries under test.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub operator: PathBuf,
    /// `kubectl-bpfleet`, the kubectl plugin.
    pub plugin: PathBuf,
}

/// `bpfleet-agent-test` (the agent with its fault hooks armed: the apply gate is
/// `BPFLEET_PAUSE`) and `bpfleet-operator`, built once per test process with the same
/// cargo and profile as the tests (`BPFLEET_E2E_AGENT_BIN` / `BPFLEET_E2E_OPERATOR_BIN`
/// name prebuilt ones instead).
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| build_binaries().unwrap_or_else(|e| panic!("cannot build the binaries under test: {e:#}")))
}

fn build_binaries() -> anyhow::Result<Binaries> {
    let given = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let (Some(agent), Some(operator)) = (given("BPFLEET_E2E_AGENT_BIN"), given("BPFLEET_E2E_OPERATOR_BIN")) {
        let plugin = given("BPFLEET_E2E_PLUGIN_BIN").unwrap_or_else(|| operator.with_file_name("kubectl-bpfleet"));
        return Ok(Binaries { agent, operator, plugin });
    }
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().context("no current executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("the test executable is not in <target>/<profile>/deps")?;
    let target_dir = profile_dir.parent().map(Path::to_path_buf).context("no target directory")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Three builds: the agent's test binary (it requires the test-support feature), the
    // operator and the plugin as released.
    for (package, bin, features) in [
        ("node-agent", TEST_AGENT_BIN, Some("test-support")),
        ("operator", "bpfleet-operator", None),
        ("kubectl-bpfleet", "kubectl-bpfleet", None),
    ] {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(repo_root())
            .args(["build", "--quiet", "-p", package, "--bin", bin])
            .arg("--target-dir")
            .arg(&target_dir);
        if let Some(f) = features {
            cmd.args(["--features", f]);
        }
        if release {
            cmd.arg("--release");
        }
        let out = cmd.output().context("cannot run cargo")?;
        if !out.status.success() {
            bail!("cargo build of {bin} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let bins = Binaries {
        agent: profile_dir.join(TEST_AGENT_BIN),
        operator: profile_dir.join("bpfleet-operator"),
        plugin: profile_dir.join("kubectl-bpfleet"),
    };
    for b in [&bins.agent, &bins.operator, &bins.plugin] {
        if !b.exists() {
            bail!("cargo build succeeded but {} does not exist", b.display());
        }
    }
    Ok(bins)
}

/// Once per process: bpffs mounted, the example objects built.
pub fn host_setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        sh("mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf").unwrap_or_else(|e| panic!("{e:#}"));
        sh("mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let build = repo_root().join("examples/build.sh");
        sh(&format!("bash {} >/dev/null", build.display())).unwrap_or_else(|e| panic!("{e:#}"));
    });
}

/// An example object built by `examples/build.sh`.
pub fn object(name: &str) -> Vec<u8> {
    let path = repo_root().join("examples/bpf/build").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run examples/build.sh)", path.display()))
}

/// The process runs as root (netns, bpffs and the agents need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
