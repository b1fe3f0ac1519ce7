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
//!   [`RelayConfig`] and live [`RelayStats`].
//! - `checkpoints`: [`CheckpointPublisher`], the global chain's signed checkpoints to a topic.
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
pub use relay::{Relay, RelayConfig, RelayStats};
