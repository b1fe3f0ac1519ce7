//! The outbox relay of annals: publishes every event of the store to Kafka, in global order,
//! with no gaps.
//!
//! The events table is the outbox. One relay is active at a time (a session-level Postgres
//! advisory lock held on a dedicated connection; a waiting relay takes over the moment the
//! leader's connection goes away). The leader follows the gap-safe [`event_store::Subscription`]
//! from its checkpoint, produces each batch with an idempotent producer
//! (`enable.idempotence=true`, `acks=all`; all messages of a batch in flight together), and
//! advances the checkpoint only after the broker acknowledged every message of the batch. Any
//! failure drops the producer, backs off and resumes from the checkpoint: messages may be
//! published twice, never skipped. Consumers dedupe by event id (header `event_id`, or the
//! envelope).
//!
//! The wire format (topics, keys, the JSON envelope, headers) is not here but in
//! [`event_store::wire`]: consumers decode messages without depending on this crate and its
//! Kafka client.
//!
//! # Layout
//!
//! - `relay`: [`Relay`] (leadership, produce, checkpoints, topic creation, metrics), its
//!   [`RelayConfig`] and live [`RelayStats`]; [`describe_metrics`].
//! - `checkpoints`: [`CheckpointPublisher`], the global chain's signed checkpoints to a topic.
//!
//! # Metrics
//!
//! `annals_relay_messages_total` and `annals_relay_produce_errors_total` (counters, exported
//! from start-up at 0), `annals_relay_lag_events` (committed events above the checkpoint, held
//! back ones included), `annals_relay_held_back_events` (those of them an open older
//! transaction keeps from being published), `annals_relay_lag_seconds` (age of the oldest
//! unpublished event), `annals_relay_leader{relay}` and the histogram
//! `annals_relay_batch_duration_seconds`. The lag gauges are sampled by the leader every
//! [`RelayConfig::lag_interval`] and return to 0 once it has drained.
//! - `error`: [`RelayError`]: store failures, Kafka failures and the injected crash point.
//! - `src/bin/annals-relay.rs`: the `annals-relay` binary, which runs one relay on its own
//!   (flags, Prometheus endpoint, SIGINT/SIGTERM).
//! - `examples/relay_demo.rs`: publishes a store and reads the topics back (`deploy/demo.sh`).
//! - `tests/relay.rs`: against a real broker (tansu) and librdkafka's mock cluster.

mod checkpoints;
mod error;
mod relay;

pub use checkpoints::{CHECKPOINT_TOPIC, CheckpointPublisher, decode_checkpoint};
pub use error::RelayError;
pub use relay::{MAX_COUNTED_LAG, Relay, RelayConfig, RelayStats, describe_metrics};
