//! Small pieces every part of the harness uses, by kind: the runtime, processes, the
//! binaries and objects under test, and polling.

use std::fmt::Display;
use std::time::Duration;

mod binaries;
mod process;
mod runtime;

pub use binaries::*;
pub use process::*;
pub use runtime::*;

/// Poll `check` every 250 ms until it returns `Ok`, or panic after `timeout` with
/// `what` and the last `Err` (the state that was seen, in words).
pub fn wait_for<T>(timeout: Duration, what: impl Display, check: impl FnMut() -> Result<T, String>) -> T {
    agent::testing::wait::wait_for(timeout, Duration::from_millis(250), what, check)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    fn serve_once(answer: &'static str) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // Read the whole request first: closing with unread bytes makes the kernel
            // answer with a reset, which may reach the client before the response.
            let (mut request, mut buf) = (Vec::new(), [0u8; 1024]);
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            c.write_all(answer.as_bytes()).unwrap();
            let _ = c.shutdown(std::net::Shutdown::Write);
        });
        addr
    }

    #[test]
    fn http_get_returns_the_body_of_a_200_only() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 26\r\n\r\nbpfleet_operator_leader 1\n");
        let body = http_get(ok, "/metrics").unwrap();
        assert!(body.lines().any(|l| l.trim() == "bpfleet_operator_leader 1"), "{body:?}");
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready");
        assert!(http_get(bad, "/readyz").unwrap_err().to_string().contains("503"));
    }

    /// The harness is synchronous: timers must still be built inside its runtime
    /// (the CRD install crashed once because one was not).
    #[test]
    fn block_on_timeout_works_from_plain_threads() {
        assert_eq!(block_on_timeout(Duration::from_secs(5), async { 7 }).unwrap(), 7);
        let slow =
            block_on_timeout(Duration::from_millis(20), async { tokio::time::sleep(Duration::from_secs(5)).await });
        assert!(slow.is_err(), "the limit must fire");
        let t = std::thread::spawn(|| block_on_timeout(Duration::from_secs(1), async { 1 }).unwrap());
        assert_eq!(t.join().unwrap(), 1);
    }
}
