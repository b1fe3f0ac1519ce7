//! [`QueryError`] and its mapping to gRPC statuses: the one place where failures become codes.
//!
//! | failure | status |
//! |---|---|
//! | no bearer token; unknown, revoked or expired token | `UNAUTHENTICATED` |
//! | role may not do this (history without admin/auditor; a viewer filtering the audit trail by actor) | `PERMISSION_DENIED` |
//! | malformed field, page size above 500, foreign or corrupt page token | `INVALID_ARGUMENT`, message `field: what is wrong` |
//! | unknown id, or another tenant's | `NOT_FOUND` |
//! | `min_position` not reached within the wait deadline | `UNAVAILABLE`, message names the current position |
//! | database unreachable, pool exhausted | `UNAVAILABLE`, generic message |
//! | anything else (undecodable history, bugs) | `INTERNAL`, generic message |
//!
//! Internal details are logged with `tracing`, never sent.

use event_store::StoreError;
use schemas::auth::AuthError;
use tonic::Status;

/// Everything a query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A request field is malformed; `field` is its name in the request.
    #[error("{field}: {message}")]
    Invalid {
        /// Field name, e.g. `page_size`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The requested row does not exist for this tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// The read model did not reach `wanted` within the deadline.
    #[error(
        "{projection} has reached position {current}, not yet {wanted}; retry later or without min_position"
    )]
    NotYet {
        /// Projection (or `store`) that was waited for.
        projection: &'static str,
        /// The requested `min_position`.
        wanted: i64,
        /// Where it is now.
        current: i64,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored data could not be decoded (bug or tampering).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl QueryError {
    /// An invalid field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        QueryError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// Short label for metrics (`outcome`).
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::Auth(AuthError::Missing | AuthError::Invalid) => "unauthenticated",
            QueryError::Auth(AuthError::Forbidden { .. }) => "permission_denied",
            QueryError::Auth(AuthError::Database(_)) => "unavailable",
            QueryError::Invalid { .. } => "invalid_argument",
            QueryError::NotFound(_) => "not_found",
            QueryError::NotYet { .. } => "unavailable",
            QueryError::Database(e) if is_transient(e) => "unavailable",
            QueryError::Store(e) if e.is_transient() => "unavailable",
            QueryError::Database(_) | QueryError::Store(_) | QueryError::Corrupt(_) => "internal",
        }
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

impl From<QueryError> for Status {
    fn from(err: QueryError) -> Self {
        match err {
            QueryError::Auth(AuthError::Missing) => {
                Status::unauthenticated(AuthError::Missing.to_string())
            }
            QueryError::Auth(AuthError::Invalid) => {
                Status::unauthenticated(AuthError::Invalid.to_string())
            }
            QueryError::Auth(e @ AuthError::Forbidden { .. }) => {
                Status::permission_denied(e.to_string())
            }
            QueryError::Auth(AuthError::Database(e)) => {
                tracing::error!(error = %e, "token lookup failed");
                Status::unavailable("authentication is temporarily unavailable; retry later")
            }
            e @ QueryError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            e @ QueryError::NotFound(_) => Status::not_found(e.to_string()),
            e @ QueryError::NotYet { .. } => Status::unavailable(e.to_string()),
            QueryError::Database(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "database unavailable");
                Status::unavailable("the database is temporarily unavailable; retry later")
            }
            QueryError::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "event store unavailable");
                Status::unavailable("the event store is temporarily unavailable; retry later")
            }
            e @ (QueryError::Database(_) | QueryError::Store(_) | QueryError::Corrupt(_)) => {
                tracing::error!(error = %e, "query failed");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_yet_names_the_current_position() {
        let status = Status::from(QueryError::NotYet {
            projection: "tasks",
            wanted: 90,
            current: 42,
        });
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("position 42"));
    }

    #[test]
    fn internal_failures_do_not_leak() {
        let status = Status::from(QueryError::Corrupt("secret detail".into()));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
