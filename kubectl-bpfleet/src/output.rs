//! The plugin's output, cleaned on its way to the terminal: what it prints comes from
//! status, Events and BpfNodes, i.e. from agents and registries, and a control
//! character there could rewrite the user's terminal (issue 21, point 7). One writer
//! around stdout (and the error line) so no command can forget it.

use std::io::{self, Write};

/// Passes text through [`crds::sanitize::for_status`] a line at a time (a multi-byte
/// character or an escape sequence split across writes is still seen whole).
pub struct Clean<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> Clean<W> {
    pub fn new(inner: W) -> Self {
        Clean { inner, pending: Vec::new() }
    }

    fn emit(&mut self, upto: usize) -> io::Result<()> {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        self.inner.write_all(crds::sanitize::for_status(&String::from_utf8_lossy(&line)).as_bytes())
    }
}

impl<W: Write> Write for Clean<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last) = self.pending.iter().rposition(|b| *b == b'\n') {
            self.emit(last + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit(self.pending.len())?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for Clean<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_from_a_status_never_reach_the_terminal() {
        let mut out = Vec::new();
        {
            let mut w = Clean::new(&mut out);
            // A status message as a hostile agent would write it, split mid-sequence.
            w.write_all(b"node-7: VerifierRejected: \x1b[2J\x1b]0;").unwrap();
            w.write_all("owned\x07\r\u{202E}gnp.exe\n".as_bytes()).unwrap();
            write!(w, "tail without newline \u{9b}").unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "node-7: VerifierRejected: [2J]0;ownedgnp.exe\ntail without newline ");
    }
}
