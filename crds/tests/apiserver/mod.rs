//! What a kube-apiserver does to a custom resource on create, reduced to what our CRDs
//! use: OpenAPI v3 checks (type, required, enum, pattern, lengths, bounds, list-map
//! keys) and the CEL `x-kubernetes-validations` (evaluated by kube's CEL engine).
//! CI has no API server, so the generated schema is exercised here instead.

use serde_json::Value;

/// Validate `object` (a whole resource) against the CRD's openAPIV3Schema.
/// Returns every error as `path: message`.
pub fn admit(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    object: &Value,
) -> Result<(), Vec<String>> {
    let schema =
        serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap())
            .unwrap();
    let mut errs = Vec::new();
    openapi(&schema, object, "", &mut errs);
    // The API server runs CEL only on objects that passed the structural checks.
    if errs.is_empty()
        && let Err(cel) = kube::core::cel::Validator::new().validate(&schema, object, None)
    {
        errs.extend(cel.into_vec().into_iter().map(|e| e.to_string()));
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn openapi(s: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>".to_string() } else { path.to_string() };
    if v.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) && s.get("type").is_none() {
        return;
    }
    let ty = s.get("type").and_then(Value::as_str).unwrap_or("");
    let ok_type = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok_type {
        errs.push(format!("{at}: Invalid value: must be of type {ty}"));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        errs.push(format!(
            "{at}: Unsupported value: {v}: supported values: {}",
            allowed.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    match v {
        Value::String(st) => {
            let n = st.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && n > max
            {
                errs.push(format!("{at}: Too long: may not be more than {max} characters"));
            }
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && n < min
            {
                errs.push(format!("{at}: Invalid value: should be at least {min} chars long"));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str)
                && !regex::Regex::new(p).unwrap().is_match(st)
            {
                errs.push(format!("{at}: Invalid value: {st:?}: should match '{p}'"));
            }
        }
        Value::Number(n) => {
            if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), n.as_f64())
                && x < min
            {
                errs.push(format!("{at}: Invalid value: should be greater than or equal to {min}"));
            }
            if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), n.as_f64())
                && x > max
            {
                errs.push(format!("{at}: Invalid value: should be less than or equal to {max}"));
            }
        }
        Value::Array(items) => {
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errs.push(format!("{at}: Too many: {}: must have at most {max} items", items.len()));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(format!("{at}: Invalid value: {}: should have at least {min} items", items.len()));
            }
            if let Some(keys) = s.get("x-kubernetes-list-map-keys").and_then(Value::as_array) {
                let mut seen = std::collections::BTreeSet::new();
                for (i, it) in items.iter().enumerate() {
                    let key: Vec<String> = keys
                        .iter()
                        .map(|k| it.get(k.as_str().unwrap()).map(|x| x.to_string()).unwrap_or_default())
                        .collect();
                    if !seen.insert(key.clone()) {
                        errs.push(format!("{at}[{i}]: Duplicate value: {}", key.join(",")));
                    }
                }
            }
            if let Some(is) = s.get("items") {
                for (i, it) in items.iter().enumerate() {
                    openapi(is, it, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(map) => {
            for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !map.contains_key(r.as_str().unwrap()) {
                    errs.push(format!("{}: Required value", join(path, r.as_str().unwrap())));
                }
            }
            if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
                && map.len() as u64 > max
            {
                errs.push(format!("{at}: Too many: {}: must have at most {max} items", map.len()));
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, child) in map {
                let sub = join(path, k);
                match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(cs), _) => openapi(cs, child, &sub, errs),
                    (None, Some(ap)) if ap.is_object() => openapi(ap, child, &sub, errs),
                    // Unknown fields are pruned by the API server (and rejected by
                    // `kubectl apply --validate=strict`); report them so tests see typos.
                    (None, _) if path.is_empty() && (k == "apiVersion" || k == "kind" || k == "metadata") => {}
                    (None, _) => errs.push(format!("{sub}: unknown field")),
                }
            }
        }
        _ => {}
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() { k.to_string() } else { format!("{path}.{k}") }
}
