//! `spec.metrics`: maps exported as Prometheus metrics on `/metrics`. At apply, every
//! metric is checked against the object's BTF before anything loads (the map exists, its
//! key and value have the fields named, the value is an integer); at each scrape, the
//! maps are read from the kernel, one series per entry, labels and values decoded with
//! the BTF the kernel keeps for the map.
//!
//! Series are bounded per program (`--max-metric-series-per-program`): a program whose
//! maps hold more entries exports that many, and its state says which metric was cut
//! (`metricsLimited` on its BpfNode entry), never silently.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crds::metrics::{CPU_LABEL, MetricSpec, MetricType, PROGRAM_LABEL, PerCpu};
use mapview::{Btf, Field};
use object::{Object, ObjectSection};

use crate::error::{AgentError, Reason, Result};
use crate::maps::dump::{self, Budget};
use crate::store::OwnerRecord;

/// Default of `--max-metric-series-per-program`.
pub const DEFAULT_MAX_SERIES: usize = 1000;
/// Longest one program's maps may take to read at a scrape.
const READ_TIME: Duration = Duration::from_secs(2);

fn refuse(i: usize, what: &str, message: String) -> AgentError {
    AgentError::new(Reason::InvalidSpec, format!("metrics[{i}]{what}: {message}"))
}

/// Check `metrics` against the object: each names a BTF-defined map of it whose key and
/// value types have the fields the labels and value name, and the value is an integer.
pub fn check(elf: &[u8], maps: &BTreeMap<String, crate::elf::MapDef>, metrics: &[MetricSpec]) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    if let Some((field, message)) = crds::metrics::problems(metrics).into_iter().next() {
        return Err(AgentError::new(Reason::InvalidSpec, format!("{field}: {message}")));
    }
    let btf = object_btf(elf)?;
    for (i, m) in metrics.iter().enumerate() {
        if !maps.contains_key(&m.map) {
            let names: Vec<&str> = maps.keys().map(String::as_str).collect();
            return Err(refuse(
                i,
                ".map",
                format!("the object has no map {:?} (its maps: {})", m.map, names.join(", ")),
            ));
        }
        let (key, value) = btf.map_types(&m.map).ok_or_else(|| {
            refuse(i, ".map", format!("map {:?} is not defined with BTF (SEC(\".maps\") with __type(key, …) and __type(value, …)), so its fields have no names", m.map))
        })?;
        for (j, l) in m.labels.iter().enumerate() {
            if l.field.is_empty() {
                continue;
            }
            let key = key.ok_or_else(|| {
                refuse(
                    i,
                    &format!(".labels[{j}].field"),
                    format!("map {:?} gives its key only by size: leave field out to label by the whole key", m.map),
                )
            })?;
            btf.field(key, &l.field).map_err(|e| refuse(i, &format!(".labels[{j}].field"), e.to_string()))?;
        }
        let value =
            value.ok_or_else(|| refuse(i, ".value", format!("map {:?} gives its value only by size", m.map)))?;
        let field = if m.value.is_empty() {
            whole(value)
        } else {
            btf.field(value, &m.value).map_err(|e| refuse(i, ".value", e.to_string()))?
        };
        let zeros = vec![0u8; btf.size_of(value).unwrap_or(0) as usize];
        field.read_u64(&btf, &zeros).map_err(|e| {
            refuse(
                i,
                ".value",
                format!("{e} (a sample is an integer: name an integer field of {})", btf.type_name(value)),
            )
        })?;
    }
    Ok(())
}

/// The whole value (or key) as one field.
fn whole(type_id: u32) -> Field {
    Field { type_id, bit_offset: 0, bit_size: 0 }
}

/// The object's `.BTF` section, parsed.
fn object_btf(elf: &[u8]) -> Result<Btf> {
    let file = object::File::parse(elf).map_err(|e| AgentError::new(Reason::MalformedElf, e.to_string()))?;
    let section = file.section_by_name(".BTF").ok_or_else(|| {
        AgentError::new(
            Reason::InvalidSpec,
            "metrics need the object's BTF: build it with clang -g (it has no .BTF section)",
        )
    })?;
    let data = section.data().map_err(|e| AgentError::new(Reason::MalformedElf, e.to_string()))?;
    Btf::parse(data).map_err(|e| AgentError::new(Reason::MalformedElf, format!("the object's BTF: {e}")))
}

/// One exported family: its type, help and series (label set -> value).
struct Family {
    metric_type: MetricType,
    help: String,
    series: Vec<(String, u64)>,
}

/// What a scrape exports of every program, and per owner uid what was cut or could not be
/// read (empty: all of it).
pub struct Exported {
    pub text: String,
    pub notes: BTreeMap<String, Vec<String>>,
}

/// Read every program's metrics maps and write them as OpenMetrics families.
pub fn export(records: &[OwnerRecord], max_series: usize) -> Exported {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut notes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.metrics.is_empty()) {
        let mut left = max_series;
        let mut mine = Vec::new();
        for m in &r.metrics {
            let family = m.family().to_string();
            if let Some(f) = families.get(&family)
                && f.metric_type != m.metric_type
            {
                mine.push(format!("{}: another program exports {family} as another type; not exported", m.name));
                continue;
            }
            let mut series = Vec::new();
            if let Err(why) = read_metric(r, m, max_series, &mut left, &mut series) {
                mine.push(format!("{}: {why}", m.name));
            }
            let f = families.entry(family).or_insert_with(|| Family {
                metric_type: m.metric_type,
                help: m.help.clone(),
                series: Vec::new(),
            });
            f.series.extend(series);
        }
        notes.insert(r.uid.clone(), mine);
    }
    let mut text = String::new();
    for (name, f) in &families {
        let (kind, sample) = match f.metric_type {
            MetricType::Counter => ("counter", format!("{name}_total")),
            MetricType::Gauge => ("gauge", name.clone()),
        };
        let _ = writeln!(text, "# TYPE {name} {kind}");
        if !f.help.is_empty() {
            let _ = writeln!(text, "# HELP {name} {}", escape(&f.help));
        }
        for (labels, value) in &f.series {
            let _ = writeln!(text, "{sample}{{{labels}}} {value}");
        }
    }
    Exported { text, notes }
}

/// The series of metric `m` of `record`, at most `left` of them (spent here). Err: why
/// the metric is cut or could not be read at all.
fn read_metric(
    r: &OwnerRecord,
    m: &MetricSpec,
    max_series: usize,
    left: &mut usize,
    out: &mut Vec<(String, u64)>,
) -> std::result::Result<(), String> {
    let pin = r.maps.iter().find(|x| x.name == m.map).map(|x| x.pin_path.clone()).ok_or("the map is not pinned")?;
    let mut budget =
        Budget { entries_per_map: (*left + 1) as u32, bytes: 64 << 20, deadline: Instant::now() + READ_TIME };
    let d = dump::dump(&m.map, &pin, &mut budget);
    if !d.error.is_empty() {
        return Err(d.error);
    }
    let btf = Btf::parse(&d.btf).map_err(|e| format!("the map's BTF: {e} {}", d.btf_note))?;
    let labels: Vec<(&str, Field)> = m
        .labels
        .iter()
        .map(|l| {
            let f = if l.field.is_empty() {
                Ok(whole(d.kernel.btf_key_type_id))
            } else {
                btf.field(d.kernel.btf_key_type_id, &l.field)
            };
            f.map(|f| (l.name.as_str(), f)).map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<_, _>>()?;
    let value = if m.value.is_empty() {
        whole(d.kernel.btf_value_type_id)
    } else {
        btf.field(d.kernel.btf_value_type_id, &m.value).map_err(|e| e.to_string())?
    };
    let per_cpu = d.values_per_entry > 1 && m.per_cpu == PerCpu::Label;
    let want = d.entries.len() * if per_cpu { d.values_per_entry as usize } else { 1 };
    for e in &d.entries {
        let mut set = format!("{PROGRAM_LABEL}=\"{}\"", escape(&r.name));
        for (name, f) in &labels {
            let v = f.decode(&btf, &e.key).map_err(|e| e.to_string())?;
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let _ = write!(set, ",{name}=\"{}\"", escape(&text));
        }
        let values: Vec<u64> = e
            .values
            .iter()
            .map(|v| value.read_u64(&btf, v).map_err(|e| e.to_string()))
            .collect::<std::result::Result<_, _>>()?;
        if per_cpu {
            for (cpu, v) in values.iter().enumerate() {
                if *left == 0 {
                    break;
                }
                *left -= 1;
                out.push((format!("{set},{CPU_LABEL}=\"{cpu}\""), *v));
            }
        } else if *left > 0 {
            *left -= 1;
            out.push((set, values.iter().fold(0u64, |a, b| a.wrapping_add(*b))));
        }
    }
    if !d.truncated.is_empty() || out.len() < want {
        return Err(format!(
            "more series than the {max_series} this agent exports per program (--max-metric-series-per-program): {} of {}{} exported",
            out.len(),
            want,
            if d.truncated.is_empty() { "" } else { " or more" },
        ));
    }
    Ok(())
}

/// A label value or help text as OpenMetrics writes it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
