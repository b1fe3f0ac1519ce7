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
    /// The stream.
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
    /// One entry per broken stream (its first problem), in stream id order.
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
    stream_id: String,
    next_version: u64,
    prev: [u8; 32],
    failure: Option<Tampering>,
}

impl ChainWalk {
    fn new(stream_id: &str) -> Self {
        Self {
            stream_id: stream_id.to_owned(),
            next_version: 1,
            prev: GENESIS,
            failure: None,
        }
    }

    fn fail(&mut self, event: &RecordedEvent, kind: TamperKind) {
        if self.failure.is_none() {
            self.failure = Some(Tampering {
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
                stream_id: self.stream_id.clone(),
                global_position: None,
                stream_version: None,
                kind: TamperKind::MissingHead,
            }),
            Some(h) if h.version != last_version || h.last_hash != self.prev => {
                self.failure.get_or_insert(Tampering {
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

impl EventStore {
    /// Verifies one stream's chain and head.
    pub async fn verify_stream(&self, stream_id: &StreamId) -> Result<VerifyReport, StoreError> {
        self.verify_range(Some(stream_id.as_str()), Some(stream_id.as_str()))
            .await
    }

    /// Verifies every stream: each event's hash, contiguous versions, and each stream head.
    pub async fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        self.verify_range(None, None).await
    }

    /// Verifies streams whose ids lie in `[first, last]` (unbounded where `None`), paging through
    /// events in (stream, version) order so memory stays flat however large the store is.
    async fn verify_range(
        &self,
        first: Option<&str>,
        last: Option<&str>,
    ) -> Result<VerifyReport, StoreError> {
        const EVENTS: &str = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE (stream_id, stream_version) > ($1, $2) \
               AND ($3::text IS NULL OR stream_id <= $3) \
             ORDER BY stream_id, stream_version LIMIT $4"
        );
        // One snapshot for events and heads: read apart, an append committing in between made
        // a healthy stream look truncated.
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut report = VerifyReport::default();
        let mut cursor = (first.map_or(String::new(), |f| f.to_owned()), 0_i64);
        let mut walk: Option<ChainWalk> = None;
        loop {
            let rows = sqlx::query(EVENTS)
                .bind(&cursor.0)
                .bind(cursor.1)
                .bind(last)
                .bind(PAGE)
                .fetch_all(&mut *tx)
                .await?;
            let events = rows
                .iter()
                .map(decode_event)
                .collect::<Result<Vec<_>, _>>()?;
            let heads = heads_of(&mut tx, &events).await?;
            for event in &events {
                if walk.as_ref().is_none_or(|w| w.stream_id != event.stream_id) {
                    if let Some(done) = walk.take() {
                        finish_walk(&mut tx, done, &heads, &mut report).await?;
                    }
                    walk = Some(ChainWalk::new(&event.stream_id));
                }
                if let Some(w) = walk.as_mut() {
                    w.step(event);
                }
                report.events_checked += 1;
            }
            match events.last() {
                Some(e) if events.len() as i64 == PAGE => {
                    cursor = (e.stream_id.clone(), e.stream_version as i64);
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
            "SELECT stream_id FROM streams s \
              WHERE ($1::text IS NULL OR stream_id >= $1) AND ($2::text IS NULL OR stream_id <= $2) \
                AND NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.stream_id) \
              ORDER BY stream_id",
        )
        .bind(first)
        .bind(last)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for row in orphans {
            report.streams_checked += 1;
            report.tampered.push(Tampering {
                stream_id: row.try_get("stream_id")?,
                global_position: None,
                stream_version: Some(1),
                kind: TamperKind::StreamWithoutEvents,
            });
        }
        report
            .tampered
            .sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        Ok(report)
    }
}

async fn heads_of(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
) -> Result<HashMap<String, StreamHead>, StoreError> {
    let mut ids: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
    ids.dedup();
    let rows = sqlx::query(
        "SELECT stream_id, stream_type, tenant_id, version, last_hash FROM streams \
             WHERE stream_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| decode_head(r).map(|h| (h.stream_id.clone(), h)))
        .collect()
}

/// Closes a stream's walk against its head (fetched on demand when the stream spans pages).
async fn finish_walk(
    conn: &mut PgConnection,
    walk: ChainWalk,
    heads: &HashMap<String, StreamHead>,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let head = match heads.get(&walk.stream_id) {
        Some(h) => Some(h.clone()),
        None => sqlx::query(
            "SELECT stream_id, stream_type, tenant_id, version, last_hash FROM streams \
                 WHERE stream_id = $1",
        )
        .bind(&walk.stream_id)
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
