//! The [`Projection`] trait and the read side's error type.

use async_trait::async_trait;
use event_store::{RecordedEvent, StoreError};
use sqlx::PgConnection;

/// Everything that can go wrong while projecting.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// A payload or metadata could not be decoded (unknown type, invalid value).
    #[error("cannot decode {event_type} v{schema_version}: {reason}")]
    Decode {
        /// Event type.
        event_type: String,
        /// Its stored schema version.
        schema_version: u32,
        /// What failed.
        reason: String,
    },
    /// A number of the event (or a sum of them) does not fit its column's type; the event is
    /// dead-lettered with this reason rather than stored clamped (see [`crate::models`]).
    #[error("{event_type}: {value} does not fit {column} (the column's type cannot hold it)")]
    OutOfRange {
        /// Event type.
        event_type: String,
        /// `table.column`.
        column: &'static str,
        /// The value, in decimal.
        value: String,
    },
    /// The read model does not hold what the event presupposes (e.g. the row it updates).
    #[error("read model inconsistent: {0}")]
    Inconsistent(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store failed.
    #[error("event store error: {0}")]
    Store(#[from] StoreError),
    /// The source (Kafka) failed.
    #[error("source error: {0}")]
    Source(String),
    /// Another writer moved this projection's checkpoint (a rebuild swap, or a second runner):
    /// the batch was not applied; resume from the stored checkpoint.
    #[error("checkpoint of {projection} moved underneath this runner")]
    Fenced {
        /// The projection.
        projection: String,
    },
    /// A command issued by a reactor was refused.
    #[error("command refused: {0}")]
    Refused(String),
}

impl ProjectionError {
    /// A decode error for `event`.
    pub fn decode(event: &RecordedEvent, reason: impl ToString) -> Self {
        Self::Decode {
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            reason: reason.to_string(),
        }
    }
}

/// A read model: applies events of some stream types to its tables.
///
/// Handlers run inside the runner's transaction (`conn`) and must only write their own tables
/// (listed in [`Projection::tables`]) with unqualified names: a rebuild runs the same handler
/// with `search_path` pointing at a shadow schema. They never see an event twice or out of
/// stream order; they must be deterministic (no clock, no randomness) so that a rebuild equals
/// the incrementally built model.
#[async_trait]
pub trait Projection: Send + Sync {
    /// Stable name: checkpoint `projection:<name>`, rows of the bookkeeping tables, metrics label.
    fn name(&self) -> &'static str;

    /// Stream types this projection consumes; `None` = all.
    fn stream_types(&self) -> Option<&'static [&'static str]>;

    /// Tables owned (written) by this projection, in an order safe for copying.
    fn tables(&self) -> &'static [&'static str];

    /// Applies one event: a batch of one, so that isolating a failing event (the runner's
    /// careful path, the dead-letter tools) runs the very code that applies whole batches.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, std::slice::from_ref(event)).await
    }

    /// Applies a batch: every event is the next one of its stream (the runner has already
    /// deduplicated, ordered and gap-filled them), streams interleave in source order. A
    /// projection folds the batch in memory per row key and writes each table with one
    /// statement; an error fails the whole batch (the runner then isolates the culprit with
    /// [`Projection::apply`]).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError>;

    /// Whether this projection consumes events of `stream_type`.
    fn handles(&self, stream_type: &str) -> bool {
        self.stream_types()
            .is_none_or(|types| types.contains(&stream_type))
    }

    /// Name of its store checkpoint.
    fn checkpoint_name(&self) -> String {
        format!("projection:{}", self.name())
    }
}
