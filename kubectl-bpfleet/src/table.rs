//! Plain-text tables as kubectl prints them: a header row, columns padded to their
//! widest cell, three spaces between columns, no trailing spaces.

/// `headers` and every row must have the same number of cells.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `s` cut to at most `max` characters, with `…` marking the cut; newlines become spaces
/// so one entry stays one line.
pub fn truncate(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' || c == '\r' || c == '\t' { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_spaces() {
        let rows = vec![vec!["1".into(), "abc".into(), "".into()], vec!["10".into(), "a".into(), "x".into()]];
        assert_eq!(render(&["N", "HASH", "MARK"], &rows), "N    HASH   MARK\n1    abc\n10   a      x\n");
    }

    #[test]
    fn long_text_is_cut_on_one_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("line one\nline two", 10), "line one…");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }
}
