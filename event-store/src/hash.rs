//! The hash chain, computed independently of the database.
//!
//! `annals_append` (SQL) writes `hash = SHA-256(prev || canonical envelope)`; this module
//! recomputes the same bytes from what is read back, so a verifier does not trust the database's
//! own arithmetic. The layout (all integers big-endian, strings as i32 length + UTF-8 bytes):
//!
//! ```text
//! prev_hash (32 bytes; zeros for a stream's first event)
//! "annals.v1"
//! global_position i64 | event_id 16 bytes | stream_id str | stream_type str
//! stream_version i64 | tenant_id str | event_type str | schema_version i32
//! payload str (stored bytes) | metadata str (stored bytes) | recorded_at i64 (µs since epoch)
//! ```

use sha2::{Digest, Sha256};

use crate::types::RecordedEvent;

/// The previous hash of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

fn put_str(h: &mut Sha256, s: &str) {
    // Lengths above i32 are impossible: Postgres text is limited to 1 GB.
    h.update((s.len() as i32).to_be_bytes());
    h.update(s.as_bytes());
}

/// Computes the chained hash of `event` given the hash of its predecessor in the stream.
pub fn event_hash(prev: &[u8; 32], event: &RecordedEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(b"annals.v1");
    h.update(event.global_position.0.to_be_bytes());
    h.update(event.event_id.as_bytes());
    put_str(&mut h, &event.stream_id);
    put_str(&mut h, &event.stream_type);
    h.update((event.stream_version as i64).to_be_bytes());
    put_str(&mut h, &event.tenant_id);
    put_str(&mut h, &event.event_type);
    h.update((event.schema_version as i32).to_be_bytes());
    put_str(&mut h, &event.payload);
    put_str(&mut h, &event.metadata);
    h.update(event.recorded_at.timestamp_micros().to_be_bytes());
    h.finalize().into()
}

/// Hash of a request, used as the idempotency fingerprint of a batch; `metadata` and `payloads`
/// (every event's, in batch order) are the texts as stored, serialised once by the caller.
pub(crate) fn fingerprint(
    batch: &crate::types::AppendBatch,
    metadata: &str,
    payloads: &[String],
) -> [u8; 32] {
    let mut h = Sha256::new();
    // v2: the tenant and the metadata (actor, correlation, causation, client) are part of "the
    // same request", so a command id reused by another actor is refused, not replayed. (Command
    // ids are also scoped to the tenant: another tenant's id is a different command.)
    h.update(b"annals.request.v2");
    put_str(&mut h, &batch.metadata.tenant);
    put_str(&mut h, metadata);
    let mut payloads = payloads.iter();
    for s in &batch.streams {
        put_str(&mut h, s.stream_id.as_str());
        put_str(&mut h, &s.stream_type);
        h.update(s.expected.to_sql().unwrap_or(i64::MIN).to_be_bytes());
        h.update((s.events.len() as u64).to_be_bytes());
        for e in &s.events {
            put_str(&mut h, &e.event_type);
            h.update(e.schema_version.to_be_bytes());
            put_str(&mut h, payloads.next().map_or("", String::as_str));
        }
    }
    h.finalize().into()
}
