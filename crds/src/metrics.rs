//! `spec.metrics`: which maps the agent exports as Prometheus metrics on its `/metrics`,
//! each entry a series: key fields (decoded with the map's BTF) as labels, a value field
//! as the sample, per-CPU values summed or one series per CPU. Checked here (names,
//! labels, duplicates) and again by the agent against the object's BTF (the map and its
//! fields exist, the value is an integer).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Metrics one BpfProgram may export.
pub const MAX_METRICS: usize = 16;
/// Labels one metric may take from its key.
pub const MAX_LABELS: usize = 8;
/// The label every exported series carries: the BpfProgram's name.
pub const PROGRAM_LABEL: &str = "program";
/// The label a `perCpu: Label` series carries.
pub const CPU_LABEL: &str = "cpu";

/// One metric made of one map.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// The metric family's name, e.g. `xdp_flow_packets` (a counter's samples get
    /// `_total` appended; a name that ends in `_total` is taken without it). Unique
    /// across the programs of a node: two programs exporting one name as different types
    /// export only the first.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"))]
    pub name: String,
    /// The `# HELP` text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    pub help: String,
    /// `Counter` (a value that only grows, e.g. packets) or `Gauge`.
    #[serde(rename = "type")]
    pub metric_type: MetricType,
    /// The map, by its name in the ELF object: one series per entry.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$"))]
    pub map: String,
    /// Labels taken from the entry's key, each a field of the key's BTF type by name
    /// (`proto`, `hdr.saddr`, `addr[0]`), or the whole key with `field` left out. Every
    /// series also has `program` (the BpfProgram's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub labels: Vec<MetricLabel>,
    /// The value's field that is the sample (an integer or enum of the value's BTF type),
    /// by name; the whole value when left out (then it must be an integer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 128))]
    pub value: String,
    /// A per-CPU map's values: `Sum` (default) them into one series, or one series per CPU
    /// with label `cpu`.
    #[serde(default)]
    pub per_cpu: PerCpu,
}

/// A label of an exported series and the key field it is read from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MetricLabel {
    /// The label's name (not `program`, and not `cpu` with `perCpu: Label`).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub name: String,
    /// The key's field, by name (dots for nested fields, `[i]` for array elements); the
    /// whole key when left out. Numbers are written in decimal, enums by their names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 128))]
    pub field: String,
}

/// See `metrics[].type`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum MetricType {
    Counter,
    Gauge,
}

/// See `metrics[].perCpu`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(extend("maxLength" = 16))]
pub enum PerCpu {
    #[default]
    Sum,
    Label,
}

impl MetricSpec {
    /// The family name without a counter's `_total`.
    pub fn family(&self) -> &str {
        match self.metric_type {
            MetricType::Counter => self.name.strip_suffix("_total").unwrap_or(&self.name),
            MetricType::Gauge => &self.name,
        }
    }
}

fn is_name(s: &str, first_colon: bool) -> bool {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (first_colon && c == ':'));
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (first_colon && c == ':'))
}

/// What is wrong with `spec.metrics`, as (field, message) pairs naming `metrics[i]…`.
pub fn problems(metrics: &[MetricSpec]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if metrics.len() > MAX_METRICS {
        out.push(("metrics".to_string(), format!("at most {MAX_METRICS} metrics per BpfProgram")));
    }
    let mut families = std::collections::BTreeSet::new();
    for (i, m) in metrics.iter().enumerate() {
        let at = |f: &str| format!("metrics[{i}]{f}");
        if !is_name(&m.name, true) || m.name.len() > 128 {
            out.push((
                at(".name"),
                format!("{:?} is not a metric name: letters, digits, _ and :, not starting with a digit", m.name),
            ));
        } else if m.family().is_empty() {
            out.push((at(".name"), "a counter's name needs more than _total".into()));
        } else if m.name.starts_with("bpfleet_") {
            out.push((at(".name"), "names starting with bpfleet_ are the agent's own: choose another prefix".into()));
        } else if m.metric_type == MetricType::Gauge && m.name.ends_with("_total") {
            out.push((
                at(".name"),
                "a gauge's name must not end in _total (a counter's samples do): drop it, or make it a Counter".into(),
            ));
        } else if !families.insert(m.family().to_string()) {
            out.push((at(".name"), format!("metric {:?} is defined twice", m.family())));
        }
        if m.map.is_empty() || m.map.len() > 64 || !is_name(&m.map.replace('.', "_"), false) {
            out.push((at(".map"), format!("{:?} is not a map name of an ELF object", m.map)));
        }
        if m.help.len() > 256 {
            out.push((at(".help"), "at most 256 characters".into()));
        }
        if m.labels.len() > MAX_LABELS {
            out.push((at(".labels"), format!("at most {MAX_LABELS} labels")));
        }
        let mut names = std::collections::BTreeSet::new();
        for (j, l) in m.labels.iter().enumerate() {
            let field = format!("metrics[{i}].labels[{j}].name");
            if !is_name(&l.name, false) || l.name.len() > 64 {
                out.push((
                    field,
                    format!("{:?} is not a label name: letters, digits and _, not starting with a digit", l.name),
                ));
            } else if l.name == PROGRAM_LABEL
                || (m.per_cpu == PerCpu::Label && l.name == CPU_LABEL)
                || l.name.starts_with("__")
            {
                out.push((field, format!("label {:?} is the exporter's own: choose another name", l.name)));
            } else if !names.insert(l.name.as_str()) {
                out.push((field, format!("label {:?} is given twice", l.name)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, labels: &[(&str, &str)]) -> MetricSpec {
        MetricSpec {
            name: name.into(),
            help: String::new(),
            metric_type: MetricType::Counter,
            map: "flows".into(),
            labels: labels.iter().map(|(n, f)| MetricLabel { name: (*n).into(), field: (*f).into() }).collect(),
            value: "packets".into(),
            per_cpu: PerCpu::Sum,
        }
    }

    #[test]
    fn good_metrics_pass_and_a_counter_family_drops_total() {
        let m = metric("xdp_flow_packets_total", &[("proto", "proto"), ("src", "saddr")]);
        assert_eq!(m.family(), "xdp_flow_packets");
        assert!(problems(&[m]).is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut cpu = metric("b", &[("cpu", "")]);
        cpu.per_cpu = PerCpu::Label;
        let got = problems(&[
            metric("9bad", &[]),
            metric("dup", &[("program", "x"), ("a", "x"), ("a", "y")]),
            metric("dup_total", &[]),
            cpu,
        ]);
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metrics[0].name",
                "metrics[1].labels[0].name",
                "metrics[1].labels[2].name",
                "metrics[2].name",
                "metrics[3].labels[0].name"
            ],
            "{got:?}"
        );
        assert!(got[1].1.contains("the exporter's own"), "{got:?}");
        assert!(got[3].1.contains("defined twice"), "{got:?}");
    }
}
