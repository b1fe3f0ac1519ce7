//! Process plumbing both gRPC services share: the accepted-connection stream, the shutdown
//! signal, a bounded drain, and the Prometheus endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
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

/// The content type of the Prometheus text exposition format, versioned as scrapers expect.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histograms and summaries are compacted between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A Prometheus recorder with the buckets every process uses (not installed).
pub fn prometheus_recorder() -> Result<PrometheusRecorder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .build_recorder())
}

/// Installs the global metrics recorder and serves `GET /metrics` (Prometheus text format) on
/// `addr`; every other path answers 404 and every other method 405. Must run inside a tokio
/// runtime; a process can install only one recorder. Metric descriptions (`# HELP`) are each
/// crate's `describe_metrics()`, called after this.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), BuildError> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(|e| BuildError::FailedToCreateHTTPListener(format!("{addr}: {e}")))?;
    let recorder = prometheus_recorder()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(serve_metrics(listener, handle));
    Ok(())
}

/// Serves `handle` on `listener` until the process ends: `GET /metrics` answers 200 with the
/// text format ([`METRICS_CONTENT_TYPE`]), another path 404, another method on `/metrics` 405
/// (with `Allow: GET`). Also runs the recorder's upkeep.
pub async fn serve_metrics(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = metrics_response(&handle, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// The answer to `method path`.
fn metrics_response(
    handle: &PrometheusHandle,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    let (status, body, content_type) = if path != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain; charset=utf-8",
        )
    } else if method != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
            "text/plain; charset=utf-8",
        )
    } else {
        (StatusCode::OK, handle.render(), METRICS_CONTENT_TYPE)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET"));
    }
    response
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
