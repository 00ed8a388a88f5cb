//! The rules of `spec.rollout.health` in Rust, as the CRD's schema and CEL rules say
//! them (`crate::rollout::validate` calls this one).

use super::{
    ADDRESS_FORM, HealthSpec, MAX_ADDRESS_LEN, MAX_INTERVAL_SECONDS, MAX_MAP_CHECKS, MAX_MAP_KEY, MAX_MEASUREMENTS,
    MAX_MIN_READY_SECONDS, MAX_QUERY_LEN, PrometheusGate,
};
use crate::rollout::{map_name, within};

/// Every rule of `spec.rollout.health`, as the CRD's schema and CEL rules say them. Each
/// error is (field path below `spec`, what to fix).
pub fn validate(h: &HealthSpec) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    within(&mut errs, "rollout.health.minReadySeconds", h.min_ready_seconds, 0, MAX_MIN_READY_SECONDS);
    if h.maps.len() > MAX_MAP_CHECKS {
        errs.push((
            "rollout.health.maps".into(),
            format!("at most {MAX_MAP_CHECKS} map checks are allowed, got {}", h.maps.len()),
        ));
    }
    for (i, m) in h.maps.iter().enumerate() {
        let at = format!("rollout.health.maps[{i}]");
        map_name(&mut errs, &format!("{at}.map"), &m.map);
        within(&mut errs, &format!("{at}.key"), m.key, 0, MAX_MAP_KEY);
        if let Some(d) = &m.divide_by {
            if let Some(name) = &d.map {
                map_name(&mut errs, &format!("{at}.divideBy.map"), name);
            }
            within(&mut errs, &format!("{at}.divideBy.key"), d.key, 0, MAX_MAP_KEY);
        }
        if m.max.is_nan() || m.max < 0.0 {
            errs.push((format!("{at}.max"), format!("must be 0 or more, got {}", m.max)));
        }
    }
    if let Some(p) = &h.prometheus {
        errs.extend(validate_prometheus(p));
    }
    errs
}

fn validate_prometheus(p: &PrometheusGate) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let at = "rollout.health.prometheus";
    if let Err(e) = check_address(&p.address) {
        errs.push((format!("{at}.address"), format!("{:?} {e}: {ADDRESS_FORM}", p.address)));
    }
    let query_len = p.query.chars().count();
    if query_len == 0 || query_len > MAX_QUERY_LEN {
        errs.push((format!("{at}.query"), format!("must be 1-{MAX_QUERY_LEN} characters of PromQL, got {query_len}")));
    }
    match (p.min, p.max) {
        (None, None) => errs.push((
            at.into(),
            "prometheus needs min, max or both: the bounds the query's value must stay within".into(),
        )),
        (Some(min), Some(max)) if min > max => {
            errs.push((format!("{at}.min"), format!("prometheus.min ({min}) must be at most prometheus.max ({max})")))
        }
        _ => {}
    }
    if let Some(count) = p.count {
        within(&mut errs, &format!("{at}.count"), count, 1, MAX_MEASUREMENTS);
    }
    if let Some(s) = p.interval_seconds {
        within(&mut errs, &format!("{at}.intervalSeconds"), s, 1, MAX_INTERVAL_SECONDS);
    }
    within(&mut errs, &format!("{at}.failureLimit"), p.failure_limit, 0, MAX_MEASUREMENTS);
    // A count out of range is reported above, and says more than this would.
    let count = p.count.unwrap_or(1);
    if count >= 1 && p.failure_limit >= count {
        errs.push((
            format!("{at}.failureLimit"),
            format!(
                "prometheus.failureLimit ({}) must be below prometheus.count ({count}): with as many failures \
                 allowed as measurements taken, the gate could never fail",
                p.failure_limit
            ),
        ));
    }
    errs
}

/// `http(s)://host[:port][/path]` as the CRD's rule (`ADDRESS_RULE`) reads it; the error
/// says what is wrong.
pub fn check_address(a: &str) -> Result<(), &'static str> {
    if a.len() > MAX_ADDRESS_LEN {
        return Err("is too long");
    }
    let rest = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .ok_or("does not start with http:// or https://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err("has a user or password (user@host): give the host only");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (inside, after) = v6.split_once(']').ok_or("has an IPv6 address without its closing ]")?;
            if inside.is_empty() || !inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
                return Err("has a bracketed host that is not an IPv6 address");
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("has something other than :port after its IPv6 address")?),
            };
            (None, port)
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(authority), None),
        },
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_some_and(|h| !h.split('.').all(label)) {
        return Err("has no host name or IP address where one belongs");
    }
    if let Some(p) = port
        && (p.is_empty()
            || p.len() > 5
            || p.starts_with('0')
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u32>().map_or(true, |n| n > 65535))
    {
        return Err("has a port that is not 1-65535");
    }
    if !path.chars().all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%/".contains(c)) {
        return Err("has a path with a character other than letters, digits and -._~!$&'()*+,;=:@%/");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{MapCheck, MapEntry};
    use super::*;

    fn ratio(max: f64) -> MapCheck {
        MapCheck { map: "counters".into(), key: 1, divide_by: Some(MapEntry { map: None, key: 0 }), max }
    }

    fn gate() -> PrometheusGate {
        PrometheusGate {
            address: "http://prometheus.monitoring:9090".into(),
            query: "up".into(),
            min: Some(1.0),
            max: None,
            count: None,
            interval_seconds: None,
            failure_limit: 0,
        }
    }

    fn fields(h: &HealthSpec) -> Vec<String> {
        validate(h).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn health_specs_are_checked_with_the_field_to_fix() {
        let good = HealthSpec {
            min_ready_seconds: 3600,
            must_run: true,
            maps: vec![ratio(0.01), MapCheck { map: "drops".into(), key: u32::MAX as u64, divide_by: None, max: 0.0 }],
            prometheus: Some(PrometheusGate { count: Some(3), failure_limit: 2, ..gate() }),
        };
        assert!(validate(&good).is_empty(), "{:?}", validate(&good));
        let bad = HealthSpec {
            min_ready_seconds: 3601,
            maps: vec![MapCheck {
                map: "1bad".into(),
                key: 1 << 32,
                divide_by: Some(MapEntry { map: Some("".into()), key: 1 << 40 }),
                max: -0.5,
            }],
            ..Default::default()
        };
        assert_eq!(
            fields(&bad),
            [
                "rollout.health.minReadySeconds",
                "rollout.health.maps[0].map",
                "rollout.health.maps[0].key",
                "rollout.health.maps[0].divideBy.map",
                "rollout.health.maps[0].divideBy.key",
                "rollout.health.maps[0].max"
            ]
        );
        let many = HealthSpec { maps: vec![ratio(1.0); MAX_MAP_CHECKS + 1], ..Default::default() };
        assert_eq!(fields(&many), ["rollout.health.maps"]);
    }

    #[test]
    fn prometheus_gates_can_fail_and_have_bounds() {
        let with = |g: PrometheusGate| fields(&HealthSpec { prometheus: Some(g), ..Default::default() });
        let p = "rollout.health.prometheus";
        assert_eq!(with(PrometheusGate { min: None, ..gate() }), [p]);
        assert_eq!(with(PrometheusGate { min: Some(2.0), max: Some(1.0), ..gate() }), [format!("{p}.min")]);
        assert!(with(PrometheusGate { min: Some(1.0), max: Some(1.0), ..gate() }).is_empty());
        assert_eq!(with(PrometheusGate { failure_limit: 1, ..gate() }), [format!("{p}.failureLimit")], "count 1");
        assert_eq!(with(PrometheusGate { count: Some(3), failure_limit: 3, ..gate() }), [format!("{p}.failureLimit")]);
        assert_eq!(with(PrometheusGate { count: Some(0), ..gate() }), [format!("{p}.count")], "only the range");
        assert_eq!(with(PrometheusGate { count: Some(101), failure_limit: 101, ..gate() }).len(), 3);
        assert_eq!(with(PrometheusGate { interval_seconds: Some(0), ..gate() }), [format!("{p}.intervalSeconds")]);
        assert_eq!(with(PrometheusGate { query: String::new(), ..gate() }), [format!("{p}.query")]);
        assert_eq!(with(PrometheusGate { query: "x".repeat(4097), ..gate() }), [format!("{p}.query")]);
        let (_, why) = &validate(&HealthSpec {
            prometheus: Some(PrometheusGate { count: Some(3), failure_limit: 3, ..gate() }),
            ..Default::default()
        })[0];
        assert!(why.contains("the gate could never fail"), "{why}");
    }

    /// Which addresses are accepted is held to the CRD's rule in tests/rollout_rules.rs;
    /// here, what each refusal says.
    #[test]
    fn prometheus_addresses() {
        for (address, why) in [
            ("prometheus:9090", "does not start with http:// or https://"),
            ("http://u:p@prometheus:9090", "has a user or password (user@host): give the host only"),
            ("http://[::1", "has an IPv6 address without its closing ]"),
            ("http://[x]", "has a bracketed host that is not an IPv6 address"),
            ("http://[::1]x", "has something other than :port after its IPv6 address"),
            ("http://prom..etheus", "has no host name or IP address where one belongs"),
            ("http://prometheus:0", "has a port that is not 1-65535"),
            ("http://prometheus/a b", "has a path with a character other than letters, digits and -._~!$&'()*+,;=:@%/"),
        ] {
            assert_eq!(check_address(address), Err(why), "{address}");
        }
        let (field, why) = &validate(&HealthSpec {
            prometheus: Some(PrometheusGate { address: "http://prometheus:65536".into(), ..gate() }),
            ..Default::default()
        })[0];
        assert_eq!(field, "rollout.health.prometheus.address");
        assert_eq!(
            why,
            "\"http://prometheus:65536\" has a port that is not 1-65535: prometheus.address must be \
             http(s)://host[:port][/path], e.g. http://prometheus.monitoring:9090 (no user, query or fragment)"
        );
    }
}
