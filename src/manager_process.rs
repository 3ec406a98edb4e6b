//! What the two manager processes (`rfaas executor-manager`, `rfaas resource-manager`) do
//! alike around their HTTP API: a session of their own when a launcher asks for one, a small
//! async runtime, the listening socket, serving until SIGTERM or SIGINT, and an I/O failure
//! that says what was being done.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A system call that failed, with what was being done (the message) and the OS error (the
/// source).
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct IoFailure {
    /// What was being done.
    pub context: String,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

/// Turns an `io::Error` into an [`IoFailure`] that says `context` (for `map_err`).
pub fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> IoFailure {
    let context = context.into();
    move |source| IoFailure { context, source }
}

/// Starts a new session and process group (pgid = pid): a launcher can stop the manager and
/// everything it spawned with one killpg, and no terminal's signals reach it.
pub fn new_session() -> Result<(), IoFailure> {
    nix::unistd::setsid()
        .map(drop)
        .map_err(|e| io_err("setsid")(e.into()))
}

/// Runs `main` to its end on a runtime of `threads` worker threads named `thread_name`, then
/// gives its tasks a second to stop.
pub fn block_on<T, E: From<IoFailure>>(
    thread_name: &str,
    threads: usize,
    main: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(thread_name)
        .enable_all()
        .build()
        .map_err(io_err("start the async runtime"))?;
    let result = rt.block_on(main);
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Binds the API's address `listen` (`host:port`, port 0 picks one); returns the listener and
/// the address actually bound.
pub async fn listen(listen: &str) -> Result<(TcpListener, String), IoFailure> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(io_err(format!("listen on {listen}")))?;
    let bound = listener
        .local_addr()
        .map_err(io_err("read the bound address"))?
        .to_string();
    Ok((listener, bound))
}

/// SIGTERM and SIGINT, caught from [`StopSignals::install`] on (install them before anything
/// can tell a launcher the manager is up, so that its stop request is never lost).
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Catches SIGTERM and SIGINT from now on.
    pub fn install() -> Result<StopSignals, IoFailure> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).map_err(io_err("handle SIGTERM"))?,
            int: signal(SignalKind::interrupt()).map_err(io_err("handle SIGINT"))?,
        })
    }

    /// Serves `app` on `listener` ([`crate::http::serve`], request heads within
    /// `request_timeout`) until SIGTERM or SIGINT; returns the signal's name.
    pub async fn serve(
        self,
        listener: TcpListener,
        app: Router,
        request_timeout: Duration,
    ) -> &'static str {
        let StopSignals { mut term, mut int } = self;
        let (tx, rx) = tokio::sync::oneshot::channel::<&'static str>();
        let waiter = tokio::spawn(async move {
            let sig = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = tx.send(sig);
        });
        let mut signal_name = "";
        let shutdown = async {
            signal_name = rx.await.unwrap_or("shutdown");
        };
        crate::http::serve(listener, app, request_timeout, shutdown).await;
        waiter.abort();
        signal_name
    }
}
