//! Value types of the store's API: what goes in (batches) and what comes out (recorded events).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;

/// Longest accepted stream id, stream type, event type or tenant, in bytes.
pub const MAX_NAME_LEN: usize = 200;
/// Most events one append may carry (positions reserve 16 bits per transaction).
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Position of an event in the global order of all events.
///
/// Positions are strictly increasing but not dense: they are derived from the appending
/// transaction's id (see the crate docs, "Gap safety"). `Position::START` is before every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub i64);

impl Position {
    /// Before the first event: "read all after START" reads everything.
    pub const START: Position = Position(0);
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifier of a stream: non-empty, at most [`MAX_NAME_LEN`] bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// Parses a stream id.
    pub fn new(id: impl Into<String>) -> Result<Self, StoreError> {
        let id = id.into();
        check_name("stream_id", &id)?;
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = StoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn check_name(field: &'static str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::InvalidInput {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidInput {
            field,
            reason: format!("must be at most {MAX_NAME_LEN} bytes"),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::InvalidInput {
            field,
            reason: "must not contain control characters".into(),
        });
    }
    Ok(())
}

/// What the writer believes about a stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "version")]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (versions start at 1).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(n) => write!(f, "version {n}"),
        }
    }
}

impl ExpectedVersion {
    /// Inverse of [`ExpectedVersion::to_sql`].
    pub(crate) fn from_sql(v: i64) -> Self {
        match v {
            0 => Self::NoStream,
            n if n > 0 => Self::Exact(n.unsigned_abs()),
            _ => Self::Any,
        }
    }

    /// Encoding understood by `annals_append`: -1 any, 0 no stream, n exact.
    pub(crate) fn to_sql(self) -> Result<i64, StoreError> {
        match self {
            Self::Any => Ok(-1),
            Self::NoStream => Ok(0),
            Self::Exact(0) => Err(StoreError::InvalidInput {
                field: "expected_version",
                reason: "versions start at 1; use NoStream for a new stream".into(),
            }),
            Self::Exact(n) => i64::try_from(n).map_err(|_| StoreError::InvalidInput {
                field: "expected_version",
                reason: "out of range".into(),
            }),
        }
    }
}

/// Who did what, on whose behalf, and why: stored with every event of an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Tenant owning the events; every read model row is scoped by it.
    pub tenant: String,
    /// Actor (user or service id) that issued the command.
    pub actor: String,
    /// Kind of actor, e.g. `user`, `service`, `system`.
    pub actor_type: String,
    /// Idempotency key of the command that produced the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    /// Groups everything caused by one original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message (command or event) that directly caused these events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Client address, when the command came over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// Client user agent, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl Metadata {
    /// Metadata for `actor` of `actor_type` acting in `tenant`; optional fields empty.
    pub fn new(
        tenant: impl Into<String>,
        actor: impl Into<String>,
        actor_type: impl Into<String>,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            actor: actor.into(),
            actor_type: actor_type.into(),
            command_id: None,
            correlation_id: None,
            causation_id: None,
            client_ip: None,
            user_agent: None,
        }
    }
}

/// An event to append: its type, schema version and JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; generated (UUID v7) unless the caller sets one.
    pub event_id: Uuid,
    /// Stable type name, e.g. `task.created`.
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// The event's data.
    pub payload: serde_json::Value,
}

impl NewEvent {
    /// An event with a fresh time-ordered id.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
        }
    }
}

/// Events for one stream within an append.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    /// Target stream.
    pub stream_id: StreamId,
    /// Kind of aggregate the stream holds, e.g. `task`; routes it to a Kafka topic.
    pub stream_type: String,
    /// Optimistic concurrency check.
    pub expected: ExpectedVersion,
    /// Events in order; at least one.
    pub events: Vec<NewEvent>,
}

/// One atomic append: events for one or several streams, committed together or not at all.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendBatch {
    pub(crate) command_id: Option<Uuid>,
    pub(crate) fingerprint: Option<[u8; 32]>,
    pub(crate) metadata: Metadata,
    pub(crate) streams: Vec<StreamAppend>,
}

impl AppendBatch {
    /// A batch carrying `metadata`; add streams with [`AppendBatch::stream`].
    pub fn new(metadata: Metadata) -> Self {
        Self {
            command_id: None,
            fingerprint: None,
            metadata,
            streams: Vec::new(),
        }
    }

    /// Adds events for one stream.
    #[must_use]
    pub fn stream(
        mut self,
        stream_id: StreamId,
        stream_type: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        self.streams.push(StreamAppend {
            stream_id,
            stream_type: stream_type.into(),
            expected,
            events,
        });
        self
    }

    /// Makes the append idempotent under `command_id`; the request fingerprint is computed from
    /// the batch (streams, expected versions, event types, schema versions and payloads).
    #[must_use]
    pub fn idempotent(mut self, command_id: Uuid) -> Self {
        self.command_id = Some(command_id);
        self.metadata.command_id = Some(command_id);
        self
    }

    /// Like [`AppendBatch::idempotent`], with a fingerprint of the caller's choosing, e.g. a
    /// hash of the original command, so that a retry whose events differ only in timestamps
    /// still counts as the same request.
    #[must_use]
    pub fn idempotent_with_fingerprint(mut self, command_id: Uuid, fingerprint: [u8; 32]) -> Self {
        self.fingerprint = Some(fingerprint);
        self.idempotent(command_id)
    }

    /// The streams in this batch.
    pub fn streams(&self) -> &[StreamAppend] {
        &self.streams
    }

    /// The shared metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// New version of one stream after an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamVersion {
    /// The stream.
    pub stream_id: String,
    /// Its version after the append.
    pub version: u64,
}

/// Where one appended event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEvent {
    /// The event id.
    pub event_id: Uuid,
    /// The stream it was appended to.
    pub stream_id: String,
    /// Its version within the stream.
    pub stream_version: u64,
    /// Its global position.
    pub global_position: Position,
}

/// Result of an append; a retried command receives the original one with `replayed = true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// New version per stream, in batch order.
    pub streams: Vec<StreamVersion>,
    /// Every event appended, in batch order.
    pub events: Vec<AppendedEvent>,
    /// When the events were recorded.
    pub recorded_at: DateTime<Utc>,
    /// True when this answers a retry and nothing was appended now.
    #[serde(default)]
    pub replayed: bool,
}

impl AppendResult {
    /// Global position of the last event: what a reader must reach to see this append.
    pub fn last_position(&self) -> Position {
        self.events
            .iter()
            .map(|e| e.global_position)
            .max()
            .unwrap_or(Position::START)
    }
}

/// A stored event with its full envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Position in the global order.
    pub global_position: Position,
    /// Unique event id.
    pub event_id: Uuid,
    /// Stream it belongs to.
    pub stream_id: String,
    /// Kind of aggregate of the stream.
    pub stream_type: String,
    /// Version within the stream (1-based).
    pub stream_version: u64,
    /// Tenant (also in `metadata`).
    pub tenant_id: String,
    /// Stable type name.
    pub event_type: String,
    /// Schema version of the stored payload (readers upcast older ones).
    pub schema_version: u32,
    /// Exact stored payload JSON text (covered by the hash chain).
    pub payload: String,
    /// Exact stored metadata JSON text (covered by the hash chain).
    pub metadata: String,
    /// Commit time of the append (transaction time).
    pub recorded_at: DateTime<Utc>,
    /// `SHA-256(previous hash of the stream || canonical envelope)`.
    pub hash: [u8; 32],
}

impl RecordedEvent {
    /// Parses the payload.
    pub fn payload_json(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&self.payload).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Parses the metadata.
    pub fn metadata(&self) -> Result<Metadata, StoreError> {
        serde_json::from_str(&self.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, from the given version upwards.
    Forward,
    /// Newest first, from the given version downwards.
    Backward,
}

/// Current head of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    /// The stream.
    pub stream_id: String,
    /// Kind of aggregate.
    pub stream_type: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Version of its last event.
    pub version: u64,
    /// Hash of its last event.
    pub last_hash: [u8; 32],
}

/// A batch from [`crate::EventStore::read_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct AllBatch {
    /// Events after the requested position, in global order, none skipped.
    pub events: Vec<RecordedEvent>,
    /// Committed events exist past the batch that cannot be delivered yet because an older
    /// transaction is still open; read again shortly.
    pub held_back: bool,
}

impl AllBatch {
    /// Position to continue from, or `after` when the batch is empty.
    pub fn next_after(&self, after: Position) -> Position {
        self.events.last().map_or(after, |e| e.global_position)
    }
}
