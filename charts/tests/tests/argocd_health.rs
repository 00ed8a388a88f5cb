//! The Argo CD health check in docs/install.md, run by a real Lua interpreter against
//! the statuses the operator writes: it must agree with kstatus (status.rs) on every
//! state, so the documented Lua cannot drift from the conditions.

use std::process::Command;

use chart_tests::repo;

fn health_lua() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/install.md")).expect("docs/install.md");
    let start = doc.find("health.bpfleet.dev_BpfProgram: |\n").expect("the Lua block") + 34;
    let end = start + doc[start..].find("```").expect("end of the block");
    doc[start..end].lines().map(|l| l.strip_prefix("    ").unwrap_or(l)).collect::<Vec<_>>().join("\n")
}

fn status_of(generation: i64, observed: i64, conditions: &[(&str, &str)]) -> String {
    let cs: Vec<String> =
        conditions.iter().map(|(t, s)| format!("{{type=\"{t}\",status=\"{s}\",message=\"{t} says why\"}}")).collect();
    let lua = format!(
        "obj={{metadata={{generation={generation}}},status={{observedGeneration={observed},conditions={{{}}}}}}}\n\
         local function health()\n{}\nend\nlocal hs = health()\nprint(hs.status .. '|' .. hs.message)",
        cs.join(","),
        health_lua()
    );
    let out =
        Command::new("lua5.4").arg("-e").arg(&lua).output().expect("lua5.4 (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn argo_cd_health_follows_the_conditions_like_kstatus() {
    let converging = [("Ready", "False"), ("Reconciling", "True"), ("Stalled", "False")];
    assert_eq!(status_of(2, 2, &converging), "Progressing|Reconciling says why");
    let failing = [("Ready", "False"), ("Reconciling", "False"), ("Stalled", "True")];
    assert_eq!(status_of(2, 2, &failing), "Degraded|Stalled says why");
    let done = [("Ready", "True"), ("Reconciling", "False"), ("Stalled", "False")];
    assert_eq!(status_of(2, 2, &done), "Healthy|Ready says why");
    assert!(status_of(3, 2, &done).starts_with("Progressing|"), "a status of an older generation is not health");
    assert!(status_of(2, 2, &[]).starts_with("Progressing|"));
}
