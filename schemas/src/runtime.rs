//! Process plumbing both gRPC services share: the accepted-connection stream, the shutdown
//! signal, a bounded drain, and the Prometheus endpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use tokio::sync::oneshot;

/// How long a server keeps draining after shutdown began. tonic's graceful shutdown waits for
/// every connection to close, and a client holding an idle HTTP/2 connection open (every
/// pooled client does) would keep the process alive forever.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Histogram buckets for every `*_seconds` metric: 1 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The connections a gRPC server accepts on `listener`, with `TCP_NODELAY` set.
///
/// tonic's own `tcp_nodelay` applies only when it binds the socket itself; on a listener the
/// caller bound, Nagle's algorithm stays on, and a response spanning several segments then
/// waits for the client's delayed ACK (40 ms on Linux): a 50-row `ListTasks` page took 44 ms.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Installs the global metrics recorder and serves `GET /metrics` (Prometheus text format) on
/// `addr`. Must run inside a tokio runtime; a process can install only one recorder.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .install()
}

/// Resolves on SIGTERM or ctrl-c (SIGINT): a binary's shutdown signal.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// A shutdown trigger for [`drain_within`]: wraps the caller's shutdown future so that the
/// server's drain deadline starts when it resolves.
pub fn drain_trigger(
    shutdown: impl Future<Output = ()> + Send,
) -> (impl Future<Output = ()> + Send, oneshot::Receiver<()>) {
    let (began, began_rx) = oneshot::channel();
    let trigger = async move {
        shutdown.await;
        let _ = began.send(());
    };
    (trigger, began_rx)
}

/// Runs `server` to completion, but once shutdown has begun (`began` fires) for at most
/// [`DRAIN_GRACE`]: in-flight requests get that long, then remaining connections are dropped.
pub async fn drain_within<E>(
    server: impl Future<Output = Result<(), E>>,
    began: oneshot::Receiver<()>,
) -> Result<(), E> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        // A dropped sender means the trigger never fired; only the server can end then.
        Ok(()) = began => {}
    }
    match tokio::time::timeout(DRAIN_GRACE, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(grace = ?DRAIN_GRACE, "drain deadline passed; dropping open connections");
            Ok(())
        }
    }
}
