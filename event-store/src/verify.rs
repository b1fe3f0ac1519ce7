//! Tamper detection: recompute every hash chain from the stored bytes.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::error::StoreError;
use crate::hash::{GENESIS, event_hash};
use crate::store::{EventStore, decode_event, decode_head, event_columns};
use crate::types::{Position, RecordedEvent, StreamHead, StreamId};

/// What is wrong with a stream's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TamperKind {
    /// The stored hash does not match the recomputed one: a byte of this event (or the link to
    /// its predecessor) was changed, or rows were swapped.
    HashMismatch,
    /// A version is missing before this event: rows were deleted.
    MissingVersions {
        /// The version that should have come next.
        expected: u64,
    },
    /// The stream head says there are more events (or a different last hash) than stored:
    /// the tail was truncated or the head rewritten.
    HeadMismatch {
        /// Version recorded in the stream head.
        head_version: u64,
        /// Version of the last stored event.
        last_version: u64,
    },
    /// A stream head exists without any event.
    StreamWithoutEvents,
    /// Events exist without a stream head.
    MissingHead,
}

/// The first problem found in one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tampering {
    /// The tenant owning the stream.
    pub tenant_id: String,
    /// The stream (unique within its tenant).
    pub stream_id: String,
    /// Global position of the first bad event, when there is one to name.
    pub global_position: Option<Position>,
    /// Stream version of the first bad event.
    pub stream_version: Option<u64>,
    /// What is wrong.
    pub kind: TamperKind,
}

/// Outcome of a verification run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events whose hash was recomputed.
    pub events_checked: u64,
    /// Streams whose chain was walked.
    pub streams_checked: u64,
    /// One entry per broken stream (its first problem), in (tenant, stream id) order.
    pub tampered: Vec<Tampering>,
}

impl VerifyReport {
    /// True when nothing was found.
    pub fn is_intact(&self) -> bool {
        self.tampered.is_empty()
    }

    /// The problem with the lowest global position (heads without a position last).
    pub fn first_bad(&self) -> Option<&Tampering> {
        self.tampered
            .iter()
            .min_by_key(|t| t.global_position.map_or(i64::MAX, |p| p.0))
    }
}

/// Walks one stream's events in version order.
struct ChainWalk {
    tenant_id: String,
    stream_id: String,
    next_version: u64,
    prev: [u8; 32],
    failure: Option<Tampering>,
}

impl ChainWalk {
    fn new(tenant_id: &str, stream_id: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            stream_id: stream_id.to_owned(),
            next_version: 1,
            prev: GENESIS,
            failure: None,
        }
    }

    fn fail(&mut self, event: &RecordedEvent, kind: TamperKind) {
        if self.failure.is_none() {
            self.failure = Some(Tampering {
                tenant_id: self.tenant_id.clone(),
                stream_id: self.stream_id.clone(),
                global_position: Some(event.global_position),
                stream_version: Some(event.stream_version),
                kind,
            });
        }
    }

    fn step(&mut self, event: &RecordedEvent) {
        if event.stream_version != self.next_version {
            self.fail(
                event,
                TamperKind::MissingVersions {
                    expected: self.next_version,
                },
            );
        } else if event_hash(&self.prev, event) != event.hash {
            self.fail(event, TamperKind::HashMismatch);
        }
        // Continue from the stored values so that one bad row is reported, not its successors.
        self.prev = event.hash;
        self.next_version = event.stream_version + 1;
    }

    fn finish(mut self, head: Option<&StreamHead>) -> Option<Tampering> {
        let last_version = self.next_version - 1;
        match head {
            None => self.failure.get_or_insert(Tampering {
                tenant_id: self.tenant_id.clone(),
                stream_id: self.stream_id.clone(),
                global_position: None,
                stream_version: None,
                kind: TamperKind::MissingHead,
            }),
            Some(h) if h.version != last_version || h.last_hash != self.prev => {
                self.failure.get_or_insert(Tampering {
                    tenant_id: self.tenant_id.clone(),
                    stream_id: self.stream_id.clone(),
                    global_position: None,
                    stream_version: Some(last_version + 1),
                    kind: TamperKind::HeadMismatch {
                        head_version: h.version,
                        last_version,
                    },
                })
            }
            Some(_) => return self.failure,
        };
        self.failure
    }
}

const PAGE: i64 = 2_000;

/// Heads of a page's streams, by (tenant, stream).
type Heads = HashMap<(String, String), StreamHead>;

impl EventStore {
    /// Verifies one stream of `tenant`: its chain and head.
    pub async fn verify_stream(
        &self,
        tenant: &str,
        stream_id: &StreamId,
    ) -> Result<VerifyReport, StoreError> {
        self.verify_streams(Some((tenant, stream_id.as_str())))
            .await
    }

    /// Verifies every stream of every tenant: each event's hash, contiguous versions, and each
    /// stream head.
    pub async fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        self.verify_streams(None).await
    }

    /// Verifies one (tenant, stream) or all of them, paging through events in (tenant, stream,
    /// version) order so memory stays flat however large the store is.
    async fn verify_streams(&self, only: Option<(&str, &str)>) -> Result<VerifyReport, StoreError> {
        const EVENTS: &str = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE (tenant_id, stream_id, stream_version) > ($1, $2, $3) \
               AND ($4::text IS NULL OR (tenant_id = $4 AND stream_id = $5)) \
             ORDER BY tenant_id, stream_id, stream_version LIMIT $6"
        );
        let (only_tenant, only_stream) = only.unzip();
        // One snapshot for events and heads: read apart, an append committing in between made
        // a healthy stream look truncated.
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut report = VerifyReport::default();
        let mut cursor = only.map_or((String::new(), String::new(), 0_i64), |(t, s)| {
            (t.to_owned(), s.to_owned(), 0)
        });
        let mut walk: Option<ChainWalk> = None;
        loop {
            let rows = sqlx::query(EVENTS)
                .bind(&cursor.0)
                .bind(&cursor.1)
                .bind(cursor.2)
                .bind(only_tenant)
                .bind(only_stream)
                .bind(PAGE)
                .fetch_all(&mut *tx)
                .await?;
            let events = rows
                .iter()
                .map(decode_event)
                .collect::<Result<Vec<_>, _>>()?;
            let heads = heads_of(&mut tx, &events).await?;
            for event in &events {
                if walk.as_ref().is_none_or(|w| {
                    w.stream_id != event.stream_id || w.tenant_id != event.tenant_id
                }) {
                    if let Some(done) = walk.take() {
                        finish_walk(&mut tx, done, &heads, &mut report).await?;
                    }
                    walk = Some(ChainWalk::new(&event.tenant_id, &event.stream_id));
                }
                if let Some(w) = walk.as_mut() {
                    w.step(event);
                }
                report.events_checked += 1;
            }
            match events.last() {
                Some(e) if events.len() as i64 == PAGE => {
                    cursor = (
                        e.tenant_id.clone(),
                        e.stream_id.clone(),
                        e.stream_version as i64,
                    );
                }
                _ => break,
            }
        }
        if let Some(done) = walk.take() {
            let heads = HashMap::new();
            finish_walk(&mut tx, done, &heads, &mut report).await?;
        }

        // Heads whose events are all gone.
        let orphans = sqlx::query(
            "SELECT tenant_id, stream_id FROM streams s \
              WHERE ($1::text IS NULL OR (tenant_id = $1 AND stream_id = $2)) \
                AND NOT EXISTS (SELECT 1 FROM events e \
                                 WHERE e.tenant_id = s.tenant_id AND e.stream_id = s.stream_id) \
              ORDER BY tenant_id, stream_id",
        )
        .bind(only_tenant)
        .bind(only_stream)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for row in orphans {
            report.streams_checked += 1;
            report.tampered.push(Tampering {
                tenant_id: row.try_get("tenant_id")?,
                stream_id: row.try_get("stream_id")?,
                global_position: None,
                stream_version: Some(1),
                kind: TamperKind::StreamWithoutEvents,
            });
        }
        report.tampered.sort_by(|a, b| {
            (a.tenant_id.as_str(), a.stream_id.as_str())
                .cmp(&(b.tenant_id.as_str(), b.stream_id.as_str()))
        });
        Ok(report)
    }
}

async fn heads_of(conn: &mut PgConnection, events: &[RecordedEvent]) -> Result<Heads, StoreError> {
    let mut keys: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.tenant_id.as_str(), e.stream_id.as_str()))
        .collect();
    keys.dedup();
    let (tenants, ids): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    let rows = sqlx::query(HEADS_OF)
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| decode_head(r).map(|h| ((h.tenant_id.clone(), h.stream_id.clone()), h)))
        .collect()
}

/// Stream heads of (tenant, stream) pairs.
const HEADS_OF: &str = "SELECT st.stream_id, st.stream_type, st.tenant_id, st.version, st.last_hash \
       FROM unnest($1::text[], $2::text[]) AS k(tenant_id, stream_id) \
       JOIN streams st ON st.tenant_id = k.tenant_id AND st.stream_id = k.stream_id";

/// Closes a stream's walk against its head (fetched on demand when the stream spans pages),
/// within the verification's snapshot.
async fn finish_walk(
    conn: &mut PgConnection,
    walk: ChainWalk,
    heads: &Heads,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let key = (walk.tenant_id.clone(), walk.stream_id.clone());
    let head = match heads.get(&key) {
        Some(h) => Some(h.clone()),
        None => sqlx::query(HEADS_OF)
            .bind([walk.tenant_id.as_str()])
            .bind([walk.stream_id.as_str()])
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| decode_head(&r))
            .transpose()?,
    };
    report.streams_checked += 1;
    if let Some(t) = walk.finish(head.as_ref()) {
        report.tampered.push(t);
    }
    Ok(())
}
