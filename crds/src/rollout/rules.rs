//! The rules of `spec.rollout` in Rust: what the CRD's schema and CEL rules
//! ([`super::cel`]) refuse, refused again where no API server looked (the operator's
//! InvalidSpec backstop, the standalone agent), with the field and what to fix.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cel::{self, MAX_NODE_COUNT};
use super::{MapPolicy, RolloutSpec};

/// Most digits of a pause duration (`9999999h` is over a thousand years: no overflow
/// wherever it is added to a time).
pub const MAX_DURATION_DIGITS: usize = 7;

/// A node count as written in `steps[].nodes` and `maxInFlight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    /// 0..=[`MAX_NODE_COUNT`].
    Count(u32),
    /// 0..=100.
    Percent(u32),
}

impl Amount {
    /// `3`, `"3"` or `"25%"`: a count from 0 to [`MAX_NODE_COUNT`] (as a string, 1 to
    /// [`cel::COUNT_DIGITS`] digits) or a percentage from 0 to 100 (1 to
    /// [`cel::PERCENT_DIGITS`] digits, then `%`). The CRD's rule ([`cel::amount_within`])
    /// accepts exactly these.
    pub fn parse(v: &IntOrString) -> Result<Amount, String> {
        let count = |n: u64, shown: &str| match u32::try_from(n) {
            Ok(n) if n <= MAX_NODE_COUNT => Ok(Amount::Count(n)),
            _ => Err(format!("{shown} is more than {MAX_NODE_COUNT} nodes")),
        };
        let digits = |d: &str, most: usize| (1..=most).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit());
        match v {
            IntOrString::Int(n) if *n < 0 => Err(format!("{n} is negative")),
            IntOrString::Int(n) => count(*n as u64, &n.to_string()),
            IntOrString::String(s) => match s.strip_suffix('%') {
                Some(p) => match p.parse::<u32>() {
                    Ok(n) if digits(p, cel::PERCENT_DIGITS) && n <= 100 => Ok(Amount::Percent(n)),
                    _ => Err(format!("{s:?} is not a percentage from 0% to 100%")),
                },
                None if digits(s, cel::COUNT_DIGITS) => count(s.parse().unwrap_or(u64::MAX), &format!("{s:?}")),
                None => Err(format!("{s:?} is neither a node count nor a percentage such as \"25%\"")),
            },
        }
    }

    /// Nodes out of `total`: percentages rounded up (a step of 1% of 5 nodes is 1
    /// node), capped at `total`.
    pub fn of_up(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => (n as usize).min(total),
            Amount::Percent(p) => (total * p as usize).div_ceil(100).min(total),
        }
    }

    /// Nodes out of `total`: percentages rounded down, at least 1.
    pub fn of_down_at_least_one(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => (n as usize).max(1),
            Amount::Percent(p) => (total * p as usize / 100).max(1),
        }
    }

    fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(0))
    }
}

/// A pause duration: `30s`, `2m`, `1h`; at most [`MAX_DURATION_DIGITS`] digits.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 30s, 2m or 1h (at most {MAX_DURATION_DIGITS} digits)");
    // The unit is one ASCII byte; a multi-byte last character is no unit (and no place
    // to split: found by fuzzing, `split_at` panicked on "Λ").
    let at = s.len().checked_sub(1).filter(|&i| s.is_char_boundary(i)).ok_or_else(bad)?;
    let (n, unit) = s.split_at(at);
    if n.is_empty() || n.len() > MAX_DURATION_DIGITS || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// What to write instead of a bad `steps[].nodes` or `maxInFlight`.
const AMOUNT_FORMS: &str = "give a node count from 0 to 100000 (3 or \"3\") or a percentage from \"0%\" to \"100%\"";

/// Every rule of `spec.rollout` (the CRD's schema and CEL rules say the same, so the
/// operator's backstop and the API server agree). Each error is (field path below
/// `spec`, what to fix).
pub fn validate(r: &RolloutSpec) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let (mut last_count, mut last_percent) = (None, None);
    for (i, step) in r.steps.iter().enumerate() {
        let field = format!("rollout.steps[{i}].nodes");
        match Amount::parse(&step.nodes) {
            Ok(a) => {
                let (last, n, unit) = match a {
                    Amount::Count(n) => (&mut last_count, n, ""),
                    Amount::Percent(n) => (&mut last_percent, n, "%"),
                };
                if let Some(before) = last.filter(|before| n < *before) {
                    errs.push((
                        field,
                        format!(
                            "steps must not shrink: {n}{unit} is below an earlier step's {before}{unit}; each step's \
                             nodes must be at least the nodes of every earlier step written the same way"
                        ),
                    ));
                }
                *last = Some(n.max(last.unwrap_or(0)));
            }
            Err(e) => errs.push((field, format!("{e}: {AMOUNT_FORMS}"))),
        }
        if let Some(d) = step.pause.as_ref().and_then(|p| p.duration.as_deref())
            && let Err(e) = parse_duration(d)
        {
            errs.push((format!("rollout.steps[{i}].pause.duration"), e));
        }
    }
    if r.steps.len() > MAX_STEPS {
        errs.push(("rollout.steps".into(), format!("at most {MAX_STEPS} steps are allowed, got {}", r.steps.len())));
    }
    if let Some(m) = &r.max_in_flight {
        match Amount::parse(m) {
            Ok(a) if a.is_zero() => {
                errs.push(("rollout.maxInFlight".into(), "must allow at least one node (1 or more, or 1%-100%)".into()))
            }
            Ok(_) => {}
            Err(e) => errs.push((
                "rollout.maxInFlight".into(),
                format!("{e}: give a node count from 1 to 100000 or a percentage from \"1%\" to \"100%\""),
            )),
        }
    }
    within(&mut errs, "rollout.failureThreshold", r.failure_threshold, 0, MAX_FAILURE_THRESHOLD);
    if let Some(s) = r.progress_deadline_seconds {
        within(&mut errs, "rollout.progressDeadlineSeconds", s, 1, MAX_PROGRESS_DEADLINE_SECONDS);
    }
    if let Some(resume) = &r.resume {
        if resume.revision.len() != 16
            || !resume.revision.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            errs.push((
                "rollout.resume.revision".into(),
                format!(
                    "{:?} must be a revision: 16 lowercase hex characters, as in status.rollout.updateRevision",
                    resume.revision
                ),
            ));
        }
        let last = r.steps.len() as i32 + 1;
        if !(1..=last).contains(&resume.step) {
            errs.push((
                "rollout.resume.step".into(),
                format!(
                    "must be 1-{last} (the number of steps + 1, for the implicit last step of 100%), got {}",
                    resume.step
                ),
            ));
        }
    }
    if let Some(h) = &r.health {
        errs.extend(crate::health::validate(h));
    }
    errs
}

/// Largest `spec.revisionHistoryLimit`.
pub const MAX_REVISION_HISTORY_LIMIT: i32 = 100;
/// Most `spec.maps` policies.
pub const MAX_MAP_POLICIES: usize = 64;

/// The other settings a rollout reads, `spec.revisionHistoryLimit` and `spec.maps`, as
/// the CRD's schema says them.
pub fn validate_history(limit: Option<i32>, maps: &[MapPolicy]) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if let Some(limit) = limit {
        within(&mut errs, "revisionHistoryLimit", limit, 0, MAX_REVISION_HISTORY_LIMIT);
    }
    if maps.len() > MAX_MAP_POLICIES {
        errs.push(("maps".into(), format!("at most {MAX_MAP_POLICIES} map policies are allowed, got {}", maps.len())));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, m) in maps.iter().enumerate() {
        map_name(&mut errs, &format!("maps[{i}].name"), &m.name);
        if !seen.insert(m.name.as_str()) {
            errs.push((format!("maps[{i}].name"), format!("map {:?} has a policy already", m.name)));
        }
        if let Some(from) = &m.from {
            map_name(&mut errs, &format!("maps[{i}].from.map"), &from.map);
            if m.on_upgrade == super::MapUpgrade::Recreate {
                errs.push((
                    format!("maps[{i}].onUpgrade"),
                    "a map used from another program is that program's to recreate: leave onUpgrade out with from"
                        .into(),
                ));
            }
        }
    }
    errs
}

/// A map's name in the ELF object, as `spec.maps[].name` and the health checks' `map`
/// take it.
pub(crate) fn map_name(errs: &mut Vec<(String, String)>, field: &str, name: &str) {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !ok {
        errs.push((
            field.into(),
            format!("{name:?} must be a map name of the ELF object (a C identifier, '.' allowed)"),
        ));
    }
}

/// Most steps in a rollout.
pub const MAX_STEPS: usize = 16;
/// Largest `failureThreshold`.
pub const MAX_FAILURE_THRESHOLD: i32 = 100_000;
/// Largest `progressDeadlineSeconds` (a day).
pub const MAX_PROGRESS_DEADLINE_SECONDS: i32 = 86_400;

/// Pushes "must be min-max, got v" for `field` when `v` is out of range.
pub(crate) fn within<T: PartialOrd + std::fmt::Display>(
    errs: &mut Vec<(String, String)>,
    field: &str,
    v: T,
    min: T,
    max: T,
) {
    if v < min || v > max {
        errs.push((field.to_string(), format!("must be {min}-{max}, got {v}")));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Pause, RolloutStep};
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn amounts_parse_and_round() {
        assert_eq!(Amount::parse(&IntOrString::Int(3)), Ok(Amount::Count(3)));
        assert_eq!(Amount::parse(&s("3")), Ok(Amount::Count(3)));
        assert_eq!(Amount::parse(&s("25%")), Ok(Amount::Percent(25)));
        assert_eq!(Amount::parse(&s("007%")), Ok(Amount::Percent(7)), "leading zeros, within 3 digits");
        assert_eq!(Amount::parse(&s("100000")), Ok(Amount::Count(100_000)));
        assert_eq!(Amount::parse(&IntOrString::Int(100_000)), Ok(Amount::Count(100_000)));
        for bad in ["", "%", "x", "101%", "-1", "2.5%", "+5", "+5%", " 5", "5 ", "0100%", "5%%", "100001", "0000001"] {
            assert!(Amount::parse(&s(bad)).is_err(), "{bad}");
        }
        assert_eq!(Amount::parse(&IntOrString::Int(-1)), Err("-1 is negative".into()));
        assert_eq!(Amount::parse(&IntOrString::Int(100_001)), Err("100001 is more than 100000 nodes".into()));
        assert_eq!(Amount::Percent(1).of_up(5), 1, "a canary of 1% of a small fleet is one node");
        assert_eq!(Amount::Percent(25).of_up(5), 2);
        assert_eq!(Amount::Percent(0).of_up(5), 0);
        assert_eq!(Amount::Count(9).of_up(5), 5);
        assert_eq!(Amount::Percent(10).of_down_at_least_one(5), 1);
        assert_eq!(Amount::Percent(50).of_down_at_least_one(5), 2);
        assert_eq!(Amount::Count(0).of_down_at_least_one(5), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_duration("9999999h").unwrap().as_secs(), 9_999_999 * 3600);
        for bad in ["", "s", "1d", "m2", "1.5m", "Λ", "1Λ", "é", "+5s", "-5s", "12345678s", "99999999999999999999h"]
        {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rollout_specs_are_checked_with_the_field_to_fix() {
        let step = |n: IntOrString, d: Option<&str>| RolloutStep {
            nodes: n,
            pause: d.map(|d| Pause { duration: Some(d.into()) }),
        };
        let ok = RolloutSpec {
            steps: vec![step(IntOrString::Int(1), Some("2m")), step(s("25%"), None), step(s("100%"), None)],
            max_in_flight: Some(s("10%")),
            ..Default::default()
        };
        assert!(validate(&ok).is_empty());
        let bad = RolloutSpec {
            steps: vec![step(s("50%"), Some("2d")), step(s("25%"), None), step(s("x"), None)],
            max_in_flight: Some(IntOrString::Int(0)),
            ..Default::default()
        };
        let fields: Vec<String> = validate(&bad).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "rollout.steps[0].pause.duration",
                "rollout.steps[1].nodes",
                "rollout.steps[2].nodes",
                "rollout.maxInFlight"
            ]
        );
    }

    #[test]
    fn steps_do_not_shrink_within_a_form() {
        let steps = |nodes: &[IntOrString]| RolloutSpec {
            steps: nodes.iter().map(|n| RolloutStep { nodes: n.clone(), pause: None }).collect(),
            ..Default::default()
        };
        let fields = |r: &RolloutSpec| validate(r).into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        let i = IntOrString::Int;
        assert!(fields(&steps(&[i(1), s("3"), s("5%"), i(3), s("5%"), s("100%")])).is_empty());
        // A count and a percentage are never compared; each is compared with every earlier
        // one of its own form, not only the step just before.
        assert!(fields(&steps(&[s("50%"), i(100), s("60%")])).is_empty());
        assert_eq!(fields(&steps(&[s("50%"), i(2), s("25%")])), ["rollout.steps[2].nodes"]);
        assert_eq!(fields(&steps(&[i(5), s("3"), i(4)])), ["rollout.steps[1].nodes", "rollout.steps[2].nodes"]);
        let (_, why) = &validate(&steps(&[s("50%"), s("25%")]))[0];
        assert!(why.starts_with("steps must not shrink: 25% is below an earlier step's 50%"), "{why}");
    }

    #[test]
    fn bounds_and_resume_are_checked() {
        let r = RolloutSpec {
            steps: vec![RolloutStep { nodes: IntOrString::Int(1), pause: None }],
            failure_threshold: -1,
            progress_deadline_seconds: Some(86_401),
            resume: Some(super::super::ResumeStep { revision: "0123456789ABCDEF".into(), step: 3 }),
            ..Default::default()
        };
        let errs = validate(&r);
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rollout.failureThreshold",
                "rollout.progressDeadlineSeconds",
                "rollout.resume.revision",
                "rollout.resume.step"
            ]
        );
        assert_eq!(errs[0].1, "must be 0-100000, got -1");
        assert_eq!(errs[3].1, "must be 1-2 (the number of steps + 1, for the implicit last step of 100%), got 3");
        let ok = RolloutSpec {
            resume: Some(super::super::ResumeStep { revision: "0123456789abcdef".into(), step: 1 }),
            ..Default::default()
        };
        assert!(validate(&ok).is_empty(), "no steps: one implicit step, which resume may name");
    }

    #[test]
    fn history_settings_are_checked() {
        let policy = |name: &str| MapPolicy { name: name.into(), on_upgrade: Default::default(), from: None };
        assert!(validate_history(Some(100), &[policy("counters"), policy("_x.bss")]).is_empty());
        let fields: Vec<String> = validate_history(Some(101), &[policy("counters"), policy("1x"), policy("counters")])
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["revisionHistoryLimit", "maps[1].name", "maps[2].name"]);
        assert_eq!(validate_history(None, &vec![policy("m"); 65])[0].1, "at most 64 map policies are allowed, got 65");
    }
}
