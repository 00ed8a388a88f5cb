//! bpfman's `io.ebpf.programs` / `io.ebpf.maps` labels, and the check of the programs a
//! spec names against them.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// Parse a label whose value is a JSON object of name -> type string.
pub fn parse_label(label: &str, value: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(value).map_err(|e| {
        Error::invalid_image(format!(
            "label {label} must be a JSON object of name -> type (e.g. {{\"pass\":\"xdp\"}}), but it is {value:?}: {e}"
        ))
    })
}

/// What the image's labels lack compared to what a spec asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelsMismatch {
    /// Programs the spec names that the label does not list.
    pub missing: Vec<String>,
    /// (program, type in the spec, type in the label) where the types disagree.
    pub wrong_type: Vec<(String, String, String)>,
    /// Every program the label lists.
    pub labeled: Vec<String>,
}

impl fmt::Display for LabelsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "the image's io.ebpf.programs label has no program {} (it lists: {})",
                self.missing.join(", "),
                if self.labeled.is_empty() { "none".to_string() } else { self.labeled.join(", ") }
            ));
        }
        for (name, spec, label) in &self.wrong_type {
            parts.push(format!("program {name} is labeled {label:?} in the image but the spec says type {spec}"));
        }
        write!(f, "{}: fix spec.programs or use the image built from the right object", parts.join("; "))
    }
}

/// The label types (lowercase, `_`/`-` ignored) that a spec program type accepts.
/// bpfman labels a program by its kernel program type, so kretprobes read "kprobe" and
/// uretprobes "uprobe"; TC programs may read "tc", "tcx", "classifier" or "sched_cls".
fn accepted(spec_type: &str) -> Vec<String> {
    let t = normalize(spec_type);
    let same: &[&str] = match t.as_str() {
        "tc" | "tcx" => &["tc", "tcx", "classifier", "schedcls"],
        "tracepoint" => &["tracepoint", "tp"],
        "rawtracepoint" => &["rawtracepoint", "rawtp"],
        "kretprobe" => &["kretprobe", "kprobe"],
        "uretprobe" => &["uretprobe", "uprobe"],
        "cgroupskb" => &["cgroupskb", "cgroupskbingress", "cgroupskbegress"],
        _ => &[],
    };
    if same.is_empty() { vec![t] } else { same.iter().map(|s| s.to_string()).collect() }
}

fn normalize(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '_' | '-' | '/')).flat_map(char::to_lowercase).collect()
}

/// Check that every `(name, type)` the spec expects is in `labeled` with a compatible
/// type. Names must match exactly (they are ELF function names).
pub fn check_programs(
    labeled: &BTreeMap<String, String>,
    expected: &[(&str, &str)],
) -> std::result::Result<(), LabelsMismatch> {
    let mut mismatch = LabelsMismatch { labeled: labeled.keys().cloned().collect(), ..Default::default() };
    for (name, spec_type) in expected {
        match labeled.get(*name) {
            None => mismatch.missing.push(name.to_string()),
            Some(t) if accepted(spec_type).contains(&normalize(t)) => {}
            Some(t) => mismatch.wrong_type.push((name.to_string(), spec_type.to_string(), t.clone())),
        }
    }
    if mismatch.missing.is_empty() && mismatch.wrong_type.is_empty() { Ok(()) } else { Err(mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn programs_present_with_compatible_types() {
        let l = label(&[("pass", "xdp"), ("count", "tc"), ("ret", "kprobe"), ("tp", "tracepoint"), ("u", "uprobe")]);
        let ok = [("pass", "XDP"), ("count", "TC"), ("ret", "Kretprobe"), ("tp", "Tracepoint"), ("u", "Uretprobe")];
        assert_eq!(check_programs(&l, &ok), Ok(()));
        assert_eq!(check_programs(&label(&[("r", "raw_tracepoint")]), &[("r", "RawTracepoint")]), Ok(()));
        assert_eq!(check_programs(&label(&[("s", "cgroup_skb")]), &[("s", "CgroupSkb")]), Ok(()));
        assert_eq!(check_programs(&label(&[("f", "fentry")]), &[("f", "Fentry")]), Ok(()));
    }

    #[test]
    fn missing_and_wrong_types_are_named() {
        let l = label(&[("pass", "xdp"), ("count", "tc")]);
        let e =
            check_programs(&l, &[("pass", "TC"), ("drop", "XDP"), ("other", "Kprobe"), ("count", "TC")]).unwrap_err();
        assert_eq!(e.missing, vec!["drop", "other"]);
        assert_eq!(e.wrong_type, vec![("pass".into(), "TC".into(), "xdp".into())]);
        let msg = Error::LabelsMismatch(e).to_string();
        assert!(msg.contains("no program drop, other (it lists: count, pass)"), "{msg}");
        assert!(msg.contains("program pass is labeled \"xdp\" in the image but the spec says type TC"), "{msg}");
        // kprobe does not stand in for a kretprobe the other way round.
        assert!(check_programs(&label(&[("k", "kretprobe")]), &[("k", "Kprobe")]).is_err());
    }

    #[test]
    fn label_json() {
        assert_eq!(parse_label("io.ebpf.maps", r#"{"m":"hash"}"#).unwrap()["m"], "hash");
        let e = parse_label("io.ebpf.programs", "[1]").unwrap_err();
        assert!(e.to_string().contains("io.ebpf.programs must be a JSON object"), "{e}");
    }
}
