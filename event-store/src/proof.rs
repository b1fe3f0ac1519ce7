//! Inclusion proofs: that one event is leaf `i` of the global chain under a signed checkpoint,
//! checkable offline with the public key alone.
//!
//! A proof carries the event's full envelope and its stream predecessor's hash (so the checker
//! recomputes the event hash from the bytes, not trusting a stored hash), the leaf index, the
//! RFC 9162 audit path (`ceil(log2(tree size))` hashes at most) and the signed checkpoint.
//! Checking costs one event hash, at most `log2(n) + 1` SHA-256 node hashes and one Ed25519
//! signature verification.

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chain::{
    audit_ranges, fold_peaks, leaf_hash, read_nodes, subtrees, to_hash, to_i64, to_u64,
};
use crate::checkpoint::{SignedCheckpoint, decode_checkpoint, hex_bytes};
use crate::error::StoreError;
use crate::hash::{GENESIS, event_hash};
use crate::store::{EventStore, decode_event, event_columns};
use crate::types::{Position, RecordedEvent};

/// The envelope of the proven event, exactly as hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenEvent {
    /// Global position.
    pub global_position: Position,
    /// Event id.
    pub event_id: Uuid,
    /// Stream id.
    pub stream_id: String,
    /// Stream type.
    pub stream_type: String,
    /// Version in the stream.
    pub stream_version: u64,
    /// Tenant.
    pub tenant_id: String,
    /// Event type.
    pub event_type: String,
    /// Stored schema version.
    pub schema_version: u32,
    /// Stored payload bytes.
    pub payload: String,
    /// Stored metadata bytes.
    pub metadata: String,
    /// Recording time.
    pub recorded_at: DateTime<Utc>,
    /// The event's stored hash.
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

impl From<RecordedEvent> for ProvenEvent {
    fn from(e: RecordedEvent) -> Self {
        Self {
            global_position: e.global_position,
            event_id: e.event_id,
            stream_id: e.stream_id,
            stream_type: e.stream_type,
            stream_version: e.stream_version,
            tenant_id: e.tenant_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: e.payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            hash: e.hash,
        }
    }
}

impl From<&ProvenEvent> for RecordedEvent {
    fn from(e: &ProvenEvent) -> Self {
        Self {
            global_position: e.global_position,
            event_id: e.event_id,
            stream_id: e.stream_id.clone(),
            stream_type: e.stream_type.clone(),
            stream_version: e.stream_version,
            tenant_id: e.tenant_id.clone(),
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            payload: e.payload.clone(),
            metadata: e.metadata.clone(),
            recorded_at: e.recorded_at,
            hash: e.hash,
        }
    }
}

/// A proof that an event is included under a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The event.
    pub event: ProvenEvent,
    /// Hash of its predecessor in its stream (zeros for version 1).
    #[serde(with = "hex_bytes")]
    pub prev_hash: [u8; 32],
    /// Its leaf index (rank in global order).
    pub leaf_index: u64,
    /// The audit path, nearest sibling first.
    #[serde(with = "hex_bytes::list")]
    pub audit_path: Vec<[u8; 32]>,
    /// The checkpoint whose root the path leads to; its `leaf_count` is the tree size.
    pub checkpoint: SignedCheckpoint,
}

impl InclusionProof {
    /// Checks the proof offline: the checkpoint's signature with `key`, the event's hash from
    /// its bytes and predecessor, and the audit path up to the signed root.
    pub fn check(&self, key: &VerifyingKey) -> Result<(), StoreError> {
        self.checkpoint.verify_signature(key)?;
        let event = RecordedEvent::from(&self.event);
        if event_hash(&self.prev_hash, &event) != self.event.hash {
            return Err(StoreError::Checkpoint(
                "the event's bytes do not match its hash".into(),
            ));
        }
        let leaf = leaf_hash(self.event.global_position, &self.event.hash);
        if !crate::chain::verify_inclusion(
            self.leaf_index,
            self.checkpoint.leaf_count,
            &leaf,
            &self.audit_path,
            &self.checkpoint.root_hash,
        ) {
            return Err(StoreError::Checkpoint(
                "the audit path does not lead to the signed root".into(),
            ));
        }
        Ok(())
    }
}

impl EventStore {
    /// A proof that event `event_id` is included under `checkpoint`, or under the newest stored
    /// checkpoint covering it when `None` (the caller checks its signature: the table is not
    /// trusted). `Ok(None)` when there is no such event; [`StoreError::Checkpoint`] when it is
    /// not sealed or no checkpoint covers it yet. One snapshot, O(log n) reads.
    #[tracing::instrument(name = "global_chain.inclusion_proof", skip(self, checkpoint))]
    pub async fn inclusion_proof(
        &self,
        event_id: Uuid,
        checkpoint: Option<&SignedCheckpoint>,
    ) -> Result<Option<InclusionProof>, StoreError> {
        const EVENT: &str = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE event_id = $1"
        );
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(row) = sqlx::query(EVENT)
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let event = decode_event(&row)?;
        let prev_hash = if event.stream_version <= 1 {
            GENESIS
        } else {
            let prev: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT hash FROM events \
                  WHERE tenant_id = $1 AND stream_id = $2 AND stream_version = $3",
            )
            .bind(&event.tenant_id)
            .bind(&event.stream_id)
            .bind(to_i64(event.stream_version - 1))
            .fetch_optional(&mut *tx)
            .await?;
            to_hash(prev.ok_or_else(|| {
                StoreError::Corrupt("the event's stream predecessor is missing".into())
            })?)?
        };
        let index: Option<i64> = sqlx::query_scalar(
            "SELECT leaf_index FROM annals_chain_leaves WHERE global_position = $1",
        )
        .bind(event.global_position.0)
        .fetch_optional(&mut *tx)
        .await?;
        let index = to_u64(index.ok_or_else(|| {
            StoreError::Checkpoint("the event is not sealed into the global chain yet".into())
        })?)?;
        let checkpoint = match checkpoint {
            Some(cp) => cp.clone(),
            None => {
                let row = sqlx::query(
                    "SELECT leaf_count, last_position, root_hash, signed_at, key_id, signature \
                       FROM annals_checkpoints WHERE leaf_count > $1 \
                      ORDER BY leaf_count DESC, signed_at DESC LIMIT 1",
                )
                .bind(to_i64(index))
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    StoreError::Checkpoint("no signed checkpoint covers the event yet".into())
                })?;
                decode_checkpoint(&row)?
            }
        };
        if checkpoint.leaf_count <= index {
            return Err(StoreError::Checkpoint(
                "the checkpoint does not cover the event".into(),
            ));
        }
        let mut audit_path = Vec::new();
        for (from, to) in audit_ranges(index, checkpoint.leaf_count) {
            let hashes = read_nodes(&mut tx, &subtrees(from, to)).await?;
            audit_path.push(fold_peaks(&hashes));
        }
        tx.commit().await?;
        Ok(Some(InclusionProof {
            event: event.into(),
            prev_hash,
            leaf_index: index,
            audit_path,
            checkpoint,
        }))
    }
}
