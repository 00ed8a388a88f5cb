//! Where a BpfProgram's bytes come from. `inline` and `configMap` are resolved here and
//! sent to the agents; `path` is passed through (the operator never reads node files).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crds::BpfProgramSpec;
use crds::limits::MAX_BYTECODE_BYTES;
use crds::revision::{BytecodeIdentity, Revision};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use crate::status::SpecProblem;

/// The bytecode as the Apply carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Shared, not copied, by the per-node requests.
    Elf(bytes::Bytes),
    Path(String),
}

impl Payload {
    pub fn revision(&self, spec: &BpfProgramSpec) -> Revision {
        match self {
            Payload::Elf(b) => Revision::compute(spec, BytecodeIdentity::Bytes(b)),
            Payload::Path(p) => Revision::compute(spec, BytecodeIdentity::Path(p)),
        }
    }

    pub fn to_wire(&self) -> proto::v1::apply_request::Bytecode {
        match self {
            Payload::Elf(b) => proto::v1::apply_request::Bytecode::Elf(b.clone()),
            Payload::Path(p) => proto::v1::apply_request::Bytecode::Path(p.clone()),
        }
    }
}

fn problem(reason: &str, message: String) -> SpecProblem {
    SpecProblem { reason: reason.into(), message }
}

fn check_size(bytes: Vec<u8>, what: &str) -> Result<bytes::Bytes, SpecProblem> {
    if bytes.len() > MAX_BYTECODE_BYTES {
        return Err(problem(
            "BytecodeTooLarge",
            format!("{what} is {} bytes; the limit is {MAX_BYTECODE_BYTES}", bytes.len()),
        ));
    }
    Ok(bytes::Bytes::from(bytes))
}

pub async fn resolve(client: &Client, spec: &BpfProgramSpec) -> Result<Payload, SpecProblem> {
    let src = &spec.bytecode;
    if let Some(b64) = &src.inline {
        let bytes = B64
            .decode(b64.trim())
            .map_err(|e| problem("InvalidSpec", format!("bytecode.inline is not valid base64: {e}")))?;
        return check_size(bytes, "bytecode.inline").map(Payload::Elf);
    }
    if let Some(path) = &src.path {
        return Ok(Payload::Path(path.clone()));
    }
    let Some(cm) = &src.config_map else {
        return Err(problem("InvalidSpec", "bytecode must set exactly one of inline, configMap or path".into()));
    };
    let at = format!("ConfigMap {}/{}", cm.namespace, cm.name);
    let found = Api::<ConfigMap>::namespaced(client.clone(), &cm.namespace)
        .get_opt(&cm.name)
        .await
        .map_err(|e| problem("BytecodeUnavailable", format!("cannot read {at}: {e}")))?
        .ok_or_else(|| problem("BytecodeUnavailable", format!("{at} does not exist")))?;
    from_config_map(&found, &cm.key, &at)
}

/// The object stored under `key`: `binaryData` (raw) or `data` (base64 text).
pub fn from_config_map(cm: &ConfigMap, key: &str, at: &str) -> Result<Payload, SpecProblem> {
    if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(key)) {
        return check_size(b.0.clone(), &format!("{at} key {key}")).map(Payload::Elf);
    }
    if let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) {
        let bytes = B64.decode(text.trim()).map_err(|e| {
            problem(
                "BytecodeUnavailable",
                format!(
                    "{at} key {key} is in data but is not base64 ({e}); store objects with --from-file (binaryData)"
                ),
            )
        })?;
        return check_size(bytes, &format!("{at} key {key}")).map(Payload::Elf);
    }
    let mut keys: Vec<&String> = cm.binary_data.iter().flatten().map(|(k, _)| k).collect();
    keys.extend(cm.data.iter().flatten().map(|(k, _)| k));
    let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
    Err(problem(
        "BytecodeUnavailable",
        format!("{at} has no key {key}; it has: {}", if keys.is_empty() { "(none)".into() } else { keys.join(", ") }),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn config_map_keys() {
        let cm = ConfigMap {
            binary_data: Some(BTreeMap::from([("a.o".to_string(), ByteString(vec![1, 2, 3]))])),
            data: Some(BTreeMap::from([
                ("b.o".to_string(), "BAUG".to_string()),
                ("c.o".to_string(), "%%".to_string()),
            ])),
            ..Default::default()
        };
        assert_eq!(from_config_map(&cm, "a.o", "cm").unwrap(), Payload::Elf(vec![1, 2, 3].into()));
        assert_eq!(from_config_map(&cm, "b.o", "cm").unwrap(), Payload::Elf(vec![4, 5, 6].into()));
        let e = from_config_map(&cm, "c.o", "cm").unwrap_err();
        assert!(e.message.contains("not base64"), "{}", e.message);
        let e = from_config_map(&cm, "x.o", "ConfigMap ns/cm").unwrap_err();
        assert_eq!(e.message, "ConfigMap ns/cm has no key x.o; it has: a.o, b.o, c.o");
        let big = ConfigMap {
            binary_data: Some(BTreeMap::from([("a.o".to_string(), ByteString(vec![0; MAX_BYTECODE_BYTES + 1]))])),
            ..Default::default()
        };
        assert_eq!(from_config_map(&big, "a.o", "cm").unwrap_err().reason, "BytecodeTooLarge");
    }
}
