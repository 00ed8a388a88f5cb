//! `kubectl bpfleet maps PROGRAM [MAP]`: the entries of a program's maps on its nodes,
//! decoded with each map's BTF (struct fields by name, enums by their names), per-CPU
//! values per CPU or summed.
//!
//! The way there: mint a short-lived token for the map-reader service account (audience
//! `bpfleet.dev/maps`), then GET the operator's map endpoint through the API server's
//! service proxy. The operator checks the token's identity may `get bpfprograms/maps`
//! and asks the nodes' agents. The answer carries bytes; [`decode`] makes them readable.

use std::io::Write;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crds::mapread::{self, MapContents, MapsAnswer, MapsQuery, NodeMaps};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};
use serde::Serialize;
use serde_json::Value;

/// Lifetime of a minted token (the API server's minimum is ten minutes).
const TOKEN_SECONDS: i64 = 600;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// What `kubectl bpfleet maps` was asked.
#[derive(Clone, Debug)]
pub struct Args {
    pub query: MapsQuery,
    pub sum: bool,
    pub format: Format,
    /// `NAMESPACE/NAME` of the service account whose token is sent.
    pub service_account: String,
    /// `NAME:PORT` of the operator's map service in the operator's namespace.
    pub service: String,
    pub namespace: String,
}

/// Mint the token, read through the operator, print.
pub async fn run(client: Client, args: &Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let token = mint_token(&client, &args.service_account).await?;
    let path = format!(
        "/api/v1/namespaces/{}/services/https:{}/proxy{}?{}",
        args.namespace,
        args.service,
        mapread::PATH,
        query_string(&args.query)
    );
    let request = http::Request::get(&path).header(mapread::TOKEN_HEADER, token).body(Vec::new())?;
    let text = client.request_text(request).await.map_err(|e| match e {
        kube::Error::Api(status) => anyhow::anyhow!("the operator refused the read: {}", status.message),
        other => anyhow::anyhow!(
            "cannot reach the operator's map service {} in namespace {} through the API server: {other} \
             (is the chart's maps.enabled on, and may you get services/proxy there?)",
            args.service,
            args.namespace
        ),
    })?;
    let answer: MapsAnswer = serde_json::from_str(&text).context("the operator's answer is not a map read")?;
    let views = decode(&answer, args.sum);
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?,
        Format::Yaml => write!(out, "{}", serde_yaml::to_string(&views)?)?,
        Format::Table => write!(out, "{}", table(&views))?,
    }
    let failed: Vec<&str> = views.iter().filter(|n| !n.error.is_empty()).map(|n| n.node.as_str()).collect();
    if !failed.is_empty() {
        anyhow::bail!("{} of {} nodes could not be read: {} (see above)", failed.len(), views.len(), failed.join(", "));
    }
    Ok(())
}

async fn mint_token(client: &Client, service_account: &str) -> anyhow::Result<String> {
    let (namespace, name) = service_account
        .split_once('/')
        .with_context(|| format!("--service-account {service_account:?}: write it NAMESPACE/NAME"))?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![mapread::AUDIENCE.into()],
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let minted = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| {
            format!(
                "cannot mint a token for service account {name} in namespace {namespace} \
                 (reading maps needs create on serviceaccounts/token for it; see docs/maps.md)"
            )
        })?;
    minted.status.map(|s| s.token).context("the API server minted no token")
}

fn query_string(q: &MapsQuery) -> String {
    let mut parts = vec![format!("program={}", q.program)];
    if !q.node.is_empty() {
        parts.push(format!("node={}", q.node));
    }
    if q.all_nodes {
        parts.push("allNodes=true".into());
    }
    if !q.map.is_empty() {
        parts.push(format!("map={}", q.map));
    }
    if q.max_entries > 0 {
        parts.push(format!("maxEntries={}", q.max_entries));
    }
    if q.timeout_ms > 0 {
        parts.push(format!("timeoutMs={}", q.timeout_ms));
    }
    parts.join("&")
}

/// One node's maps, decoded.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub node: String,
    pub revision: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub maps: Vec<MapView>,
}

/// One map, decoded.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MapView {
    pub name: String,
    #[serde(rename = "type")]
    pub map_type: String,
    pub key_type: String,
    pub value_type: String,
    pub max_entries: u32,
    /// Values per entry (CPUs) of a per-CPU map read without `--sum`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    pub entries: Vec<EntryView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub truncated: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One entry: the value, or one per CPU (`values`) for a per-CPU map without `--sum`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct EntryView {
    pub key: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
}

/// The answer made readable: keys and values decoded with each map's BTF (hex bytes
/// without, with a note saying so); per-CPU values summed field by field with `sum`.
pub fn decode(answer: &MapsAnswer, sum: bool) -> Vec<NodeView> {
    answer
        .nodes
        .iter()
        .map(|n: &NodeMaps| NodeView {
            node: n.node.clone(),
            revision: n.revision.clone(),
            error: n.error.clone(),
            maps: n.maps.iter().map(|m| decode_map(m, sum)).collect(),
        })
        .collect()
}

fn decode_map(m: &MapContents, sum: bool) -> MapView {
    let per_cpu = m.values_per_entry > 1;
    let mut view = MapView {
        name: m.name.clone(),
        map_type: m.map_type.clone(),
        key_type: format!("{} bytes", m.key_size),
        value_type: format!("{} bytes", m.value_size),
        max_entries: m.max_entries,
        cpus: (per_cpu && !sum).then_some(m.values_per_entry),
        entries: Vec::new(),
        note: String::new(),
        truncated: m.truncated.clone(),
        error: m.error.clone(),
    };
    let btf = match B64.decode(&m.btf).map_err(|e| e.to_string()).and_then(|raw| {
        if raw.is_empty() { Err(m.btf_note.clone()) } else { mapview::Btf::parse(&raw).map_err(|e| e.to_string()) }
    }) {
        Ok(btf) => {
            view.key_type = btf.type_name(m.btf_key_type_id);
            view.value_type = btf.type_name(m.btf_value_type_id);
            Some(btf)
        }
        Err(why) => {
            view.note = format!("no BTF: keys and values are shown as hex bytes ({why})");
            None
        }
    };
    let decode_one = |id: u32, b64: &str| -> Value {
        let bytes = B64.decode(b64).unwrap_or_default();
        match &btf {
            // A key type id of 0 (maps without a key, e.g. an array's index is typed) falls back to hex.
            Some(btf) if id != 0 => btf.decode(id, &bytes).unwrap_or_else(|_| Value::String(mapview::hex(&bytes))),
            _ => Value::String(mapview::hex(&bytes)),
        }
    };
    for e in &m.entries {
        let key = decode_one(m.btf_key_type_id, &e.key);
        let values: Vec<Value> = e.values.iter().map(|v| decode_one(m.btf_value_type_id, v)).collect();
        let entry = match (per_cpu, sum) {
            (true, false) => EntryView { key, value: None, values: Some(values) },
            (true, true) => EntryView { key, value: Some(sum_values(&values)), values: None },
            (false, _) => EntryView { key, value: values.into_iter().next(), values: None },
        };
        view.entries.push(entry);
    }
    view
}

/// Per-CPU values summed: numbers added (wrapping as counters do), structs field by
/// field, arrays element by element; anything else (names, strings) as the first CPU has it.
pub fn sum_values(values: &[Value]) -> Value {
    let Some(first) = values.first() else { return Value::Null };
    match first {
        // The kind of every CPU's number decides, not the first's: one negative CPU makes
        // the sum signed.
        Value::Number(_) if values.iter().all(|v| v.as_u64().is_some()) => {
            Value::from(values.iter().filter_map(Value::as_u64).fold(0u64, u64::wrapping_add))
        }
        Value::Number(_) if values.iter().all(|v| v.as_i64().is_some()) => {
            Value::from(values.iter().filter_map(Value::as_i64).fold(0i64, i64::wrapping_add))
        }
        Value::Number(_) => Value::from(values.iter().filter_map(Value::as_f64).sum::<f64>()),
        Value::Object(fields) => Value::Object(
            fields
                .keys()
                .map(|k| {
                    let column: Vec<Value> = values.iter().filter_map(|v| v.get(k).cloned()).collect();
                    (k.clone(), sum_values(&column))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            (0..items.len())
                .map(|i| {
                    let column: Vec<Value> = values.iter().filter_map(|v| v.get(i).cloned()).collect();
                    sum_values(&column)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The views as text: a heading per node and map, then a KEY / VALUE table.
pub fn table(views: &[NodeView]) -> String {
    let mut out = String::new();
    for n in views {
        out.push_str(&format!(
            "NODE {}   REVISION {}\n",
            n.node,
            if n.revision.is_empty() { "-" } else { &n.revision }
        ));
        if !n.error.is_empty() {
            out.push_str(&format!("  error: {}\n", n.error));
        }
        for m in &n.maps {
            out.push_str(&format!(
                "MAP {} ({}, key {}, value {}, {} of at most {} entries)\n",
                m.name,
                m.map_type,
                m.key_type,
                m.value_type,
                m.entries.len(),
                m.max_entries
            ));
            for line in [&m.error, &m.note, &m.truncated].into_iter().filter(|s| !s.is_empty()) {
                out.push_str(&format!("  {line}\n"));
            }
            if m.entries.is_empty() {
                continue;
            }
            let header = if m.cpus.is_some() { "VALUES (PER CPU)" } else { "VALUE" };
            let rows: Vec<Vec<String>> = m
                .entries
                .iter()
                .map(|e| {
                    let value = e.value.as_ref().map_or_else(
                        || e.values.as_ref().map(|v| compact(&Value::Array(v.clone()))).unwrap_or_default(),
                        compact,
                    );
                    vec![compact(&e.key), value]
                })
                .collect();
            out.push_str(&crate::table::render(&["KEY", header], &rows));
        }
    }
    out
}

/// A value on one line: strings without quotes, the rest as compact JSON.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn per_cpu_values_sum_field_by_field() {
        let cpus = [
            json!({"packets": 3, "bytes": 100, "proto": "TCP", "hist": [1, 2]}),
            json!({"packets": 4, "bytes": 50, "proto": "TCP", "hist": [0, 5]}),
        ];
        assert_eq!(sum_values(&cpus), json!({"packets": 7, "bytes": 150, "proto": "TCP", "hist": [1, 7]}));
        assert_eq!(sum_values(&[json!(u64::MAX), json!(2)]), json!(1), "counters wrap");
        assert_eq!(sum_values(&[json!(5), json!(-7)]), json!(-2), "a negative CPU makes the sum signed");
        assert_eq!(sum_values(&[]), Value::Null);
    }

    fn contents(values_per_entry: u32, entries: Vec<(Vec<u8>, Vec<Vec<u8>>)>) -> MapContents {
        MapContents {
            name: "counts".into(),
            map_type: "PerCpuArray".into(),
            key_size: 4,
            value_size: 8,
            max_entries: 2,
            values_per_entry,
            btf_note: "the map was created without BTF for its key and value".into(),
            entries: entries
                .into_iter()
                .map(|(k, vs)| mapread::RawEntry {
                    key: B64.encode(k),
                    values: vs.into_iter().map(|v| B64.encode(v)).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_map_without_btf_prints_hex_with_a_note() {
        let m = contents(2, vec![(vec![1, 0, 0, 0], vec![vec![5, 0, 0, 0, 0, 0, 0, 0], vec![6, 0, 0, 0, 0, 0, 0, 0]])]);
        let answer = MapsAnswer {
            program: "p".into(),
            nodes: vec![NodeMaps { node: "n1".into(), revision: "r1".into(), maps: vec![m], ..Default::default() }],
        };
        let views = decode(&answer, false);
        let map = &views[0].maps[0];
        assert!(
            map.note.starts_with("no BTF: keys and values are shown as hex bytes (the map was created without BTF"),
            "{}",
            map.note
        );
        assert_eq!(map.entries[0].key, json!("01 00 00 00"));
        assert_eq!(map.entries[0].values.as_ref().unwrap().len(), 2);
        assert_eq!(map.cpus, Some(2));
        let text = table(&views);
        assert!(
            text.contains("MAP counts (PerCpuArray, key 4 bytes, value 8 bytes, 1 of at most 2 entries)"),
            "{text}"
        );
        assert!(text.contains("VALUES (PER CPU)"), "{text}");
    }

    #[test]
    fn the_query_string_names_only_what_was_asked() {
        let q = MapsQuery { program: "p".into(), all_nodes: true, map: "m".into(), ..Default::default() };
        assert_eq!(query_string(&q), "program=p&allNodes=true&map=m");
    }
}
