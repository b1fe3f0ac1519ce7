//! The read side of annals: projections that turn events into Postgres read models, an audit log
//! and summaries, plus the reactors (reminder scheduler, recurring-task manager) that turn events
//! into commands.
//!
//! # How events are applied
//!
//! A [`Projection`] handles the events of some stream types. The [`Runner`] feeds it batches
//! from an [`EventSource`] (the Postgres store, the embedded default, or Kafka topics) and
//! applies each batch in **one** Postgres transaction that also records, per stream, the last
//! applied stream version and hash (`projection_streams`) and the projection's checkpoint.
//! Consequences:
//!
//! - **Set-based.** The runner deduplicates, orders and gap-fills a batch, then hands the
//!   events to [`Projection::apply_batch`] once: every model loads the rows the batch touches
//!   (one statement per table), folds the events into them in memory in stream order and
//!   writes each table back with one statement (`jsonb_populate_recordset` upserts, `UNNEST`
//!   deltas for summaries); the bookkeeping is one statement too. [`Projection::apply`] is a
//!   batch of one, so isolating a failure runs the same code.
//! - **Redelivery never double-applies.** An event whose version is not above the stream's
//!   recorded version is skipped. This is the dedupe for Kafka, whose redeliveries can arrive in
//!   any order across partitions; per-stream versions (one row per stream, not one per event)
//!   also refuse to apply a stream out of order. A version gap (impossible from the store, and
//!   from Kafka only after a lost message) is filled by reading the missing events from the store.
//! - **Source offsets are committed after the transaction.** A crash in between redelivers the
//!   batch, which the versions turn into no-ops.
//! - **Poison events.** If the set-based application fails, the transaction is rolled back and
//!   the batch replayed carefully: each event in a savepoint. An event that fails with attempts
//!   left ends the pass: it is rolled back, the runner pauses *outside* any transaction (a
//!   held xid would hold back every reader of the cluster) and replays; out of attempts, the
//!   event is written to `projection_dead_letters` with its error. Later events of the *same*
//!   stream are parked behind it (kind `parked`) so that no stream is ever applied with a hole;
//!   other streams keep moving. `annals-projections dead-letters retry|skip` resolves them.
//! - **Kafka mode** (a source without store checkpoints): every event's hash must chain onto
//!   its stream's previous hash (`event_store::hash`); a message that does not verify is
//!   dead-lettered as `rejected` with the reason and the store's own, verified copy is applied
//!   instead. After each batch (and when idle) the runner records as its checkpoint the store
//!   position below which every event of its types is applied, so `min_position` readers of
//!   `subscription_checkpoints` work in both modes.
//! - **Rebuild** ([`rebuild`]) replays the store into a shadow schema with the same handlers and
//!   swaps the result in by moving tables (a short lock, not a copy); live runners are fenced
//!   by an advisory lock and by the checkpoint check, and resume from the swapped-in checkpoint.
//!
//! # Layout
//!
//! - [`projection`]: the [`Projection`] trait and [`ProjectionError`].
//! - [`runner`]: applying batches (dedupe, parking, dead letters, checkpoints) and the run loop.
//! - [`source`]: [`EventSource`] with [`source::StoreSource`] and [`source::KafkaSource`].
//! - [`models`]: the projections: problems, tasks, agent sessions, governance, audit log; each
//!   with its `reads` (row types and SELECTs served by query-api).
//! - [`dead_letters`]: list, retry and skip.
//! - [`rebuild`]: shadow-schema rebuild with progress and a swap by moving tables.
//! - [`reactors`]: recurring-task manager and reminder scheduler (with the in-app inbox channel).
//! - [`lag`]: lag gauges per projection.
//! - [`worker`]: running every projection, the reactors and the lag sampler in one process.
//!
//! The SQL schema is in the workspace's `migrations/2026112300002*` and `202612020002*`.

pub mod dead_letters;
pub mod lag;
pub mod models;
pub mod projection;
pub mod reactors;
pub mod rebuild;
pub mod runner;
pub mod source;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod worker;

pub use projection::{Projection, ProjectionError};
pub use runner::{BatchStats, PROGRESS_CHANNEL, Runner, RunnerOptions};
pub use source::EventSource;
