//! Text from outside (an agent's error, a registry's answer, a kernel log) made safe to
//! show: the one place control characters are stripped before text enters a status, an
//! Event or the kubectl plugin's output (issue 21, point 7). A hostile agent or
//! registry could otherwise move a terminal's cursor, rewrite what `kubectl describe`
//! shows (`ESC [ 2 J`, carriage returns), ring bells, or hide text behind bidirectional
//! overrides ("Trojan Source").

/// Whether `c` is removed: C0 controls but newline and tab, DEL, C1 controls, and the
/// bidirectional embedding, override and isolate characters.
fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// For status messages and Events: control characters removed (an escape sequence
/// loses its ESC, so it shows as inert text), newlines and tabs kept.
pub fn for_status(s: &str) -> String {
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    s.chars().filter(|c| !unsafe_char(*c)).collect()
}

/// For one line of a table or a log line: as [`for_status`], with newlines and tabs
/// turned into spaces (a message cannot forge the next row).
pub fn one_line(s: &str) -> String {
    for_status(s).chars().map(|c| if c == '\n' || c == '\t' || c == '\r' { ' ' } else { c }).collect()
}

/// A BpfProgram status with every text field that may carry agent or registry text
/// (condition messages and reasons, node failures, the rollout message) cleaned by
/// [`for_status`]: the operator's one call before a status is written.
pub fn program_status(mut s: crate::program::BpfProgramStatus) -> crate::program::BpfProgramStatus {
    let clean = |t: &mut String| {
        if t.chars().any(unsafe_char) {
            *t = for_status(t);
        }
    };
    for c in &mut s.conditions {
        clean(&mut c.message);
        clean(&mut c.reason);
    }
    for f in &mut s.failures {
        clean(&mut f.message);
        clean(&mut f.reason);
        clean(&mut f.node);
        if let Some(p) = &mut f.program {
            clean(p);
        }
    }
    if let Some(m) = s.rollout.as_mut().and_then(|r| r.message.as_mut()) {
        clean(m);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_carries_no_control_characters() {
        let hostile = "agent says \x1b[2Jgone\r\u{7}";
        let s = crate::program::BpfProgramStatus {
            failures: vec![crate::program::NodeFailure {
                node: "n".into(),
                program: Some("p\x1b".into()),
                reason: "VerifierRejected".into(),
                message: hostile.into(),
                attempts: None,
                next_retry_time: None,
            }],
            ..Default::default()
        };
        let s = program_status(s);
        assert_eq!(s.failures[0].message, "agent says [2Jgone");
        assert_eq!(s.failures[0].program.as_deref(), Some("p"));
    }

    #[test]
    fn escapes_bells_and_overrides_are_removed() {
        let hostile = "verifier: \x1b[2J\x1b]0;owned\x07R0 invalid\r\u{9b}31m\u{202E}txt.exe\u{7f}";
        let clean = for_status(hostile);
        assert!(!clean.chars().any(|c| c.is_control() || ('\u{202A}'..='\u{202E}').contains(&c)), "{clean:?}");
        assert_eq!(clean, "verifier: [2J]0;ownedR0 invalid31mtxt.exe");
        assert_eq!(for_status("line 1\n\tline 2"), "line 1\n\tline 2", "newlines and tabs stay in status");
        assert_eq!(one_line("a\nb\tc"), "a b c");
        assert_eq!(for_status("plain ünïcode ✓"), "plain ünïcode ✓");
    }
}
