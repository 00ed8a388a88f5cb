//! Polling until something holds, or failing the test with what was seen last.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Poll `check` every `every` until it returns `Ok`, or panic after `timeout` with `what`
/// and the last `Err` (the state that was seen, in words).
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    what: impl Display,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Poll `done` every `every` until it is true, or panic after `timeout` naming `what`.
pub fn wait_until(timeout: Duration, every: Duration, what: impl Display, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_the_value_or_panics_with_the_last_state() {
        let mut n = 0;
        let every = Duration::from_millis(1);
        assert_eq!(
            wait_for(Duration::from_secs(5), every, "n to reach 2", || {
                n += 1;
                if n >= 2 { Ok(n) } else { Err(format!("{n}")) }
            }),
            2
        );
        let r = std::panic::catch_unwind(|| {
            wait_for::<()>(Duration::from_millis(10), every, "never", || Err("state X".into()))
        });
        let msg = r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("never") && msg.contains("state X"), "{msg}");
        let r = std::panic::catch_unwind(|| wait_until(Duration::from_millis(10), every, "never", || false));
        assert!(r.unwrap_err().downcast::<String>().unwrap().contains("waiting for never"));
    }
}
