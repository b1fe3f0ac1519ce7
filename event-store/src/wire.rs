//! The Kafka wire format of stored events: what the relay (`annals-relay`, nested under
//! `event-store/relay/`) publishes and what Kafka consumers (the projections' Kafka source)
//! decode. Pure serde, no Kafka client: a consumer decodes envelopes without the relay crate.
//!
//! - topic: `<prefix><stream type with '_' as '-'>`, e.g. `annals.agent-session` ([`topic_for`]);
//! - key: the stream id, so each aggregate's events stay in order within one partition;
//! - value: the JSON [`Envelope`]; payload and metadata are embedded as the exact stored bytes,
//!   so a consumer can recompute the hash chain ([`encode_envelope`], [`decode_envelope`]);
//! - headers ([`headers`], names in [`header`]): `event_id`, `event_type`, `schema_version`,
//!   `global_position`, `tenant`, and `correlation_id`, `causation_id` when the metadata has
//!   them. Consumers dedupe by event id (header or envelope).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::StoreError;
use crate::types::{Position, RecordedEvent};

/// Names of the message headers, shared by producers and consumers.
pub mod header {
    /// The event id (consumers dedupe on it).
    pub const EVENT_ID: &str = "event_id";
    /// The stable event type name.
    pub const EVENT_TYPE: &str = "event_type";
    /// The schema version of the payload.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// The position in the global order.
    pub const GLOBAL_POSITION: &str = "global_position";
    /// The owning tenant.
    pub const TENANT: &str = "tenant";
    /// The metadata's correlation id, when it has one.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The metadata's causation id, when it has one.
    pub const CAUSATION_ID: &str = "causation_id";
}

/// The JSON value of every Kafka message: the full event envelope.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// Position in the global order.
    pub global_position: i64,
    /// Unique event id (consumers dedupe on it).
    pub event_id: Uuid,
    /// The stream (also the message key).
    #[serde(borrow)]
    pub stream_id: &'a str,
    /// Kind of aggregate (selects the topic).
    #[serde(borrow)]
    pub stream_type: &'a str,
    /// Version within the stream.
    pub stream_version: u64,
    /// Owning tenant.
    #[serde(borrow)]
    pub tenant_id: &'a str,
    /// Stable event type name.
    #[serde(borrow)]
    pub event_type: &'a str,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// The stored payload, byte for byte.
    #[serde(borrow)]
    pub payload: &'a RawValue,
    /// The stored metadata, byte for byte.
    #[serde(borrow)]
    pub metadata: &'a RawValue,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Hex SHA-256 chain hash.
    #[serde(borrow)]
    pub hash: &'a str,
}

/// Encodes an event as the JSON value of its Kafka message.
pub fn encode_envelope(event: &RecordedEvent) -> Result<Vec<u8>, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let payload: &RawValue = serde_json::from_str(&event.payload).map_err(corrupt)?;
    let metadata: &RawValue = serde_json::from_str(&event.metadata).map_err(corrupt)?;
    let hash = hex::encode(event.hash);
    let envelope = Envelope {
        global_position: event.global_position.0,
        event_id: event.event_id,
        stream_id: &event.stream_id,
        stream_type: &event.stream_type,
        stream_version: event.stream_version,
        tenant_id: &event.tenant_id,
        event_type: &event.event_type,
        schema_version: event.schema_version,
        payload,
        metadata,
        recorded_at: event.recorded_at,
        hash: &hash,
    };
    serde_json::to_vec(&envelope).map_err(corrupt)
}

/// Decodes the JSON value of a Kafka message back into the recorded event.
pub fn decode_envelope(bytes: &[u8]) -> Result<RecordedEvent, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("kafka envelope: {e}"));
    let env: Envelope<'_> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(env.hash, &mut hash).map_err(|e| corrupt(e.to_string()))?;
    Ok(RecordedEvent {
        global_position: Position(env.global_position),
        event_id: env.event_id,
        stream_id: env.stream_id.to_owned(),
        stream_type: env.stream_type.to_owned(),
        stream_version: env.stream_version,
        tenant_id: env.tenant_id.to_owned(),
        event_type: env.event_type.to_owned(),
        schema_version: env.schema_version,
        payload: env.payload.get().to_owned(),
        metadata: env.metadata.get().to_owned(),
        recorded_at: env.recorded_at,
        hash,
    })
}

/// The topic of a stream type under `prefix`.
pub fn topic_for(prefix: &str, stream_type: &str) -> String {
    format!("{prefix}{}", stream_type.replace('_', "-"))
}

/// The headers of an event's message, as (name, value) pairs in the order they are sent.
pub fn headers(event: &RecordedEvent) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (header::EVENT_ID, event.event_id.to_string()),
        (header::EVENT_TYPE, event.event_type.clone()),
        (header::SCHEMA_VERSION, event.schema_version.to_string()),
        (header::GLOBAL_POSITION, event.global_position.0.to_string()),
        (header::TENANT, event.tenant_id.clone()),
    ];
    // Metadata was written by this crate; a parse failure only loses the optional headers.
    if let Ok(meta) = event.metadata() {
        for (name, id) in [
            (header::CORRELATION_ID, meta.correlation_id),
            (header::CAUSATION_ID, meta.causation_id),
        ] {
            if let Some(id) = id {
                headers.push((name, id.to_string()));
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;
    use crate::types::Metadata;

    fn event() -> RecordedEvent {
        let mut metadata = Metadata::new("tenant-a", "user-1", "user");
        metadata.correlation_id = Some(Uuid::nil());
        RecordedEvent {
            global_position: Position(42 << 16),
            event_id: Uuid::now_v7(),
            stream_id: "task-1".to_owned(),
            stream_type: "agent_session".to_owned(),
            stream_version: 3,
            tenant_id: "tenant-a".to_owned(),
            event_type: "agent_session.started".to_owned(),
            schema_version: 2,
            // Deliberately not in serde_json's own spelling: the bytes must survive verbatim.
            payload: r#"{ "b":1,  "a" : [1.50, "x"] }"#.to_owned(),
            metadata: serde_json::to_string(&metadata).unwrap(),
            recorded_at: Utc::now(),
            hash: [7; 32],
        }
    }

    #[test]
    fn envelope_round_trips_the_stored_bytes() {
        let event = event();
        let decoded = decode_envelope(&encode_envelope(&event).unwrap()).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn headers_carry_the_ids_and_only_the_present_optional_ones() {
        let event = event();
        let headers = headers(&event);
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            value(header::EVENT_ID),
            Some(event.event_id.to_string().as_str())
        );
        assert_eq!(value(header::GLOBAL_POSITION), Some("2752512"));
        assert_eq!(value(header::SCHEMA_VERSION), Some("2"));
        assert_eq!(value(header::TENANT), Some("tenant-a"));
        assert_eq!(
            value(header::CORRELATION_ID),
            Some(Uuid::nil().to_string().as_str())
        );
        assert_eq!(value(header::CAUSATION_ID), None);
        assert_eq!(headers.len(), 6);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(matches!(
            decode_envelope(b"not json"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn topic_uses_dashes() {
        assert_eq!(
            topic_for("annals.", "agent_session"),
            "annals.agent-session"
        );
    }
}
