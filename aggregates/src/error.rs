//! Domain errors and upcasting errors.
//!
//! A [`DomainError`] is a plain value (kind + stable code + message + optional field) rather than
//! one big enum: there are dozens of rules, and callers only ever branch on the [`ErrorKind`] (to
//! pick a gRPC status) or on the [`code`](DomainError::code) (to show or test a specific rule).

use std::fmt;

/// What kind of failure a [`DomainError`] is; the API maps each kind to one gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A value is malformed or out of range (gRPC `INVALID_ARGUMENT`).
    InvalidArgument,
    /// The value is fine but the aggregate's current state forbids the command
    /// (gRPC `FAILED_PRECONDITION`).
    FailedPrecondition,
    /// The aggregate (or a referenced child entity) does not exist (gRPC `NOT_FOUND`).
    NotFound,
    /// A creation command names an aggregate or entity that already exists (gRPC `ALREADY_EXISTS`).
    AlreadyExists,
}

impl ErrorKind {
    /// The gRPC status name conventionally used for this kind.
    pub fn grpc_status_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.grpc_status_name())
    }
}

/// A rejected command or value: machine-readable code, kind and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct DomainError {
    kind: ErrorKind,
    code: &'static str,
    field: Option<&'static str>,
    message: String,
}

impl DomainError {
    /// A malformed or out-of-range value of `field`.
    pub fn invalid(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        DomainError {
            kind: ErrorKind::InvalidArgument,
            code,
            field: Some(field),
            message: message.into(),
        }
    }

    /// A command that the current state does not allow.
    pub fn precondition(code: &'static str, message: impl Into<String>) -> Self {
        DomainError {
            kind: ErrorKind::FailedPrecondition,
            code,
            field: None,
            message: message.into(),
        }
    }

    /// The aggregate or a referenced entity does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        DomainError {
            kind: ErrorKind::NotFound,
            code,
            field: None,
            message: message.into(),
        }
    }

    /// A creation command for something that already exists.
    pub fn already_exists(code: &'static str, message: impl Into<String>) -> Self {
        DomainError {
            kind: ErrorKind::AlreadyExists,
            code,
            field: None,
            message: message.into(),
        }
    }

    /// Stable machine-readable code such as `task.title_too_long`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The class of error, used to choose the transport status.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The offending input field, for value errors (e.g. `title`).
    pub fn field(&self) -> Option<&'static str> {
        self.field
    }

    /// Human-readable explanation naming the field or the rule.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why a stored event could not be turned into a domain event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    /// The stream type does not know this event type.
    #[error("unknown event type `{event_type}`")]
    UnknownEventType {
        /// The event type as stored.
        event_type: String,
    },
    /// The stored schema version is newer than this code understands (a reader older than the writer).
    #[error("event `{event_type}` has schema version {found}, newer than the supported {current}")]
    FutureVersion {
        /// The event type as stored.
        event_type: String,
        /// Version found in storage.
        found: u32,
        /// Newest version this build knows.
        current: u32,
    },
    /// No upcaster is registered to move this event type past `from_version`.
    #[error("no upcaster registered for `{event_type}` from schema version {from_version}")]
    MissingUpcaster {
        /// The event type as stored.
        event_type: String,
        /// The version that has no next step.
        from_version: u32,
    },
    /// The payload (after upcasting) does not match the event's schema or holds an invalid value.
    #[error("invalid payload for `{event_type}` v{schema_version}: {reason}")]
    InvalidPayload {
        /// The event type as stored.
        event_type: String,
        /// Version the payload was in when it failed.
        schema_version: u32,
        /// The serde or upcaster message.
        reason: String,
    },
}
