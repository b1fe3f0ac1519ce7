//! Descriptions (`# HELP`) of the projection process's metrics.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes every metric of the projections process; the per-projection series are labelled
/// and appear with the first sample of each projection (the lag sampler sets both gauges of
/// every projection at start-up). Call once at start-up, after the recorder is installed.
pub fn describe_metrics() {
    describe_gauge!(
        "annals_projection_lag_events",
        Unit::Count,
        "Committed events of the projection's stream types after its progress position, those held back by an open transaction included (counted up to 1000000)."
    );
    describe_gauge!(
        "annals_projection_lag_seconds",
        Unit::Seconds,
        "Age of the oldest committed event the projection has not applied (0 when caught up)."
    );
    describe_counter!(
        "annals_projection_events_total",
        Unit::Count,
        "Events handled per projection, by outcome: applied, duplicate or parked."
    );
    describe_counter!(
        "annals_projection_dead_letters_total",
        Unit::Count,
        "Events dead-lettered after their retries."
    );
    describe_counter!(
        "annals_projection_rejected_messages_total",
        Unit::Count,
        "Kafka messages whose hash did not verify against their stream's chain."
    );
    describe_counter!(
        "annals_projection_undecodable_messages_total",
        Unit::Count,
        "Kafka messages that could not be decoded as an event envelope."
    );
    describe_histogram!(
        "annals_projection_batch_seconds",
        Unit::Seconds,
        "Time to apply one batch and commit it with the checkpoint."
    );
    describe_counter!(
        "annals_reactor_skipped_events_total",
        Unit::Count,
        "Events a reactor skipped because they could not be decoded."
    );
    metrics::counter!("annals_projection_undecodable_messages_total").increment(0);
}
