//! Dead letters: list, retry and skip.
//!
//! A stream with an open `failed` dead letter is parked: its later events are dead-lettered as
//! `parked` instead of being applied. [`retry`] replays a parked stream from its applied
//! version, in stream order, reading the events from the store; it stops at the first event
//! that still fails (which stays `failed`, with the new error). [`skip`] marks a failed event
//! `skipped` (counted as applied, never to be applied) and then retries the rest of its stream.
//! Both take the same per-stream lock as the runner, so they never interleave with live work.

use chrono::{DateTime, Utc};
use event_store::{Direction, EventStore, StreamId};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::projection::{Projection, ProjectionError};
use crate::runner::apply_once;

/// A dead letter as listed by the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Projection that failed.
    pub projection: String,
    /// The event.
    pub event_id: Uuid,
    /// Its global position.
    pub global_position: i64,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: i64,
    /// Its type.
    pub event_type: String,
    /// `failed` or `parked`.
    pub kind: String,
    /// `open`, `resolved` or `skipped`.
    pub status: String,
    /// The last error.
    pub error: String,
    /// Attempts so far.
    pub attempts: i32,
    /// Last failure time.
    pub last_failed_at: DateTime<Utc>,
}

/// Dead letters of `projection` (all projections when `None`), open ones only unless `all`.
pub async fn list(
    pool: &PgPool,
    projection: Option<&str>,
    all: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT projection, event_id, global_position, stream_id, stream_version, event_type, \
           kind, status, error, attempts, last_failed_at FROM projection_dead_letters \
         WHERE ($1::text IS NULL OR projection = $1) AND ($2 OR status = 'open') \
         ORDER BY projection, global_position LIMIT $3",
    )
    .bind(projection)
    .bind(all)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                projection: r.try_get("projection")?,
                event_id: r.try_get("event_id")?,
                global_position: r.try_get("global_position")?,
                stream_id: r.try_get("stream_id")?,
                stream_version: r.try_get("stream_version")?,
                event_type: r.try_get("event_type")?,
                kind: r.try_get("kind")?,
                status: r.try_get("status")?,
                error: r.try_get("error")?,
                attempts: r.try_get("attempts")?,
                last_failed_at: r.try_get("last_failed_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Outcome of a retry over one or more streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryReport {
    /// Streams looked at.
    pub streams: u64,
    /// Events applied.
    pub applied: u64,
    /// Events skipped on request.
    pub skipped: u64,
    /// Streams still parked (an event failed again).
    pub still_failing: u64,
}

/// Retries every parked stream of `projection` (or only the streams named `stream_id`, in
/// whichever tenants have one).
pub async fn retry(
    store: &EventStore,
    projection: &dyn Projection,
    stream_id: Option<&str>,
) -> Result<RetryReport, ProjectionError> {
    let streams: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT tenant_id, stream_id FROM projection_dead_letters \
         WHERE projection = $1 AND status = 'open' AND ($2::text IS NULL OR stream_id = $2) \
         ORDER BY tenant_id, stream_id",
    )
    .bind(projection.name())
    .bind(stream_id)
    .fetch_all(store.pool())
    .await?;
    let mut report = RetryReport::default();
    for (tenant, stream) in streams {
        replay_stream(store, projection, &tenant, &stream, None, &mut report).await?;
    }
    Ok(report)
}

/// Marks the failed event `event_id` of `projection` as skipped and retries the rest of its
/// stream. Returns `None` when there is no such open dead letter.
pub async fn skip(
    store: &EventStore,
    projection: &dyn Projection,
    event_id: Uuid,
) -> Result<Option<RetryReport>, ProjectionError> {
    let stream: Option<(String, String)> = sqlx::query_as(
        "SELECT tenant_id, stream_id FROM projection_dead_letters \
         WHERE projection = $1 AND event_id = $2 AND status = 'open'",
    )
    .bind(projection.name())
    .bind(event_id)
    .fetch_optional(store.pool())
    .await?;
    let Some((tenant, stream)) = stream else {
        return Ok(None);
    };
    let mut report = RetryReport::default();
    replay_stream(
        store,
        projection,
        &tenant,
        &stream,
        Some(event_id),
        &mut report,
    )
    .await?;
    Ok(Some(report))
}

async fn replay_stream(
    store: &EventStore,
    projection: &dyn Projection,
    tenant: &str,
    stream: &str,
    skip: Option<Uuid>,
    report: &mut RetryReport,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    report.streams += 1;
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
        .bind(projection.checkpoint_name())
        .execute(&mut *tx)
        .await?;
    // The runner's lock of this stream (see `Runner::lock_streams`).
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || annals_stream_lock_key($2, $3), 0))",
    )
    .bind(name)
    .bind(tenant)
    .bind(stream)
        .execute(&mut *tx)
        .await?;
    let applied: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM projection_streams \
         WHERE projection = $1 AND tenant_id = $2 AND stream_id = $3",
    )
    .bind(name)
    .bind(tenant)
    .bind(stream)
    .fetch_optional(&mut *tx)
    .await?;
    let mut version = u64::try_from(applied.unwrap_or(0)).unwrap_or(0);
    let last_open: Option<i64> = sqlx::query_scalar(
        "SELECT max(stream_version) FROM projection_dead_letters \
         WHERE projection = $1 AND tenant_id = $2 AND stream_id = $3 AND status = 'open'",
    )
    .bind(name)
    .bind(tenant)
    .bind(stream)
    .fetch_one(&mut *tx)
    .await?;
    let Some(last_open) = last_open.and_then(|v| u64::try_from(v).ok()) else {
        return Ok(());
    };
    let mut last_position = 0_i64;
    let mut last_hash: Option<Vec<u8>> = None;
    let mut failed = false;
    if version < last_open {
        let stream_id = StreamId::new(stream)?;
        let count = u32::try_from(last_open - version).unwrap_or(u32::MAX);
        let events = store
            .read_stream(tenant, &stream_id, version + 1, Direction::Forward, count)
            .await?;
        for event in &events {
            if Some(event.event_id) == skip {
                close(&mut tx, name, event.event_id, "skipped").await?;
                report.skipped += 1;
            } else {
                match apply_once(&mut tx, projection, event).await? {
                    Ok(()) => {
                        close(&mut tx, name, event.event_id, "resolved").await?;
                        report.applied += 1;
                    }
                    Err(err) => {
                        tracing::warn!(projection = name, event_id = %event.event_id,
                            error = %err, "dead letter still fails");
                        crate::runner::dead_letter(
                            &mut tx,
                            name,
                            event,
                            "failed",
                            &err.to_string(),
                            1,
                        )
                        .await?;
                        failed = true;
                        break;
                    }
                }
            }
            version = event.stream_version;
            last_position = event.global_position.0;
            last_hash = Some(event.hash.to_vec());
        }
    }
    if failed {
        report.still_failing += 1;
    } else {
        // Everything up to the last open one is applied; stale entries (already applied by an
        // earlier retry) are closed too.
        sqlx::query(
            "UPDATE projection_dead_letters SET status = 'resolved', resolved_at = now() \
             WHERE projection = $1 AND tenant_id = $2 AND stream_id = $3 AND status = 'open' \
               AND stream_version <= $4",
        )
        .bind(name)
        .bind(tenant)
        .bind(stream)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    if last_position > 0 {
        sqlx::query(
            // The hash moves with the version: a stale one would make the runner reject the
            // stream's next Kafka message.
            "INSERT INTO projection_streams (projection, tenant_id, stream_id, version, \
               last_position, last_hash) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (projection, tenant_id, stream_id) \
             DO UPDATE SET version = excluded.version, last_position = excluded.last_position, \
               last_hash = excluded.last_hash",
        )
        .bind(name)
        .bind(tenant)
        .bind(stream)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(last_position)
        .bind(last_hash)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn close(
    conn: &mut PgConnection,
    projection: &str,
    event_id: Uuid,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE projection_dead_letters SET status = $3, resolved_at = now() \
         WHERE projection = $1 AND event_id = $2 AND status = 'open'",
    )
    .bind(projection)
    .bind(event_id)
    .bind(status)
    .execute(conn)
    .await?;
    Ok(())
}
