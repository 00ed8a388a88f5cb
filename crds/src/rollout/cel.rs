//! The CEL text of the rules on `spec.rollout`'s node amounts (`steps[].nodes`,
//! `maxInFlight`), built here so that every rule reads an amount the same way.
//!
//! Why they read as they do: the API server estimates a rule's cost before it accepts a
//! CRD, and it sizes an int-or-string value at the largest request it takes (3 MiB),
//! whatever `maxLength` says. Every function that may walk the value (`matches`,
//! `endsWith`, `substring`, `replace`, and `string()` itself, which may be converting
//! bytes) is then costed at about 315,000 per call, and a rule under `steps` (16 items)
//! at 16 times that, against the 10,000,000 one rule may cost. So each rule converts an
//! amount with `string()` once (an integer becomes its decimal digits, so both forms are
//! read alike), binds the result with a one-item `all` (CEL of Kubernetes 1.25 has no
//! variables), and reads it only with constant-cost operations: `size()`, `charAt()`,
//! `in` a list of literals, and `int()` of what is known to be digits. `type()` is not
//! used: the CEL engine the tests admit manifests with (kube's) lacks it.

/// Largest node count `steps[].nodes` and `maxInFlight` take (more than any cluster has).
pub const MAX_NODE_COUNT: u32 = 100_000;
/// Most digits of a node count written as a string (`"100000"`).
pub const COUNT_DIGITS: usize = 6;
/// Most digits of a percentage before its `%` (`"100%"`, or `"007%"`).
pub const PERCENT_DIGITS: usize = 3;

const DIGIT: &str = "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']";

/// `x` (a CEL string expression) has, before its last `tail` characters, only digits;
/// `x` is known to have at most `positions + tail` characters. Unrolled, one term per
/// position: a comprehension would do too, but kube's cost check counts any as 1000 turns.
fn digits_but_last(x: &str, positions: usize, tail: usize) -> String {
    let end = if tail == 0 { format!("size({x})") } else { format!("size({x}) - {tail}") };
    let terms: Vec<String> = (0..positions).map(|i| format!("({end} <= {i} || {x}.charAt({i}) in {DIGIT})")).collect();
    terms.join(" && ")
}

/// `x` is a node count: 1 to [`COUNT_DIGITS`] digits.
pub fn is_count(x: &str) -> String {
    format!("size({x}) >= 1 && size({x}) <= {COUNT_DIGITS} && {}", digits_but_last(x, COUNT_DIGITS, 0))
}

/// `x` is a percentage: 1 to [`PERCENT_DIGITS`] digits, then `%`.
pub fn is_percent(x: &str) -> String {
    format!(
        "size({x}) >= 2 && size({x}) <= {} && {x}.charAt(size({x}) - 1) == '%' && {}",
        PERCENT_DIGITS + 1,
        digits_but_last(x, PERCENT_DIGITS, 1)
    )
}

/// The number before the `%` of `x`, which [`is_percent`] holds for (digit by digit:
/// `substring` would walk the value).
pub fn percent_value(x: &str) -> String {
    let d = |i: usize| format!("int({x}.charAt({i}))");
    format!(
        "(size({x}) == 2 ? {} : size({x}) == 3 ? {} * 10 + {} : {} * 100 + {} * 10 + {})",
        d(0),
        d(0),
        d(1),
        d(0),
        d(1),
        d(2)
    )
}

/// `x` is a count from `min` to [`MAX_NODE_COUNT`] or a percentage from `min`% to 100%.
pub fn amount_within(x: &str, min: u32) -> String {
    let p = percent_value(x);
    format!(
        "{} ? int({x}) >= {min} && int({x}) <= {MAX_NODE_COUNT} : {} && {p} >= {min} && {p} <= 100",
        is_count(x),
        is_percent(x)
    )
}

/// The rule on one `steps[].nodes` value.
pub fn step_nodes() -> String {
    format!("[string(self)].all(n, {})", amount_within("n", 0))
}

/// The rule on `maxInFlight`: as a step's nodes, and not zero.
pub fn max_in_flight() -> String {
    format!("[string(self)].all(n, {})", amount_within("n", 1))
}

/// The rule on the `steps` list: the counts, in order, never go down, nor do the
/// percentages. A count and a percentage are not compared (which is larger depends on
/// the number of target nodes).
pub fn steps_do_not_shrink() -> String {
    format!(
        "[self.map(s, string(s.nodes))].all(l, l.filter(n, {}).map(n, int(n)).isSorted() && l.filter(n, {}).map(n, {}).isSorted())",
        is_count("n"),
        is_percent("n"),
        percent_value("n")
    )
}
