//! Prometheus metrics endpoint.
//!
//! Metrics of the query path: `annals_query_duration_seconds{rpc}` (histogram, buckets 1 ms to
//! 10 s) and `annals_queries_total{rpc, outcome}` (outcome `ok` or the gRPC status in snake
//! case, e.g. `unavailable` for a `min_position` wait that timed out).

pub use schemas::runtime::install_prometheus;

use metrics::{Unit, describe_counter, describe_histogram};

/// Describes (`# HELP`) the metrics of the query path. Call once at start-up, after
/// [`install_prometheus`]. The series are labelled and appear with the first query.
pub fn describe_metrics() {
    describe_histogram!(
        "annals_query_duration_seconds",
        Unit::Seconds,
        "Time to answer a query, by RPC."
    );
    describe_counter!(
        "annals_queries_total",
        Unit::Count,
        "Queries answered, by RPC and outcome (ok or the gRPC status in snake case)."
    );
}
