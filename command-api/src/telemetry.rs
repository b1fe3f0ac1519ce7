//! Prometheus metrics endpoint.
//!
//! Metrics of the command path: `annals_commands_total{command, outcome}` (outcome `ok`,
//! `replayed` or the gRPC status in snake case) and `annals_command_duration_seconds{command}`;
//! the event store adds `annals_append_duration_seconds{outcome}`, `annals_appends_total` and
//! `annals_events_appended_total`. Durations are histograms with the buckets below.

pub use schemas::runtime::install_prometheus;
