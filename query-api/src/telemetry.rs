//! Prometheus metrics endpoint.
//!
//! Metrics of the query path: `annals_query_duration_seconds{rpc}` (histogram, buckets 1 ms to
//! 10 s) and `annals_queries_total{rpc, outcome}` (outcome `ok` or the gRPC status in snake
//! case, e.g. `unavailable` for a `min_position` wait that timed out).

pub use schemas::runtime::install_prometheus;
