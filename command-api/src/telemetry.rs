//! Prometheus metrics endpoint.
//!
//! Metrics of the command path: `annals_commands_total{command, outcome}` (outcome `ok`,
//! `replayed` or the gRPC status in snake case) and `annals_command_duration_seconds{command}`;
//! the event store adds `annals_append_duration_seconds{outcome}`, `annals_appends_total` and
//! `annals_events_appended_total`. Durations are histograms with the buckets below.

pub use schemas::runtime::install_prometheus;

use metrics::{Unit, describe_counter, describe_histogram};

/// Describes (`# HELP`) the metrics of the command path and of the event store's appends.
/// Call once at start-up, after [`install_prometheus`]. The series are labelled and appear
/// with the first command.
pub fn describe_metrics() {
    describe_counter!(
        "annals_commands_total",
        Unit::Count,
        "Commands answered, by command and outcome (ok, replayed or the gRPC status in snake case)."
    );
    describe_histogram!(
        "annals_command_duration_seconds",
        Unit::Seconds,
        "Time to answer a command, by command."
    );
    describe_histogram!(
        "annals_append_duration_seconds",
        Unit::Seconds,
        "Time of one event-store append, by outcome."
    );
    describe_counter!(
        "annals_appends_total",
        Unit::Count,
        "Event-store appends, by outcome."
    );
    describe_counter!(
        "annals_events_appended_total",
        Unit::Count,
        "Events written by appends (replayed appends write none)."
    );
    describe_histogram!(
        "annals_append_group_size",
        Unit::Count,
        "Appends carried by one group commit."
    );
    describe_histogram!(
        "annals_append_group_duration_seconds",
        Unit::Seconds,
        "Time of one group commit (one round trip, one commit)."
    );
}
