//! `spec.rollout.health`: what makes a node that runs the new revision count as updated.
//!
//! Without it a node counts as soon as its agent reports every link attached. With it,
//! the node must also stay healthy for `minReadySeconds`, and, when asked, each program
//! must have run (its kernel run count rises) and each map check must hold over that
//! window. A Prometheus query may gate each step boundary. A gate that fails counts the
//! node (or the step) as failed, exactly like a failed apply: the rollout halts or rolls
//! back by `onFailure`, and the message names the gate and the value it saw.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod rules;

pub use rules::{check_address, validate};

/// Longest `minReadySeconds`.
pub const MAX_MIN_READY_SECONDS: i32 = 3600;
/// Window a `mustRun` gate gives programs to run when `minReadySeconds` is shorter.
pub const MIN_MUST_RUN_WINDOW_SECONDS: i32 = 10;
/// Most map checks in one health spec (each is one map read per probe).
pub const MAX_MAP_CHECKS: usize = 16;
/// Largest `maps[].key` and `divideBy.key`: keys are 4 or 8 bytes, and a 4-byte key
/// must fit.
pub const MAX_MAP_KEY: u64 = u32::MAX as u64;
/// Longest `prometheus.address`.
pub const MAX_ADDRESS_LEN: usize = 512;
/// Longest `prometheus.query`.
pub const MAX_QUERY_LEN: usize = 4096;
/// Most `prometheus.count` measurements, and so most `failureLimit`.
pub const MAX_MEASUREMENTS: i32 = 100;
/// Longest `prometheus.intervalSeconds`.
pub const MAX_INTERVAL_SECONDS: i32 = 3600;

/// `prometheus.address` as the CRD's rule reads it: `http(s)://host[:port][/path]`, the
/// host a DNS name, an IPv4 address or a bracketed IPv6 address, the port 1-65535.
/// (Backslashes doubled: this is a CEL string.)
const ADDRESS_RULE: &str = concat!(
    r#"self.matches("^https?://("#,
    r#"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?([.][A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"#,
    r#"|\\[[0-9A-Fa-f:.]+\\])"#,
    r#"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"#,
    r#"(/[-A-Za-z0-9._~!$&'()*+,;=:@%/]*)?$")"#
);
/// What a bad `prometheus.address` is told.
const ADDRESS_FORM: &str = "prometheus.address must be http(s)://host[:port][/path], e.g. http://prometheus.monitoring:9090 (no user, query or fragment)";

/// Health gates of a rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// Seconds a node must run the new revision healthy (every link attached, every map
    /// check holding) before it counts as updated and the rollout moves on. Default: 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i32,
    /// True: each program must also have run, i.e. its kernel run count rose, within
    /// `minReadySeconds` (at least 10 seconds) of the node switching; a program attached to
    /// a hook that never fires fails the node with a `ProgramDidNotRun` gate failure. The
    /// agent switches the kernel's run counting (`kernel.bpf_stats_enabled`) on while a
    /// gate needs it and restores the value it found after.
    #[serde(default)]
    pub must_run: bool,
    /// Checks on the program's own maps, read by the agent every few seconds while the
    /// node's gate window runs; each must hold at every reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub maps: Vec<MapCheck>,
    /// A Prometheus query that must return a value within bounds at the end of each step
    /// (once the step's nodes all count as updated), before its pause or the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusGate>,
}

/// A bound on a map value, or on the ratio of two map values.
///
/// Values are unsigned integers: the first 8 bytes of the entry (fewer for a smaller
/// value), little-endian, summed over CPUs for a per-CPU map. For example, with a
/// program that counts packets at key 0 and drops at key 1 of its `counters` map,
/// "drops at most 1 % of packets" is `{map: counters, key: 1, divideBy: {key: 0}, max: 0.01}`.
/// Counters are read as they stand: a map kept across upgrades (`maps[].onUpgrade: Keep`)
/// carries the earlier revision's counts; give a gated counter map `onUpgrade: Recreate`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MapCheck {
    /// The map's name in the ELF object.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$"))]
    pub map: String,
    /// The key: an unsigned integer written in the map's key size (4 or 8 bytes,
    /// little-endian), i.e. an array map's index.
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub key: u64,
    /// Divide the value by the value at this entry: the check bounds a ratio. A zero
    /// divisor makes the ratio 0 when the value is 0 too, and fails the check otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divide_by: Option<MapEntry>,
    /// The value (or ratio) must stay at most this.
    #[schemars(range(min = 0))]
    pub max: f64,
}

/// An entry of one of the program's maps.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MapEntry {
    /// The map's name in the ELF object. Default: the check's map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]*$"))]
    pub map: Option<String>,
    /// As `maps[].key`.
    #[schemars(range(min = 0, max = 4294967295u64))]
    pub key: u64,
}

/// A Prometheus query whose value must stay within bounds (after Argo Rollouts' analysis:
/// `count` measurements `intervalSeconds` apart, at most `failureLimit` of them failing).
/// At least one of `min` and `max` is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.min) || has(self.max)").message("prometheus needs min, max or both: the bounds the query's value must stay within"))]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("prometheus.min must be at most prometheus.max"))]
#[x_kube(validation = Rule::new("!has(self.failureLimit) || (has(self.count) && self.count < 1) || self.failureLimit < (has(self.count) ? self.count : 1)").message("prometheus.failureLimit must be below prometheus.count (default 1): with as many failures allowed as measurements taken, the gate could never fail"))]
pub struct PrometheusGate {
    /// Base URL of the Prometheus HTTP API, `http(s)://host[:port][/path]`, e.g.
    /// `http://prometheus.monitoring:9090`. The operator queries only addresses its
    /// `--prometheus-address` flag (chart value `rollout.prometheusAddresses`) allows; any
    /// other is refused as an invalid spec.
    #[schemars(length(min = 8, max = 512))]
    #[x_kube(validation = Rule::new(ADDRESS_RULE).message(ADDRESS_FORM))]
    pub address: String,
    /// PromQL evaluated at each measurement; it must return one value (a scalar, or a
    /// vector of exactly one sample).
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The value must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The value must be at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Measurements per step boundary. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub count: Option<i32>,
    /// Seconds between measurements. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: Option<i32>,
    /// Measurements that may fail (out of bounds, no value, Prometheus unreachable) before
    /// the gate fails; below `count`. Default: 0.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub failure_limit: i32,
}

impl HealthSpec {
    /// Whether a node must be probed (its programs' runs or maps read) before it counts.
    pub fn probes(&self) -> bool {
        self.must_run || !self.maps.is_empty()
    }

    /// How long a node's gate window lasts.
    pub fn window_seconds(&self) -> i32 {
        if self.must_run { self.min_ready_seconds.max(MIN_MUST_RUN_WINDOW_SECONDS) } else { self.min_ready_seconds }
    }
}

impl PrometheusGate {
    pub fn count(&self) -> u32 {
        self.count.unwrap_or(1).max(1) as u32
    }

    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.interval_seconds.unwrap_or(10).max(1) as u64)
    }

    /// Whether `v` is within the bounds; `None` says which bound it broke.
    pub fn within(&self, v: f64) -> Result<(), String> {
        if v.is_nan() {
            return Err("the query returned NaN".into());
        }
        if let Some(min) = self.min
            && v < min
        {
            return Err(format!("{v} is below the minimum {min}"));
        }
        if let Some(max) = self.max
            && v > max
        {
            return Err(format!("{v} is above the maximum {max}"));
        }
        Ok(())
    }
}

impl MapCheck {
    /// The value (or ratio) read, against `max`. `value` and `divisor` as read.
    pub fn judge(&self, value: u64, divisor: Option<u64>) -> Result<f64, String> {
        let v = match (self.divide_by.as_ref(), divisor) {
            (None, _) => value as f64,
            (Some(_), Some(0)) if value == 0 => 0.0,
            (Some(d), Some(0)) => {
                return Err(format!(
                    "{}[{}] is {value} while its divisor {}[{}] is 0",
                    self.map,
                    self.key,
                    d.map.as_deref().unwrap_or(&self.map),
                    d.key
                ));
            }
            (Some(_), Some(d)) => value as f64 / d as f64,
            (Some(_), None) => return Err("the divisor was not read".into()),
        };
        if v > self.max { Err(format!("{} is above the maximum {}", self.describe(v), self.max)) } else { Ok(v) }
    }

    /// "counters[1] = 12" or "counters[1] / counters[0] = 0.5".
    pub fn describe(&self, v: f64) -> String {
        match &self.divide_by {
            None => format!("{}[{}] = {v}", self.map, self.key),
            Some(d) => {
                format!("{}[{}] / {}[{}] = {v}", self.map, self.key, d.map.as_deref().unwrap_or(&self.map), d.key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(max: f64) -> MapCheck {
        MapCheck { map: "counters".into(), key: 1, divide_by: Some(MapEntry { map: None, key: 0 }), max }
    }

    #[test]
    fn map_checks_bound_values_and_ratios() {
        let plain = MapCheck { map: "drops".into(), key: 0, divide_by: None, max: 10.0 };
        assert_eq!(plain.judge(10, None), Ok(10.0));
        assert_eq!(plain.judge(11, None), Err("drops[0] = 11 is above the maximum 10".into()));
        assert_eq!(ratio(0.01).judge(1, Some(1000)), Ok(0.001));
        assert_eq!(
            ratio(0.01).judge(500, Some(1000)),
            Err("counters[1] / counters[0] = 0.5 is above the maximum 0.01".into())
        );
        assert_eq!(ratio(0.01).judge(0, Some(0)), Ok(0.0), "nothing seen is no drop");
        assert!(ratio(0.01).judge(3, Some(0)).unwrap_err().contains("divisor counters[0] is 0"));
    }

    #[test]
    fn prometheus_bounds() {
        let g = PrometheusGate {
            address: "http://127.0.0.1:9090".into(),
            query: "up".into(),
            min: Some(1.0),
            max: Some(2.0),
            count: None,
            interval_seconds: None,
            failure_limit: 0,
        };
        assert!(g.within(1.5).is_ok());
        assert_eq!(g.within(0.5), Err("0.5 is below the minimum 1".into()));
        assert_eq!(g.within(3.0), Err("3 is above the maximum 2".into()));
        assert!(g.within(f64::NAN).is_err());
        assert_eq!((g.count(), g.interval().as_secs()), (1, 10));
    }

    #[test]
    fn must_run_windows_are_at_least_ten_seconds() {
        let h = HealthSpec { must_run: true, ..Default::default() };
        assert_eq!(h.window_seconds(), 10);
        let h = HealthSpec { must_run: true, min_ready_seconds: 30, ..Default::default() };
        assert_eq!(h.window_seconds(), 30);
        assert_eq!(HealthSpec { min_ready_seconds: 5, ..Default::default() }.window_seconds(), 5);
        assert!(!HealthSpec { min_ready_seconds: 5, ..Default::default() }.probes());
    }
}
