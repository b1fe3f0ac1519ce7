//! Prometheus metrics endpoint.
//!
//! Metrics of the query path: `annals_query_duration_seconds{rpc}` (histogram, buckets 1 ms to
//! 10 s) and `annals_queries_total{rpc, outcome}` (outcome `ok` or the gRPC status in snake
//! case, e.g. `unavailable` for a `min_position` wait that timed out).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Histogram buckets for every `*_seconds` metric: 1 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global metrics recorder and serves `GET /metrics` (Prometheus text format) on
/// `addr`. Must run inside a tokio runtime; a process can install only one recorder.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .install()
}
