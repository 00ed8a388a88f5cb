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

use crate::error::{AgentError, Reason, Result};
use crate::maps::dump::{self, Budget};
use crate::store::OwnerRecord;

/// Default of `--max-metric-series-per-program`.
pub const DEFAULT_MAX_SERIES: usize = 1000;
/// Longest one map may take to read at a scrape.
const READ_TIME: Duration = Duration::from_secs(2);
/// Longest all maps of one scrape may take: the rest wait for the next scrape.
const SCRAPE_TIME: Duration = Duration::from_secs(5);

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
        // The kernel's size of the value, not the BTF's (which hostile BTF could make huge).
        let zeros = vec![0u8; maps[&m.map].value_size as usize];
        let sample = field.decode(&btf, &zeros).map_err(|e| refuse(i, ".value", e.to_string()))?;
        if Sample::of(&sample).is_none() {
            return Err(refuse(
                i,
                ".value",
                format!("a sample is a number, and {sample} is not: name a number field of {}", btf.type_name(value)),
            ));
        }
    }
    Ok(())
}

/// The whole value (or key) as one field.
fn whole(type_id: u32) -> Field {
    Field { type_id, bit_offset: 0, bit_size: 0 }
}

/// The object's `.BTF` section, parsed.
fn object_btf(elf: &[u8]) -> Result<Btf> {
    crate::elf::btf(elf).map_err(|e| AgentError::new(Reason::MalformedElf, e))?.ok_or_else(|| {
        AgentError::new(
            Reason::InvalidSpec,
            "metrics need the object's BTF: build it with clang -g (it has no .BTF section)",
        )
    })
}

/// One exported family: its type, help and series (label set -> value).
struct Family {
    metric_type: MetricType,
    help: String,
    series: Vec<(String, Sample)>,
}

/// What a scrape exports of every program, and per owner uid what was cut or could not be
/// read (empty: all of it).
pub struct Exported {
    pub text: String,
    pub notes: BTreeMap<String, Vec<String>>,
}

/// Read every program's metrics maps and write them as OpenMetrics families.
pub fn export(records: &[OwnerRecord], max_series: usize) -> Exported {
    // One scrape reads maps at a time: scrapers that pile up wait rather than load the node.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + SCRAPE_TIME;
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
            if let Err(why) = read_metric(r, m, max_series, &mut left, deadline, &mut series) {
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

/// A sample: integers exactly (counters wrap as the kernel's do), anything else as a float.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sample {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl Sample {
    fn of(v: &serde_json::Value) -> Option<Sample> {
        match v {
            serde_json::Value::Bool(b) => Some(Sample::Unsigned(u64::from(*b))),
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(Sample::Unsigned)
                .or_else(|| n.as_i64().map(Sample::Signed))
                .or_else(|| n.as_f64().map(Sample::Float)),
            _ => None,
        }
    }

    fn add(self, other: Sample) -> Sample {
        match (self, other) {
            (Sample::Unsigned(a), Sample::Unsigned(b)) => Sample::Unsigned(a.wrapping_add(b)),
            (Sample::Float(a), b) | (b, Sample::Float(a)) => Sample::Float(a + b.as_f64()),
            (a, b) => Sample::Signed(a.as_i64().wrapping_add(b.as_i64())),
        }
    }

    /// An integer sample as i64 (an unsigned one wraps, as C's conversion does).
    fn as_i64(self) -> i64 {
        match self {
            Sample::Unsigned(v) => v as i64,
            Sample::Signed(v) => v,
            Sample::Float(v) => v as i64,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Sample::Unsigned(v) => v as f64,
            Sample::Signed(v) => v as f64,
            Sample::Float(v) => v,
        }
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sample::Unsigned(v) => write!(f, "{v}"),
            Sample::Signed(v) => write!(f, "{v}"),
            Sample::Float(v) => write!(f, "{v}"),
        }
    }
}

/// A key or key field as a label value: strings as they are, numbers in decimal, enums by
/// name, anything else as compact JSON; a key without BTF type as hex bytes.
fn label_text(btf: &Btf, field: &Field, key: &[u8]) -> std::result::Result<String, String> {
    if field.type_id == 0 {
        return Ok(mapview::hex(key));
    }
    Ok(match field.decode(btf, key).map_err(|e| e.to_string())? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The series of metric `m` of `record`, at most `left` of them (spent here), read before
/// `deadline`. Entries whose labels are the same (labels that leave key fields out) are one
/// series, their samples summed. Err: why the metric is cut or could not be read at all;
/// the words stay the same from one scrape to the next, so a note changes only when the
/// situation does.
fn read_metric(
    r: &OwnerRecord,
    m: &MetricSpec,
    max_series: usize,
    left: &mut usize,
    deadline: Instant,
    out: &mut Vec<(String, Sample)>,
) -> std::result::Result<(), String> {
    let pin = r.maps.iter().find(|x| x.name == m.map).map(|x| x.pin_path.clone()).ok_or("the map is not pinned")?;
    if Instant::now() >= deadline {
        return Err("not read: this scrape's time for reading maps ran out".into());
    }
    let entries = u32::try_from(max_series.saturating_add(1)).unwrap_or(u32::MAX);
    let mut budget =
        Budget { entries_per_map: entries, bytes: 64 << 20, deadline: deadline.min(Instant::now() + READ_TIME) };
    let d = dump::dump(&m.map, &pin, &mut budget);
    if !d.error.is_empty() {
        return Err(d.error);
    }
    if d.kernel.btf_value_type_id == 0 {
        return Err(format!("the map has no BTF value type in the kernel ({})", d.btf_note));
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
    let mut series: BTreeMap<String, Sample> = BTreeMap::new();
    let mut cut = !d.truncated.is_empty();
    for e in &d.entries {
        let mut set = format!("{PROGRAM_LABEL}=\"{}\"", escape(&r.name));
        for (name, f) in &labels {
            let _ = write!(set, ",{name}=\"{}\"", escape(&label_text(&btf, f, &e.key)?));
        }
        let samples: Vec<Sample> = e
            .values
            .iter()
            .map(|v| {
                let json = value.decode(&btf, v).map_err(|e| e.to_string())?;
                Sample::of(&json).ok_or_else(|| format!("the value {json} is not a number"))
            })
            .collect::<std::result::Result<_, _>>()?;
        let each: Vec<(String, Sample)> = if per_cpu {
            samples.into_iter().enumerate().map(|(cpu, v)| (format!("{set},{CPU_LABEL}=\"{cpu}\""), v)).collect()
        } else {
            let sum = samples.into_iter().reduce(Sample::add).unwrap_or(Sample::Unsigned(0));
            vec![(set, sum)]
        };
        for (labels, sample) in each {
            match series.get_mut(&labels) {
                Some(s) => *s = s.add(sample),
                None if *left > 0 => {
                    *left -= 1;
                    series.insert(labels, sample);
                }
                None => cut = true,
            }
        }
    }
    out.extend(series);
    if cut {
        return Err(format!(
            "more series than the {max_series} this agent exports per program (--max-metric-series-per-program); \
             the rest are not exported"
        ));
    }
    Ok(())
}

/// A label value or help text as OpenMetrics writes it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
