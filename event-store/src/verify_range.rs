//! Verification of a range of global positions (optionally of one tenant): the auditor's
//! "prove nothing in this window was altered" without walking every chain from its start.
//!
//! Each event in the range is checked against its stored predecessor in its stream, which may
//! lie before the range (fetched once per stream, in one query per page). Gaps in stream
//! versions inside the range, or a missing predecessor, are reported as missing versions. Heads
//! are not compared: a range says nothing about the events after it (use
//! [`EventStore::verify_stream`] for a whole stream).

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use crate::error::StoreError;
use crate::hash::{GENESIS, event_hash};
use crate::store::{EventStore, decode_event, event_columns};
use crate::types::{Position, RecordedEvent};
use crate::verify::{TamperKind, Tampering, VerifyReport};

const PAGE: i64 = 2_000;

/// A stream: ids are unique per tenant.
type StreamKey = (String, String);

fn key_of(event: &RecordedEvent) -> StreamKey {
    (event.tenant_id.clone(), event.stream_id.clone())
}

/// Per-stream progress of a walk in position order (this range check and the checkpoint
/// verifier): the version and predecessor hash the stream's next event must have.
pub(crate) struct Link {
    next_version: u64,
    prev: [u8; 32],
    failed: bool,
}

impl Link {
    /// A stream walked from its first event.
    pub(crate) fn from_start() -> Self {
        Self {
            next_version: 1,
            prev: GENESIS,
            failed: false,
        }
    }

    /// Checks `event` against the stream so far; the stream's first finding only. Continues
    /// from the stored values, so that one bad row is reported, not its successors.
    pub(crate) fn step(&mut self, event: &RecordedEvent) -> Option<Tampering> {
        let kind = if event.stream_version != self.next_version {
            Some(TamperKind::MissingVersions {
                expected: self.next_version,
            })
        } else if event_hash(&self.prev, event) != event.hash {
            Some(TamperKind::HashMismatch)
        } else {
            None
        };
        self.prev = event.hash;
        self.next_version = event.stream_version + 1;
        let kind = kind.filter(|_| !self.failed)?;
        self.failed = true;
        Some(Tampering {
            tenant_id: event.tenant_id.clone(),
            stream_id: event.stream_id.clone(),
            global_position: Some(event.global_position),
            stream_version: Some(event.stream_version),
            kind,
        })
    }
}

impl EventStore {
    /// Verifies every event with a global position in `[from, to]` (of `tenant` when given):
    /// its hash recomputed from its stored predecessor, and contiguous versions. Pages through
    /// the range in global order, so memory grows with the number of streams touched, not with
    /// the number of events.
    pub async fn verify_positions(
        &self,
        from: Position,
        to: Position,
        tenant: Option<&str>,
    ) -> Result<VerifyReport, StoreError> {
        const EVENTS: &str = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE global_position > $1 AND global_position <= $2 \
               AND ($3::text IS NULL OR tenant_id = $3) \
             ORDER BY global_position LIMIT $4"
        );
        // Predecessors of the first event of each newly seen stream, in one round trip.
        const PREDECESSORS: &str = "SELECT e.tenant_id, e.stream_id, e.hash FROM events e \
             JOIN unnest($1::text[], $2::text[], $3::bigint[]) \
                  AS p(tenant_id, stream_id, stream_version) \
               ON e.tenant_id = p.tenant_id AND e.stream_id = p.stream_id \
              AND e.stream_version = p.stream_version";
        // One snapshot for the whole range (and the predecessors read on the way).
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut report = VerifyReport::default();
        let mut links: HashMap<StreamKey, Link> = HashMap::new();
        let mut after = from.0.saturating_sub(1);
        loop {
            let rows = sqlx::query(EVENTS)
                .bind(after)
                .bind(to.0)
                .bind(tenant)
                .bind(PAGE)
                .fetch_all(&mut *tx)
                .await?;
            let events = rows
                .iter()
                .map(decode_event)
                .collect::<Result<Vec<_>, _>>()?;
            link_new_streams(&mut tx, &events, &mut links, PREDECESSORS).await?;
            for event in &events {
                report.events_checked += 1;
                let Some(link) = links.get_mut(&key_of(event)) else {
                    continue;
                };
                report.tampered.extend(link.step(event));
            }
            match events.last() {
                Some(e) if events.len() as i64 == PAGE => after = e.global_position.0,
                _ => break,
            }
        }
        tx.commit().await?;
        report.streams_checked = links.len() as u64;
        report.tampered.sort_by(|a, b| {
            (a.tenant_id.as_str(), a.stream_id.as_str())
                .cmp(&(b.tenant_id.as_str(), b.stream_id.as_str()))
        });
        Ok(report)
    }
}

async fn link_new_streams(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    links: &mut HashMap<StreamKey, Link>,
    predecessors: &str,
) -> Result<(), StoreError> {
    let mut keys = Vec::new();
    let mut versions = Vec::new();
    for event in events {
        let key = key_of(event);
        if links.contains_key(&key) {
            continue;
        }
        links.insert(
            key.clone(),
            Link {
                next_version: event.stream_version,
                prev: GENESIS,
                failed: false,
            },
        );
        if event.stream_version > 1 {
            keys.push(key);
            versions.push(i64::try_from(event.stream_version - 1).unwrap_or(i64::MAX));
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    let (tenants, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(t, s)| (t.as_str(), s.as_str())).unzip();
    let rows = sqlx::query(predecessors)
        .bind(&tenants)
        .bind(&ids)
        .bind(&versions)
        .fetch_all(&mut *conn)
        .await?;
    let mut found: HashMap<StreamKey, [u8; 32]> = HashMap::with_capacity(rows.len());
    for row in rows {
        let hash: Vec<u8> = row.try_get("hash")?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("hash is not 32 bytes".into()))?;
        found.insert((row.try_get("tenant_id")?, row.try_get("stream_id")?), hash);
    }
    for key in keys {
        if let Some(link) = links.get_mut(&key) {
            match found.get(&key) {
                Some(hash) => link.prev = *hash,
                // The predecessor is gone: expecting it makes the first event in range
                // report exactly that version as missing.
                None => link.next_version = link.next_version.saturating_sub(1),
            }
        }
    }
    Ok(())
}
