//! Shell commands and child processes: running, naming, reaping, reading their logs.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

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

/// The last `lines` lines of a file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The body of `GET path` on a plain-HTTP server (a metrics endpoint), or an error unless
/// it answers 200.
pub use agent::testing::http_get;
