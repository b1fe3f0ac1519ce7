//! The relay's one error type. Store failures keep the store's own interpretation
//! ([`StoreError`]); Kafka failures are kept whole for logs.

use event_store::StoreError;
use rdkafka::error::KafkaError;

/// Everything that can end a relay's leadership term or its run.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The event store failed (database, checkpoints, a stored event that cannot be encoded).
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The Kafka client failed: producer, delivery or topic administration.
    #[error("kafka error: {0}")]
    Kafka(#[from] KafkaError),

    /// The relay stopped at its configured crash point (fault injection,
    /// [`crate::RelayConfig::crash_after_messages`]).
    #[error("relay stopped at its injected crash point")]
    InjectedCrash,
}

/// Database errors of the relay's own statements (leadership lock, liveness check, lag) are read
/// the way the store reads them: SQLSTATEs are interpreted in one place, [`StoreError`].
impl From<sqlx::Error> for RelayError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(StoreError::from(err))
    }
}
