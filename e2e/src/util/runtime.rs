//! One tokio runtime behind a synchronous API, so plain `#[test]` functions and `Drop`
//! guards can talk to the API server.

use std::sync::OnceLock;
use std::time::Duration;

/// The runtime every asynchronous call of the harness runs on. Tests are plain
/// `#[test]` functions: they, and `Drop` implementations, call [`block_on`].
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-rt")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Run a future to completion on the harness runtime (never call it from inside one).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// [`block_on`] with a time limit. The timer is created inside the runtime: a tokio
/// timer built outside one panics ("there is no reactor running").
pub fn block_on_timeout<F: std::future::Future>(
    limit: Duration,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    block_on(async move { tokio::time::timeout(limit, f).await })
}
