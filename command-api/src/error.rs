//! [`ApiError`] and its mapping to gRPC statuses: the one place where failures become codes.
//!
//! | failure | status |
//! |---|---|
//! | no or unparsable bearer token; unknown, revoked or expired token | `UNAUTHENTICATED` |
//! | role may not send commands | `PERMISSION_DENIED` |
//! | malformed or out-of-range field (edge validation or the domain's value rules) | `INVALID_ARGUMENT`, message `field.path: what is wrong` |
//! | the aggregate's state forbids the command (domain refusal) | `FAILED_PRECONDITION` |
//! | unknown aggregate or child entity in the caller's tenant (ids are scoped to the tenant: another tenant's aggregate of the same id is not there) | `NOT_FOUND` |
//! | create of an aggregate the caller's tenant already has; `command_id` reused by the caller's tenant for a different request | `ALREADY_EXISTS` |
//! | concurrency conflict (expected version differs from the current one) | `ABORTED`, message names the current version |
//! | database unreachable, pool exhausted, transient failure | `UNAVAILABLE`, generic message |
//! | anything else (corrupt history, bugs) | `INTERNAL`, generic message |
//!
//! Domain errors also carry their stable code in the `annals-error-code` response metadata
//! (e.g. `task.not_active`), for clients that branch on a specific rule. Internal
//! details are logged with `tracing`, never sent.

use aggregates::{DomainError, ErrorKind};
use event_store::{ExpectedVersion, StoreError};
use tonic::{Code, Status};
use uuid::Uuid;

use schemas::auth::AuthError;

/// Metadata key carrying a domain error's stable code.
pub const ERROR_CODE_METADATA: &str = "annals-error-code";

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A request field is malformed; `field` is its path, e.g. `task.title`.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the field in the request.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The domain refused the command; `scope` prefixes field names (e.g. `task`).
    #[error("{error}")]
    Domain {
        /// Aggregate name used as the field prefix.
        scope: &'static str,
        /// The refusal.
        error: DomainError,
    },
    /// The target aggregate does not exist for this tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// The client's expected version is not the current one (checked before deciding).
    #[error("stream {stream_id}: expected {expected}, current {actual:?}")]
    VersionMismatch {
        /// The stream.
        stream_id: String,
        /// What the client expected.
        expected: ExpectedVersion,
        /// The current version, `None` when the stream does not exist.
        actual: Option<u64>,
    },
    /// The event store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A domain value error re-attributed to a request field path: the domain names its own
    /// field (`title`), the edge knows where it sat in the request (`task.title`).
    pub fn field(path: impl Into<String>, error: DomainError) -> Self {
        if error.kind() != ErrorKind::InvalidArgument {
            return ApiError::Domain { scope: "", error };
        }
        let message = strip_field(error.message(), error.field());
        ApiError::Invalid {
            field: path.into(),
            message,
        }
    }

    /// Short label for metrics (`outcome`).
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::Auth(AuthError::Missing | AuthError::Invalid) => "unauthenticated",
            ApiError::Auth(AuthError::Forbidden { .. }) => "permission_denied",
            ApiError::Auth(AuthError::Database(_)) => "unavailable",
            ApiError::Invalid { .. } => "invalid_argument",
            ApiError::Domain { error, .. } => match error.kind() {
                ErrorKind::InvalidArgument => "invalid_argument",
                ErrorKind::FailedPrecondition => "failed_precondition",
                ErrorKind::NotFound => "not_found",
                ErrorKind::AlreadyExists => "already_exists",
            },
            ApiError::NotFound(_) => "not_found",
            ApiError::VersionMismatch { .. } => "aborted",
            ApiError::Store(e) => match e {
                StoreError::WrongExpectedVersion { .. } => "aborted",
                StoreError::CommandIdReused { .. } | StoreError::DuplicateEventId => {
                    "already_exists"
                }
                StoreError::StreamTypeMismatch { .. } => "not_found",
                StoreError::PositionsBehind => "unavailable",
                e if e.is_transient() => "unavailable",
                _ => "internal",
            },
        }
    }
}

/// "title must have at most 500 characters" -> "must have at most 500 characters".
fn strip_field(message: &str, field: Option<&str>) -> String {
    field
        .and_then(|f| message.strip_prefix(f))
        .and_then(|rest| rest.strip_prefix(' '))
        .unwrap_or(message)
        .to_owned()
}

fn conflict_message(stream_id: &str, expected: &ExpectedVersion, actual: Option<u64>) -> String {
    let current = actual.map_or_else(
        || "the stream does not exist".to_owned(),
        |v| format!("current version is {v}"),
    );
    let stream = if stream_id.is_empty() {
        "the stream".to_owned()
    } else {
        format!("stream {stream_id}")
    };
    format!("concurrency conflict on {stream}: expected {expected}, {current}; reload and retry")
}

fn command_id_reused(command_id: Uuid) -> String {
    format!(
        "envelope.command_id: {command_id} was already used for a different request; \
         use a new command id for a new command"
    )
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::Auth(AuthError::Missing) => {
                Status::unauthenticated(AuthError::Missing.to_string())
            }
            ApiError::Auth(AuthError::Invalid) => {
                Status::unauthenticated(AuthError::Invalid.to_string())
            }
            ApiError::Auth(e @ AuthError::Forbidden { .. }) => {
                Status::permission_denied(e.to_string())
            }
            ApiError::Auth(AuthError::Database(e)) => {
                tracing::error!(error = %e, "token lookup failed");
                Status::unavailable("authentication is temporarily unavailable; retry later")
            }
            ApiError::Invalid { field, message } => {
                Status::invalid_argument(format!("{field}: {message}"))
            }
            ApiError::Domain { scope, error } => {
                let code = match error.kind() {
                    ErrorKind::InvalidArgument => Code::InvalidArgument,
                    ErrorKind::FailedPrecondition => Code::FailedPrecondition,
                    ErrorKind::NotFound => Code::NotFound,
                    ErrorKind::AlreadyExists => Code::AlreadyExists,
                };
                let message = match (error.kind(), error.field()) {
                    (ErrorKind::InvalidArgument, Some(field)) if !scope.is_empty() => format!(
                        "{scope}.{field}: {}",
                        strip_field(error.message(), Some(field))
                    ),
                    (ErrorKind::InvalidArgument, Some(field)) => {
                        format!("{field}: {}", strip_field(error.message(), Some(field)))
                    }
                    _ => error.message().to_owned(),
                };
                let mut status = Status::new(code, message);
                if let Ok(value) = error.code().parse() {
                    status.metadata_mut().insert(ERROR_CODE_METADATA, value);
                }
                status
            }
            ApiError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ApiError::VersionMismatch {
                stream_id,
                expected,
                actual,
            } => Status::aborted(conflict_message(&stream_id, &expected, actual)),
            ApiError::Store(StoreError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            }) => Status::aborted(conflict_message(&stream_id, &expected, actual)),
            ApiError::Store(StoreError::CommandIdReused { command_id }) => {
                Status::already_exists(command_id_reused(command_id))
            }
            ApiError::Store(StoreError::DuplicateEventId) => {
                Status::already_exists("an event id of this command already exists")
            }
            // A stream of the caller's tenant holding another aggregate type (ids are scoped to
            // the tenant, so this never concerns another tenant's data).
            ApiError::Store(StoreError::StreamTypeMismatch { .. }) => {
                Status::not_found("stream not found")
            }
            ApiError::Store(e @ StoreError::PositionsBehind) => {
                tracing::error!(error = %e, "appends refused until positions are rebased");
                Status::unavailable("the event store refuses writes until an operator intervenes")
            }
            ApiError::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "event store unavailable");
                Status::unavailable("the event store is temporarily unavailable; retry later")
            }
            ApiError::Store(e) => {
                tracing::error!(error = %e, "event store failure");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_errors_name_the_request_field() {
        let e = aggregates::values::TaskTitle::parse("x".repeat(501)).unwrap_err();
        let status = Status::from(ApiError::field("task.title", e));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "task.title: must have at most 500 characters (got 501)"
        );
    }

    #[test]
    fn store_failures_do_not_leak() {
        let status = Status::from(ApiError::Store(StoreError::Corrupt("secret detail".into())));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn conflicts_name_the_current_version() {
        let status = Status::from(ApiError::Store(StoreError::WrongExpectedVersion {
            stream_id: "s".into(),
            expected: ExpectedVersion::Exact(2),
            actual: Some(3),
        }));
        assert_eq!(status.code(), Code::Aborted);
        assert!(status.message().contains("current version is 3"));
    }
}
