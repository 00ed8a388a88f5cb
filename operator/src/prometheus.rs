//! The Prometheus gate (`spec.rollout.health.prometheus`): one instant query per
//! measurement, to an address the operator is allowed to query. A BpfProgram's author
//! picks the address, so the operator queries only the base URLs its
//! `--prometheus-address` flags name (none by default): a spec cannot make the operator
//! probe its own network. Answers are bounded (1 MiB, 10 s), redirects are not followed,
//! and only the value, or a short reason, reaches the status.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER: usize = 1 << 20;

type Http = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Queries Prometheus servers the operator is allowed to reach.
#[derive(Clone)]
pub struct Prometheus {
    http: Http,
    allowed: Arc<Vec<String>>,
}

impl Prometheus {
    /// `allowed`: base URLs (`http://prometheus.monitoring:9090`) a spec may name.
    pub fn new(allowed: Vec<String>) -> Prometheus {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        let allowed = allowed.into_iter().map(|a| a.trim_end_matches('/').to_string()).collect();
        Prometheus { http, allowed: Arc::new(allowed) }
    }

    /// Whether a spec may name `address`; the error says what to change.
    pub fn check_allowed(&self, address: &str) -> Result<(), String> {
        allowed(&self.allowed, address)
    }

    /// One measurement: the query's single value.
    pub async fn query(&self, address: &str, query: &str) -> Result<f64, String> {
        self.check_allowed(address)?;
        let url = format!("{}/api/v1/query?query={}", address.trim_end_matches('/'), encode(query));
        let uri: http::Uri = url.parse().map_err(|e| format!("{address} is not a usable URL: {e}"))?;
        let work = async {
            let resp = self.http.get(uri).await.map_err(|e| format!("cannot reach Prometheus at {address}: {e}"))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("cannot read Prometheus's answer: {e}"))?
                .to_bytes();
            if !status.is_success() && status.as_u16() != 400 && status.as_u16() != 422 {
                return Err(format!("Prometheus at {address} answered HTTP {status}"));
            }
            parse_answer(&body)
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(format!("Prometheus at {address} did not answer within {}s", TIMEOUT.as_secs())))
    }
}

fn allowed(list: &[String], address: &str) -> Result<(), String> {
    let address = address.trim_end_matches('/');
    if list.iter().any(|a| a == address) {
        return Ok(());
    }
    Err(if list.is_empty() {
        format!(
            "spec.rollout.health.prometheus.address {address} is not allowed: this operator may query no Prometheus \
             (set its --prometheus-address flag, chart value rollout.prometheusAddresses)"
        )
    } else {
        format!(
            "spec.rollout.health.prometheus.address {address} is not allowed: this operator may query only {} \
             (flag --prometheus-address, chart value rollout.prometheusAddresses)",
            list.join(", ")
        )
    })
}

/// Percent-encoding of a query parameter value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The one value of an instant query's answer: a scalar, or a vector of one sample.
pub fn parse_answer(body: &[u8]) -> Result<f64, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "Prometheus's answer is not JSON".to_string())?;
    if v["status"] != "success" {
        let why: String = v["error"].as_str().unwrap_or("no reason given").chars().take(200).collect();
        return Err(format!("the query failed: {}", crds::sanitize::for_status(&why)));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([one]) => &one["value"],
            Some([]) => return Err("the query returned no sample".into()),
            Some(many) => return Err(format!("the query returned {} samples; it must return one", many.len())),
            None => return Err("Prometheus's answer has no result".into()),
        },
        other => return Err(format!("the query returned a {}, not a scalar or a vector", other.unwrap_or("nothing"))),
    };
    let text = sample.get(1).and_then(Value::as_str).ok_or("Prometheus's sample has no value")?;
    text.parse::<f64>().map_err(|_| format!("the sample value {text:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_give_one_value_or_say_why_not() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#;
        assert_eq!(parse_answer(vector), Ok(0.25));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#;
        assert_eq!(parse_answer(scalar), Ok(3.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_answer(empty), Err("the query returned no sample".into()));
        let two =
            br#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#;
        assert!(parse_answer(two).unwrap_err().contains("2 samples"));
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(parse_answer(bad), Err("the query failed: parse error at char 3".into()));
        assert!(parse_answer(b"<html>").is_err());
        let nan = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(parse_answer(nan).unwrap().is_nan());
    }

    #[test]
    fn only_listed_addresses_are_queried() {
        let list = vec!["http://prometheus.monitoring:9090".to_string()];
        assert!(allowed(&list, "http://prometheus.monitoring:9090/").is_ok());
        let e = allowed(&list, "http://10.0.0.1:9090").unwrap_err();
        assert!(e.contains("may query only http://prometheus.monitoring:9090"), "{e}");
        assert!(allowed(&[], "http://x:1").unwrap_err().contains("--prometheus-address"));
    }

    #[test]
    fn queries_are_encoded() {
        assert_eq!(encode("sum(rate(x{a=\"b\"}[1m]))"), "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29");
    }
}
