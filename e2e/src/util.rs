//! Small pieces every part of the harness uses: one tokio runtime behind a synchronous
//! API (so `Drop` guards can talk to the API server), shell commands, polling, the
//! binaries under test and the one-time host set-up.

use std::fmt::Display;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use agent::testing::TEST_AGENT_BIN;
use anyhow::{Context as _, bail};

/// The runtime every asynchronous call of the harness runs on. Tests are plain
/// `#[test]` functions: they, and `Drop` implementations, call [`block_on`].
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-rt")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Run a future to completion on the harness runtime (never call it from inside one).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// [`block_on`] with a time limit. The timer is created inside the runtime: a tokio
/// timer built outside one panics ("there is no reactor running").
pub fn block_on_timeout<F: std::future::Future>(
    limit: Duration,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    block_on(async move { tokio::time::timeout(limit, f).await })
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

/// Run `cmd` with bash; its stdout, or an error with both outputs.
pub use agent::testing::sh;

/// Run `cmd` with bash, ignoring failure (clean-up).
pub fn sh_quiet(cmd: &str) {
    let _ = Command::new("bash").arg("-c").arg(cmd).output();
}

/// Eight random hex characters (kernel UUID source: no extra dependency).
pub fn random_suffix() -> String {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{:08x}", t.subsec_nanos() ^ std::process::id())
    });
    uuid.chars().filter(char::is_ascii_hexdigit).take(8).collect()
}

/// Poll `check` every 250 ms until it returns `Ok`, or panic after `timeout` with
/// `what` and the last `Err` (the state that was seen, in words).
pub fn wait_for<T>(timeout: Duration, what: impl Display, check: impl FnMut() -> Result<T, String>) -> T {
    agent::testing::wait::wait_for(timeout, Duration::from_millis(250), what, check)
}

/// Make a spawned process die with the thread that spawned it, so a killed test run
/// leaves no agent or operator behind (the test's own `Drop` guards stop them first).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The binaries under test.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub operator: PathBuf,
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
        return Ok(Binaries { agent, operator });
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
    // Two builds: the agent's test binary (it requires the test-support feature), the
    // operator as released.
    for (package, bin, features) in
        [("node-agent", TEST_AGENT_BIN, Some("test-support")), ("operator", "bpfleet-operator", None)]
    {
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
    let bins = Binaries { agent: profile_dir.join(TEST_AGENT_BIN), operator: profile_dir.join("bpfleet-operator") };
    for b in [&bins.agent, &bins.operator] {
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

/// The last `lines` lines of a file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The body of `GET path` on a plain-HTTP server (a metrics endpoint), or an error unless
/// it answers 200.
pub use agent::testing::http_get;

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    fn serve_once(answer: &'static str) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // Read the whole request first: closing with unread bytes makes the kernel
            // answer with a reset, which may reach the client before the response.
            let (mut request, mut buf) = (Vec::new(), [0u8; 1024]);
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            c.write_all(answer.as_bytes()).unwrap();
            let _ = c.shutdown(std::net::Shutdown::Write);
        });
        addr
    }

    #[test]
    fn http_get_returns_the_body_of_a_200_only() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 26\r\n\r\nbpfleet_operator_leader 1\n");
        let body = http_get(ok, "/metrics").unwrap();
        assert!(body.lines().any(|l| l.trim() == "bpfleet_operator_leader 1"), "{body:?}");
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready");
        assert!(http_get(bad, "/readyz").unwrap_err().to_string().contains("503"));
    }

    /// The harness is synchronous: timers must still be built inside its runtime
    /// (the CRD install crashed once because one was not).
    #[test]
    fn block_on_timeout_works_from_plain_threads() {
        assert_eq!(block_on_timeout(Duration::from_secs(5), async { 7 }).unwrap(), 7);
        let slow =
            block_on_timeout(Duration::from_millis(20), async { tokio::time::sleep(Duration::from_secs(5)).await });
        assert!(slow.is_err(), "the limit must fire");
        let t = std::thread::spawn(|| block_on_timeout(Duration::from_secs(1), async { 1 }).unwrap());
        assert_eq!(t.join().unwrap(), 1);
    }
}
