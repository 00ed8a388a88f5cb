//! Crash points for recovery tests: with `BPFLEET_FAULT=<point>` in its environment the
//! agent aborts (like `kill -9`) when it reaches that point of an apply. Unset in
//! production; reading one environment variable costs nothing next to a program load.

/// Abort the process if `BPFLEET_FAULT` names this point.
pub fn point(name: &str) {
    if std::env::var("BPFLEET_FAULT").is_ok_and(|v| v == name) {
        eprintln!("bpfleet-agent: BPFLEET_FAULT={name}: aborting");
        std::process::abort();
    }
}
