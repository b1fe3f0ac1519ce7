//! The store's one error type. Conflicts and refusals are typed; database failures are kept
//! whole for logs but never meant for end users.

use uuid::Uuid;

use crate::types::ExpectedVersion;

/// Everything that can go wrong in the event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The caller passed a value the store cannot accept; nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Optimistic concurrency check failed; nothing was written to any stream of the batch.
    #[error("wrong expected version for stream {stream_id}: expected {expected}, current {}", .actual.map_or_else(|| "none (no stream)".to_string(), |v| v.to_string()))]
    WrongExpectedVersion {
        /// The stream whose check failed.
        stream_id: String,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's current version, `None` when it does not exist.
        actual: Option<u64>,
    },

    /// A command id was reused for a request with different content.
    #[error("command id {command_id} was already used for a different request")]
    CommandIdReused {
        /// The reused id.
        command_id: Uuid,
    },

    /// The tenant's stream exists and holds another stream type (e.g. a task's id names a
    /// problem of the same tenant); nothing was written. Streams of other tenants never cause
    /// this: stream ids are scoped to the tenant.
    #[error("stream {stream_id} holds another stream type")]
    StreamTypeMismatch {
        /// The stream.
        stream_id: String,
    },

    /// The newest stored event was written by a transaction id this Postgres server has not
    /// reached: the database was restored or replicated into another cluster. Appends refuse
    /// until [`crate::EventStore::rebase_positions`] starts a new position epoch.
    #[error(
        "stored events are ahead of this database server's transaction ids (restored into \
         another cluster?); run `annals store rebase-positions` once"
    )]
    PositionsBehind,

    /// The append was called where positions cannot be assigned in commit order: inside a
    /// transaction that already wrote, or under an isolation level other than READ COMMITTED.
    #[error("append refused: {0}")]
    WrongTransaction(&'static str),

    /// An event id that is already stored was appended again.
    #[error("an event id of this batch already exists")]
    DuplicateEventId,

    /// A service connected as a login that could rewrite history (a superuser or the owner
    /// of the event tables) without being allowed to.
    #[error(
        "connected to Postgres as {role}, a superuser or owner of the event tables, which could \
         rewrite stored history; services connect as a member of annals_service"
    )]
    PrivilegedLogin {
        /// The login.
        role: String,
    },

    /// The database's schema is older than this build: its migrations have not run yet.
    #[error(
        "the database schema is at migration {applied}, this build needs {required}: run the \
         migrations as the owner first"
    )]
    SchemaBehind {
        /// Newest migration applied (0 = none).
        applied: i64,
        /// Newest migration of this build.
        required: i64,
    },

    /// Stored data could not be decoded (a bug or tampering; the verifier tells which).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// A signed checkpoint or an inclusion proof is malformed, or its signature does not verify
    /// with the given public key (the caller's input, not the store, is at fault).
    #[error("invalid checkpoint or proof: {0}")]
    Checkpoint(String),

    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),

    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True for failures worth retrying unchanged (connection loss, serialization failure,
    /// deadlock); false for refusals and conflicts, which need a new decision.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => {
                matches!(
                    db.code().as_deref(),
                    Some("40001" | "40P01" | "57P01" | "53300")
                )
            }
            Self::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            ) => true,
            _ => false,
        }
    }
}

/// Maps database errors to typed store errors. This is the one place where SQLSTATEs are
/// interpreted: the append function's own codes and unique violations on the events table.
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        let sqlx::Error::Database(db) = &err else {
            return Self::Database(err);
        };
        match db.code().as_deref() {
            Some("ANV01") => {
                let detail = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.detail())
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
                let field = |name: &str| detail.as_ref().and_then(|d| d.get(name).cloned());
                Self::WrongExpectedVersion {
                    stream_id: field("stream_id")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    expected: ExpectedVersion::from_sql(
                        field("expected").and_then(|v| v.as_i64()).unwrap_or(-1),
                    ),
                    actual: field("actual").and_then(|v| v.as_u64()),
                }
            }
            // The append knows the id; it fills it in (see `EventStore::append`).
            Some("ANC01") => Self::CommandIdReused {
                command_id: Uuid::nil(),
            },
            Some("ANS01") => Self::StreamTypeMismatch {
                stream_id: String::new(),
            },
            Some("ANR01") => Self::PositionsBehind,
            Some("ANX01") => {
                Self::WrongTransaction("the transaction already holds a transaction id")
            }
            Some("ANX02") => Self::WrongTransaction("the isolation level is not READ COMMITTED"),
            Some("ANA01") => Self::InvalidInput {
                field: "batch",
                reason: "malformed append arguments".into(),
            },
            // 23505: the per-stream advisory locks make (stream, version) clashes impossible
            // for appends through this crate; seeing one means a writer bypassed them, which is
            // still a concurrency conflict and is reported as one.
            Some("23505") => match db.constraint() {
                Some("events_event_id_key") => Self::DuplicateEventId,
                Some("events_stream_version_key" | "streams_pkey") => Self::WrongExpectedVersion {
                    stream_id: String::new(),
                    expected: ExpectedVersion::Any,
                    actual: None,
                },
                _ => Self::Database(err),
            },
            _ => Self::Database(err),
        }
    }
}
