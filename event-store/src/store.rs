//! [`EventStore`]: append, read, checkpoints.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Executor, Postgres, Row};
use tracing::instrument;
use uuid::Uuid;

use crate::error::StoreError;
use crate::hash;
use crate::notify::Waker;
use crate::subscription::NOTIFY_CHANNEL;
use crate::types::{
    AllBatch, AppendBatch, AppendResult, Direction, MAX_EVENTS_PER_APPEND, Position, RecordedEvent,
    StreamHead, StreamId, check_name,
};
use crate::writer::{GroupCommitOptions, GroupCommitStats, GroupWriter, Prepared};

/// A command's stored result: the JSON kept for commands logged before group commit, else its
/// events, which occupy a contiguous range of positions.
const LOGGED_COMMAND: &str = "\
    SELECT cl.fingerprint,
           coalesce(cl.result::text, annals_command_events(cl.first_position, cl.event_count))
      FROM command_log cl WHERE cl.tenant_id = $1 AND cl.command_id = $2";

const REBASE_POSITIONS: &str =
    "SELECT epoch, xid_offset, floor_position FROM annals_rebase_positions()";

/// A position epoch started by [`EventStore::rebase_positions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionEpoch {
    /// Its number (1 for the first rebase).
    pub epoch: i32,
    /// What is added to each new transaction id before it becomes a position.
    pub xid_offset: i64,
    /// Every event below this position was committed when the epoch began.
    pub floor: Position,
}

/// Columns of a [`RecordedEvent`], as read by [`decode_event`]. A macro so that queries stay
/// `&'static str` literals built with `concat!`, never formatted at run time.
macro_rules! event_columns {
    () => {
        "global_position, event_id, stream_id, stream_type, stream_version, tenant_id, \
         event_type, schema_version, payload::text AS payload, metadata::text AS metadata, \
         recorded_at, hash"
    };
}
pub(crate) use event_columns;

/// The Postgres event store. Cheap to clone (clones share the pool and the group writer).
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    writer: Arc<GroupWriter>,
}

impl EventStore {
    /// A store over `pool` with the default [`GroupCommitOptions`]; the schema must be migrated
    /// (see [`crate::migrate`]).
    pub fn new(pool: PgPool) -> Self {
        Self::with_options(pool, GroupCommitOptions::default())
    }

    /// A store over `pool` grouping concurrent appends as `options` says.
    pub fn with_options(pool: PgPool, options: GroupCommitOptions) -> Self {
        let waker = Arc::new(Waker::new(NOTIFY_CHANNEL, ""));
        Self {
            writer: Arc::new(GroupWriter::new(pool.clone(), options, waker)),
            pool,
        }
    }

    /// How many group transactions and appends this store (and its clones) sent so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.writer.stats()
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends a batch atomically: every stream's expected version is checked and every event
    /// is written in one transaction, or nothing is written.
    ///
    /// Concurrent appends share transactions (group commit, see [`crate::writer`]); each keeps
    /// its own outcome. With a command id, a retry with the same request returns the original
    /// result (with `replayed = true`) and appends nothing; a different request under the same
    /// id fails with [`StoreError::CommandIdReused`]. Stream ids and command ids are scoped to
    /// the batch's tenant: another tenant's stream or command id of the same spelling is another
    /// thing and never affects the outcome. An existing stream of the tenant holding another
    /// stream type fails with [`StoreError::StreamTypeMismatch`].
    #[instrument(name = "event_store.append", skip_all, fields(
        streams = batch.streams.len(),
        events = tracing::field::Empty,
        command_id = ?batch.command_id,
        tenant = %batch.metadata.tenant,
    ))]
    pub async fn append(&self, batch: AppendBatch) -> Result<AppendResult, StoreError> {
        let started = Instant::now();
        let prepared = prepare(&batch)?;
        tracing::Span::current().record("events", prepared.ev_ids.len());
        let outcome = self.writer.append(prepared).await;

        let outcome_label = match &outcome {
            Ok(r) if r.replayed => "replayed",
            Ok(_) => "appended",
            Err(StoreError::WrongExpectedVersion { .. }) => "conflict",
            Err(
                StoreError::CommandIdReused { .. }
                | StoreError::DuplicateEventId
                | StoreError::StreamTypeMismatch { .. },
            ) => "refused",
            Err(_) => "error",
        };
        metrics::histogram!("annals_append_duration_seconds", "outcome" => outcome_label)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("annals_appends_total", "outcome" => outcome_label).increment(1);
        if let Ok(r) = &outcome
            && !r.replayed
        {
            metrics::counter!("annals_events_appended_total").increment(r.events.len() as u64);
        }
        outcome
    }

    /// Starts a new position epoch (SQL `annals_rebase_positions()`): after the database was
    /// restored or replicated into another Postgres cluster, whose transaction ids are behind the
    /// stored ones, appends refuse with [`StoreError::PositionsBehind`] until this runs. New
    /// positions then follow every stored one; nothing stored is rewritten. Safe to run at any
    /// time (it waits for running appends).
    pub async fn rebase_positions(&self) -> Result<PositionEpoch, StoreError> {
        let (epoch, xid_offset, floor) = sqlx::query_as::<_, (i32, i64, i64)>(REBASE_POSITIONS)
            .fetch_one(&self.pool)
            .await?;
        Ok(PositionEpoch {
            epoch,
            xid_offset,
            floor: Position(floor),
        })
    }

    /// The stored result of `tenant`'s command that already appended, if any. Command handlers
    /// check this before deciding, so that a retry is answered even when deciding again would
    /// now be refused (e.g. a create whose aggregate exists since the first attempt). Command
    /// ids are scoped to the tenant: another tenant's command of the same id is not seen.
    pub async fn command_result(
        &self,
        tenant: &str,
        command_id: Uuid,
    ) -> Result<Option<AppendResult>, StoreError> {
        self.logged_command(tenant, command_id, None).await
    }

    /// Like [`EventStore::command_result`], but also checks the request: a command id stored
    /// with a different `fingerprint` fails with [`StoreError::CommandIdReused`]. Lets a handler
    /// refuse a reused id before deciding, exactly as the append itself would.
    pub async fn command_result_matching(
        &self,
        tenant: &str,
        command_id: Uuid,
        fingerprint: [u8; 32],
    ) -> Result<Option<AppendResult>, StoreError> {
        self.logged_command(tenant, command_id, Some(fingerprint))
            .await
    }

    async fn logged_command(
        &self,
        tenant: &str,
        command_id: Uuid,
        fingerprint: Option<[u8; 32]>,
    ) -> Result<Option<AppendResult>, StoreError> {
        let row = sqlx::query_as::<_, (Vec<u8>, String)>(LOGGED_COMMAND)
            .bind(tenant)
            .bind(command_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some((stored, _)) if fingerprint.is_some_and(|f| stored.as_slice() != f.as_slice()) => {
                Err(StoreError::CommandIdReused { command_id })
            }
            Some((_, detail)) => crate::writer::replayed(&detail).map(Some),
        }
    }

    /// Reads up to `limit` events of `tenant`'s stream starting at version `from` (inclusive),
    /// forward (ascending) or backward (descending). Stream ids are unique per tenant: another
    /// tenant's stream of the same id is never read.
    pub async fn read_stream(
        &self,
        tenant: &str,
        stream_id: &StreamId,
        from: u64,
        direction: Direction,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let sql = match direction {
            Direction::Forward => concat!(
                "SELECT ",
                event_columns!(),
                " FROM events WHERE tenant_id = $1 AND stream_id = $2 AND stream_version >= $3 \
                 ORDER BY stream_version LIMIT $4"
            ),
            Direction::Backward => concat!(
                "SELECT ",
                event_columns!(),
                " FROM events WHERE tenant_id = $1 AND stream_id = $2 AND stream_version <= $3 \
                 ORDER BY stream_version DESC LIMIT $4"
            ),
        };
        let rows = sqlx::query(sql)
            .bind(tenant)
            .bind(stream_id.as_str())
            .bind(from)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_event).collect()
    }

    /// The current head of `tenant`'s stream, `None` if the tenant has no such stream.
    pub async fn stream_head(
        &self,
        tenant: &str,
        stream_id: &StreamId,
    ) -> Result<Option<StreamHead>, StoreError> {
        let row = sqlx::query(
            "SELECT stream_id, stream_type, tenant_id, version, last_hash FROM streams \
             WHERE tenant_id = $1 AND stream_id = $2",
        )
        .bind(tenant)
        .bind(stream_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| decode_head(&r)).transpose()
    }

    /// Reads up to `limit` events after `after` in global order.
    ///
    /// Gap-safe: an event is returned only when every event before it is final, so a reader
    /// that continues from the last returned position never skips one (see the crate docs).
    pub async fn read_all(&self, after: Position, limit: u32) -> Result<AllBatch, StoreError> {
        read_all_on(&self.pool, after, limit, None).await
    }

    /// Like [`EventStore::read_all`], restricted to the given stream types.
    pub async fn read_all_of_types(
        &self,
        after: Position,
        limit: u32,
        stream_types: &[String],
    ) -> Result<AllBatch, StoreError> {
        read_all_on(&self.pool, after, limit, Some(stream_types)).await
    }

    /// Position of the newest committed event (deliverable or not), `START` when empty.
    pub async fn head_position(&self) -> Result<Position, StoreError> {
        let pos: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(Position(pos.unwrap_or(0)))
    }

    /// A checkpoint stored under `name`, `START` when there is none.
    pub async fn load_checkpoint(&self, name: &str) -> Result<Position, StoreError> {
        load_checkpoint(&self.pool, name).await
    }
}

/// Reads a checkpoint on any executor (pool, connection or transaction).
pub async fn load_checkpoint<'e, E>(executor: E, name: &str) -> Result<Position, StoreError>
where
    E: Executor<'e, Database = Postgres>,
{
    let pos: Option<i64> =
        sqlx::query_scalar("SELECT position FROM subscription_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(executor)
            .await?;
    Ok(Position(pos.unwrap_or(0)))
}

/// Stores a checkpoint on any executor. Pass the consumer's transaction so that its effects
/// and its checkpoint commit together (effectively-once processing).
pub async fn save_checkpoint<'e, E>(
    executor: E,
    name: &str,
    position: Position,
) -> Result<(), StoreError>
where
    E: Executor<'e, Database = Postgres>,
{
    sqlx::query(
        "INSERT INTO subscription_checkpoints (name, position, updated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
    )
    .bind(name)
    .bind(position.0)
    .execute(executor)
    .await?;
    Ok(())
}

async fn read_all_on<'e, E>(
    executor: E,
    after: Position,
    limit: u32,
    stream_types: Option<&[String]>,
) -> Result<AllBatch, StoreError>
where
    E: Executor<'e, Database = Postgres>,
{
    // `deliverable` compares the row's xid with the xmin of this statement's own snapshot, so
    // visibility and the cut-off come from the same instant.
    // Below the current epoch's floor every event is known to be committed (see
    // `annals_rebase_positions`); restored rows there carry xids of another cluster.
    const ALL: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", (global_position < annals_delivery_floor() \
            OR tx_id < pg_snapshot_xmin(pg_current_snapshot())) AS deliverable \
         FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2"
    );
    const OF_TYPES: &str = concat!(
        "SELECT ",
        event_columns!(),
        ", (global_position < annals_delivery_floor() \
            OR tx_id < pg_snapshot_xmin(pg_current_snapshot())) AS deliverable \
         FROM events WHERE global_position > $1 AND stream_type = ANY($3) \
         ORDER BY global_position LIMIT $2"
    );
    let query = sqlx::query(if stream_types.is_some() {
        OF_TYPES
    } else {
        ALL
    })
    .bind(after.0)
    .bind(i64::from(limit.max(1)));
    let query = match stream_types {
        Some(types) => query.bind(types),
        None => query,
    };
    let rows = query.fetch_all(executor).await?;
    let mut events = Vec::with_capacity(rows.len());
    let mut held_back = false;
    for row in &rows {
        // Positions follow xid order, so the first held-back row ends the deliverable prefix.
        if !row.try_get::<bool, _>("deliverable")? {
            held_back = true;
            break;
        }
        events.push(decode_event(row)?);
    }
    Ok(AllBatch { events, held_back })
}

pub(crate) fn decode_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let hash: Vec<u8> = row.try_get("hash")?;
    Ok(RecordedEvent {
        global_position: Position(row.try_get("global_position")?),
        event_id: row.try_get("event_id")?,
        stream_id: row.try_get("stream_id")?,
        stream_type: row.try_get("stream_type")?,
        stream_version: non_negative(row.try_get("stream_version")?)?,
        tenant_id: row.try_get("tenant_id")?,
        event_type: row.try_get("event_type")?,
        schema_version: u32::try_from(row.try_get::<i32, _>("schema_version")?)
            .map_err(|_| StoreError::Corrupt("negative schema version".into()))?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
        hash: to_hash(hash)?,
    })
}

pub(crate) fn decode_head(row: &PgRow) -> Result<StreamHead, StoreError> {
    Ok(StreamHead {
        stream_id: row.try_get("stream_id")?,
        stream_type: row.try_get("stream_type")?,
        tenant_id: row.try_get("tenant_id")?,
        version: non_negative(row.try_get("version")?)?,
        last_hash: to_hash(row.try_get("last_hash")?)?,
    })
}

fn non_negative(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt("negative version".into()))
}

fn to_hash(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::Corrupt("hash is not 32 bytes".into()))
}

/// Validates a batch and flattens it for the group writer; every refusal here writes nothing.
fn prepare(batch: &AppendBatch) -> Result<Prepared, StoreError> {
    let invalid = |field, reason: &str| StoreError::InvalidInput {
        field,
        reason: reason.into(),
    };
    if batch.streams.is_empty() {
        return Err(invalid("streams", "a batch needs at least one stream"));
    }
    check_name("tenant", &batch.metadata.tenant)?;
    check_name("actor", &batch.metadata.actor)?;
    check_name("actor_type", &batch.metadata.actor_type)?;
    let total: usize = batch.streams.iter().map(|s| s.events.len()).sum();
    if total > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::InvalidInput {
            field: "events",
            reason: format!("at most {MAX_EVENTS_PER_APPEND} events per append"),
        });
    }

    let metadata =
        serde_json::to_string(&batch.metadata).map_err(|e| StoreError::InvalidInput {
            field: "metadata",
            reason: e.to_string(),
        })?;
    let mut prepared = Prepared {
        command_id: batch.command_id,
        // Filled in below, once the payloads are serialised.
        fingerprint: None,
        tenant: batch.metadata.tenant.clone(),
        bytes: metadata.len(),
        metadata,
        stream_ids: Vec::with_capacity(batch.streams.len()),
        stream_types: Vec::with_capacity(batch.streams.len()),
        expected: Vec::with_capacity(batch.streams.len()),
        counts: Vec::with_capacity(batch.streams.len()),
        ev_ids: Vec::with_capacity(total),
        ev_types: Vec::with_capacity(total),
        ev_schema_versions: Vec::with_capacity(total),
        ev_payloads: Vec::with_capacity(total),
    };
    let mut seen = HashSet::with_capacity(batch.streams.len());
    let mut event_ids = HashSet::with_capacity(total);
    for stream in &batch.streams {
        if !seen.insert(stream.stream_id.as_str()) {
            return Err(invalid(
                "streams",
                "a stream may appear only once per batch",
            ));
        }
        if stream.events.is_empty() {
            return Err(invalid(
                "events",
                "every stream of a batch needs at least one event",
            ));
        }
        check_name("stream_type", &stream.stream_type)?;
        prepared
            .stream_ids
            .push(stream.stream_id.as_str().to_owned());
        prepared.stream_types.push(stream.stream_type.clone());
        prepared.expected.push(stream.expected.to_sql()?);
        // `total` is bounded above, so the count fits.
        prepared
            .counts
            .push(i32::try_from(stream.events.len()).unwrap_or(i32::MAX));
        for event in &stream.events {
            check_name("event_type", &event.event_type)?;
            if !event_ids.insert(event.event_id) {
                return Err(StoreError::DuplicateEventId);
            }
            let schema_version = i32::try_from(event.schema_version)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| invalid("schema_version", "must be between 1 and 2^31-1"))?;
            let payload = event.payload.to_string();
            prepared.bytes += payload.len();
            prepared.ev_ids.push(event.event_id);
            prepared.ev_types.push(event.event_type.clone());
            prepared.ev_schema_versions.push(schema_version);
            prepared.ev_payloads.push(payload);
        }
    }
    if batch.command_id.is_some() {
        prepared.fingerprint = Some(batch.fingerprint.unwrap_or_else(|| {
            hash::fingerprint(batch, &prepared.metadata, &prepared.ev_payloads)
        }));
    }
    Ok(prepared)
}
