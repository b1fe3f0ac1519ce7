//! Applying batches of events to a projection, effectively once, and the run loop.
//!
//! One batch = one transaction: the projection's writes, the per-stream versions
//! (`projection_streams`), dead letters, progress and (store mode) the checkpoint commit together.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{
    Direction, EventStore, Position, RecordedEvent, StreamId, Waker, load_checkpoint,
};
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::projection::{Projection, ProjectionError};
use crate::source::EventSource;

/// Channel on which a runner announces each batch committed to the live tables, after the
/// commit (payload: the projection's checkpoint name), so that readers waiting for a position
/// (the query API's `min_position`) need not poll. Coalesced: one notification may stand for
/// several batches.
pub const PROGRESS_CHANNEL: &str = "annals_projection_progress";

/// Schema holding a projection's fresh tables during a rebuild (see [`crate::rebuild`]).
pub const REBUILD_SCHEMA: &str = "annals_rebuild";

/// Tuning of a [`Runner`]; the defaults are the worker's defaults.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Attempts per event before it is dead-lettered (careful path).
    pub max_attempts: u32,
    /// Pause between attempts of one event (multiplied by the attempt number).
    pub retry_backoff: Duration,
    /// First pause after a failed batch (doubles up to 30 s).
    pub restart_backoff: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            restart_backoff: Duration::from_millis(200),
        }
    }
}

/// The store checkpoint a batch moves: it must still be `expected` when the batch commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointMove {
    /// The checkpoint the batch was read after.
    pub expected: Position,
    /// Where the checkpoint goes with this batch.
    pub to: Position,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Events applied.
    pub applied: u64,
    /// Events skipped as already applied (redelivery).
    pub duplicates: u64,
    /// Events read from the store to fill a version gap, then applied.
    pub gap_filled: u64,
    /// Events dead-lettered after the retries.
    pub dead_lettered: u64,
    /// Events parked behind a dead-lettered event of their stream.
    pub parked: u64,
}

/// Where a batch is written: the live tables, or the rebuild's shadow schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Live,
    Shadow,
}

#[derive(Debug)]
enum AttemptError {
    /// A handler failed on the fast path: replay the batch carefully.
    Handler(ProjectionError),
    /// Anything else: the batch failed as a whole.
    Other(ProjectionError),
}

impl<E: Into<ProjectionError>> From<E> for AttemptError {
    fn from(e: E) -> Self {
        AttemptError::Other(e.into())
    }
}

#[derive(Debug, Clone, Copy)]
struct StreamState {
    version: u64,
    last_position: i64,
    parked: bool,
    dirty: bool,
}

/// Applies batches to one projection and runs it against a source.
#[derive(Clone)]
pub struct Runner {
    pool: PgPool,
    store: EventStore,
    projection: Arc<dyn Projection>,
    options: RunnerOptions,
    progress: Arc<Waker>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("projection", &self.projection.name())
            .field("options", &self.options)
            .finish()
    }
}

impl Runner {
    /// A runner of `projection` over the store's database.
    pub fn new(store: EventStore, projection: Arc<dyn Projection>, options: RunnerOptions) -> Self {
        let progress = Arc::new(Waker::new(PROGRESS_CHANNEL, projection.checkpoint_name()));
        Self {
            pool: store.pool().clone(),
            store,
            projection,
            options,
            progress,
        }
    }

    /// The projection.
    pub fn projection(&self) -> &Arc<dyn Projection> {
        &self.projection
    }

    /// Applies `events` (any order across streams, duplicates allowed) to the live tables in
    /// one transaction, moving the store checkpoint when given.
    pub async fn process(
        &self,
        events: &[RecordedEvent],
        checkpoint: Option<CheckpointMove>,
    ) -> Result<BatchStats, ProjectionError> {
        self.process_to(events, checkpoint, Target::Live).await
    }

    pub(crate) async fn process_to(
        &self,
        events: &[RecordedEvent],
        checkpoint: Option<CheckpointMove>,
        target: Target,
    ) -> Result<BatchStats, ProjectionError> {
        let mine: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| self.projection.handles(&e.stream_type))
            .collect();
        let max_position = events.iter().map(|e| e.global_position.0).max();
        match self
            .attempt(&mine, max_position, checkpoint, target, false)
            .await
        {
            Ok(stats) => Ok(stats),
            Err(AttemptError::Handler(err)) => {
                tracing::warn!(
                    projection = self.projection.name(),
                    error = %err,
                    "handler failed; replaying the batch event by event"
                );
                self.attempt(&mine, max_position, checkpoint, target, true)
                    .await
                    .map_err(|e| match e {
                        AttemptError::Handler(e) | AttemptError::Other(e) => e,
                    })
            }
            Err(AttemptError::Other(err)) => Err(err),
        }
    }

    async fn attempt(
        &self,
        events: &[&RecordedEvent],
        max_position: Option<i64>,
        checkpoint: Option<CheckpointMove>,
        target: Target,
        careful: bool,
    ) -> Result<BatchStats, AttemptError> {
        let name = self.projection.name();
        let mut tx = self.pool.begin().await?;
        match target {
            Target::Shadow => {
                // The schema name is the fixed constant REBUILD_SCHEMA, never input.
                sqlx::query("SET LOCAL search_path TO annals_rebuild, public")
                    .execute(&mut *tx)
                    .await?;
            }
            Target::Live => {
                // Shared with other runners of this projection (Kafka workers of one group),
                // exclusive against a rebuild's swap.
                sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
                    .bind(self.projection.checkpoint_name())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(cp) = checkpoint {
            let stored = load_checkpoint(&mut *tx, &self.projection.checkpoint_name()).await?;
            if stored != cp.expected {
                return Err(AttemptError::Other(ProjectionError::Fenced {
                    projection: name.to_owned(),
                }));
            }
        }

        let mut streams = self.lock_streams(&mut tx, events).await?;
        let mut stats = BatchStats::default();
        for event in events {
            self.apply_one(&mut tx, event, &mut streams, careful, &mut stats)
                .await?;
        }
        write_streams(&mut tx, name, &streams).await?;
        if let (Target::Live, Some(position)) = (target, max_position) {
            sqlx::query(
                "INSERT INTO projection_progress (projection, position, updated_at) \
                 VALUES ($1, $2, now()) ON CONFLICT (projection) DO UPDATE \
                 SET position = GREATEST(projection_progress.position, excluded.position), \
                     updated_at = now()",
            )
            .bind(name)
            .bind(position)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(cp) = checkpoint {
            event_store::save_checkpoint(&mut *tx, &self.projection.checkpoint_name(), cp.to)
                .await?;
        }
        tx.commit().await?;
        if target == Target::Live {
            self.progress.wake(&self.pool);
        }
        Ok(stats)
    }

    /// Locks every stream of the batch (sorted: no deadlocks between workers during a
    /// rebalance) and loads its applied version and whether it is parked.
    async fn lock_streams(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<HashMap<String, StreamState>, AttemptError> {
        let ids: Vec<String> = events
            .iter()
            .map(|e| e.stream_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut streams = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(streams);
        }
        let name = self.projection.name();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(k) FROM ( \
               SELECT hashtextextended($1 || '/' || s, 0) AS k FROM unnest($2::text[]) s \
               ORDER BY 1) q",
        )
        .bind(name)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
        let rows = sqlx::query(
            "SELECT s.stream_id, s.version, s.last_position, EXISTS ( \
               SELECT 1 FROM projection_dead_letters d \
                WHERE d.projection = s.projection AND d.stream_id = s.stream_id \
                  AND d.status = 'open') AS parked \
               FROM projection_streams s WHERE s.projection = $1 AND s.stream_id = ANY($2)",
        )
        .bind(name)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let version: i64 = row.try_get("version")?;
            streams.insert(
                row.try_get("stream_id")?,
                StreamState {
                    version: u64::try_from(version).unwrap_or(0),
                    last_position: row.try_get("last_position")?,
                    parked: row.try_get("parked")?,
                    dirty: false,
                },
            );
        }
        Ok(streams)
    }

    async fn apply_one(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
        streams: &mut HashMap<String, StreamState>,
        careful: bool,
        stats: &mut BatchStats,
    ) -> Result<(), AttemptError> {
        let state = *streams
            .entry(event.stream_id.clone())
            .or_insert(StreamState {
                version: 0,
                last_position: 0,
                parked: false,
                dirty: false,
            });
        if event.stream_version <= state.version {
            stats.duplicates += 1;
            return Ok(());
        }
        if state.parked {
            dead_letter(
                conn,
                self.projection.name(),
                event,
                "parked",
                "waiting behind an earlier failed event of this stream",
                0,
            )
            .await?;
            stats.parked += 1;
            return Ok(());
        }
        if event.stream_version > state.version + 1 {
            let stream = StreamId::new(event.stream_id.clone())?;
            let missing =
                u32::try_from(event.stream_version - state.version - 1).unwrap_or(u32::MAX);
            let gap = self
                .store
                .read_stream(&stream, state.version + 1, Direction::Forward, missing)
                .await?;
            tracing::info!(
                projection = self.projection.name(),
                stream_id = %event.stream_id,
                from = state.version + 1,
                to = event.stream_version - 1,
                "filling a version gap from the store"
            );
            for earlier in gap
                .iter()
                .filter(|e| e.stream_version < event.stream_version)
            {
                self.apply_checked(conn, earlier, streams, careful, stats)
                    .await?;
                stats.gap_filled += 1;
                if streams.get(&event.stream_id).is_some_and(|s| s.parked) {
                    break;
                }
            }
            let now = streams.get(&event.stream_id).copied();
            if now.is_some_and(|s| s.parked || s.version + 1 != event.stream_version) {
                if now.is_some_and(|s| s.parked) {
                    dead_letter(
                        conn,
                        self.projection.name(),
                        event,
                        "parked",
                        "waiting behind an earlier failed event of this stream",
                        0,
                    )
                    .await?;
                    stats.parked += 1;
                    return Ok(());
                }
                return Err(AttemptError::Other(ProjectionError::Inconsistent(format!(
                    "stream {} has a gap before version {} that the store cannot fill",
                    event.stream_id, event.stream_version
                ))));
            }
        }
        self.apply_checked(conn, event, streams, careful, stats)
            .await
    }

    /// Applies an event that is the next of its stream: directly on the fast path; in a
    /// savepoint with bounded retries, then as a dead letter, on the careful path.
    async fn apply_checked(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
        streams: &mut HashMap<String, StreamState>,
        careful: bool,
        stats: &mut BatchStats,
    ) -> Result<(), AttemptError> {
        let advance = |streams: &mut HashMap<String, StreamState>| {
            if let Some(s) = streams.get_mut(&event.stream_id) {
                s.version = event.stream_version;
                s.last_position = event.global_position.0;
                s.dirty = true;
            }
        };
        if !careful {
            self.projection
                .apply(conn, event)
                .await
                .map_err(AttemptError::Handler)?;
            advance(streams);
            stats.applied += 1;
            return Ok(());
        }
        let mut last_error = None;
        for attempt in 1..=self.options.max_attempts.max(1) {
            sqlx::query("SAVEPOINT annals_event")
                .execute(&mut *conn)
                .await?;
            match self.projection.apply(conn, event).await {
                Ok(()) => {
                    sqlx::query("RELEASE SAVEPOINT annals_event")
                        .execute(&mut *conn)
                        .await?;
                    advance(streams);
                    stats.applied += 1;
                    return Ok(());
                }
                Err(err) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT annals_event")
                        .execute(&mut *conn)
                        .await?;
                    tracing::warn!(
                        projection = self.projection.name(),
                        event_id = %event.event_id,
                        event_type = %event.event_type,
                        attempt,
                        error = %err,
                        "handler failed"
                    );
                    last_error = Some(err);
                    if attempt < self.options.max_attempts {
                        tokio::time::sleep(self.options.retry_backoff * attempt).await;
                    }
                }
            }
        }
        let error = last_error.map_or_else(String::new, |e| e.to_string());
        dead_letter(
            conn,
            self.projection.name(),
            event,
            "failed",
            &error,
            i32::try_from(self.options.max_attempts).unwrap_or(i32::MAX),
        )
        .await?;
        metrics::counter!("annals_projection_dead_letters_total",
            "projection" => self.projection.name())
        .increment(1);
        if let Some(s) = streams.get_mut(&event.stream_id) {
            s.parked = true;
            // The row must exist so that later batches see the stream as parked.
            s.dirty = true;
        }
        stats.dead_lettered += 1;
        Ok(())
    }

    /// Runs the projection against `source` until `shutdown`; a failed batch is retried from
    /// the source's last durable point after a growing pause.
    pub async fn run(
        &self,
        source: &mut dyn EventSource,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectionError> {
        let name = self.projection.name();
        let mut backoff = self.options.restart_backoff;
        loop {
            let batch = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                batch = source.next_batch() => batch,
            };
            let started = Instant::now();
            let outcome = match batch {
                Ok(batch) => {
                    let span = info_span!(
                        "projection.batch",
                        projection = name,
                        events = batch.events.len(),
                        first = batch.events.first().map(|e| e.global_position.0),
                        last = batch.events.last().map(|e| e.global_position.0)
                    );
                    async {
                        let stats = self.process(&batch.events, batch.checkpoint).await?;
                        source.ack().await?;
                        Ok::<_, ProjectionError>(stats)
                    }
                    .instrument(span)
                    .await
                }
                Err(e) => Err(e),
            };
            let outcome = match outcome {
                Ok(stats) if stats == BatchStats::default() && source.reconciles() => {
                    self.reconcile().await.map(|filled| BatchStats {
                        gap_filled: filled,
                        ..stats
                    })
                }
                other => other,
            };
            match outcome {
                Ok(stats) => {
                    backoff = self.options.restart_backoff;
                    record_stats(name, &stats, started.elapsed());
                    tracing::debug!(projection = name, ?stats, "batch applied");
                }
                Err(err) => {
                    tracing::warn!(projection = name, error = %err, backoff_ms = backoff.as_millis() as u64,
                        "batch failed; resuming from the last durable point");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if let Err(err) = source.rewind().await {
                        tracing::warn!(projection = name, error = %err, "rewinding the source failed");
                    }
                }
            }
        }
    }
}

impl Runner {
    /// Applies, from the store, the events of streams whose applied version is behind the
    /// store's head (parked streams excepted: they wait for the dead-letter tools). A safety net
    /// for sources that may fail to deliver (Kafka); returns the events applied.
    pub async fn reconcile(&self) -> Result<u64, ProjectionError> {
        let p = self.projection.as_ref();
        let types: Option<Vec<String>> = p
            .stream_types()
            .map(|t| t.iter().map(|s| (*s).to_owned()).collect());
        let behind: Vec<(String, i64)> = sqlx::query_as(
            "SELECT s.stream_id, COALESCE(ps.version, 0) FROM streams s \
               LEFT JOIN projection_streams ps \
                 ON ps.projection = $1 AND ps.stream_id = s.stream_id \
              WHERE ($2::text[] IS NULL OR s.stream_type = ANY($2)) \
                AND COALESCE(ps.version, 0) < s.version \
                AND NOT EXISTS (SELECT 1 FROM projection_dead_letters d \
                                 WHERE d.projection = $1 AND d.stream_id = s.stream_id \
                                   AND d.status = 'open') \
              ORDER BY s.stream_id LIMIT 100",
        )
        .bind(p.name())
        .bind(&types)
        .fetch_all(&self.pool)
        .await?;
        let mut events = Vec::new();
        for (stream, applied) in &behind {
            let id = StreamId::new(stream.clone())?;
            let from = u64::try_from(*applied).unwrap_or(0) + 1;
            events.extend(
                self.store
                    .read_stream(&id, from, Direction::Forward, 500)
                    .await?,
            );
        }
        if events.is_empty() {
            return Ok(0);
        }
        tracing::warn!(
            projection = p.name(),
            streams = behind.len(),
            events = events.len(),
            "source idle while streams are behind the store; applying from the store"
        );
        let stats = self.process(&events, None).await?;
        Ok(stats.applied + stats.gap_filled)
    }
}

fn record_stats(name: &'static str, stats: &BatchStats, elapsed: Duration) {
    metrics::counter!("annals_projection_events_total", "projection" => name, "outcome" => "applied")
        .increment(stats.applied + stats.gap_filled);
    metrics::counter!("annals_projection_events_total", "projection" => name, "outcome" => "duplicate")
        .increment(stats.duplicates);
    metrics::counter!("annals_projection_events_total", "projection" => name, "outcome" => "parked")
        .increment(stats.parked);
    metrics::histogram!("annals_projection_batch_seconds", "projection" => name)
        .record(elapsed.as_secs_f64());
}

async fn write_streams(
    conn: &mut PgConnection,
    projection: &str,
    streams: &HashMap<String, StreamState>,
) -> Result<(), sqlx::Error> {
    let dirty: Vec<(&String, &StreamState)> = streams.iter().filter(|(_, s)| s.dirty).collect();
    if dirty.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = dirty.iter().map(|(id, _)| id.as_str()).collect();
    let versions: Vec<i64> = dirty
        .iter()
        .map(|(_, s)| i64::try_from(s.version).unwrap_or(i64::MAX))
        .collect();
    let positions: Vec<i64> = dirty.iter().map(|(_, s)| s.last_position).collect();
    sqlx::query(
        "INSERT INTO projection_streams (projection, stream_id, version, last_position) \
         SELECT $1, s, v, p FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(s, v, p) \
         ON CONFLICT (projection, stream_id) DO UPDATE \
         SET version = excluded.version, last_position = excluded.last_position",
    )
    .bind(projection)
    .bind(&ids)
    .bind(&versions)
    .bind(&positions)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records `event` as a dead letter of `projection` (kind `failed` or `parked`), reopening it
/// if it was resolved before.
pub(crate) async fn dead_letter(
    conn: &mut PgConnection,
    projection: &str,
    event: &RecordedEvent,
    kind: &str,
    error: &str,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    tracing::warn!(projection, event_id = %event.event_id, stream_id = %event.stream_id,
        stream_version = event.stream_version, kind, error, "dead letter");
    sqlx::query(
        "INSERT INTO projection_dead_letters (projection, event_id, global_position, stream_id, \
           stream_type, stream_version, tenant_id, event_type, kind, error, attempts, \
           first_failed_at, last_failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now(), now()) \
         ON CONFLICT (projection, event_id) DO UPDATE SET status = 'open', kind = excluded.kind, \
           error = excluded.error, attempts = projection_dead_letters.attempts + excluded.attempts, \
           last_failed_at = now(), resolved_at = NULL",
    )
    .bind(projection)
    .bind(event.event_id)
    .bind(event.global_position.0)
    .bind(&event.stream_id)
    .bind(&event.stream_type)
    .bind(i64::try_from(event.stream_version).unwrap_or(i64::MAX))
    .bind(&event.tenant_id)
    .bind(&event.event_type)
    .bind(kind)
    .bind(error)
    .bind(attempts)
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies `event` to `projection` in a savepoint, once, for the dead-letter tools: returns the
/// handler's error instead of dead-lettering.
pub(crate) async fn apply_once(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    event: &RecordedEvent,
) -> Result<Result<(), ProjectionError>, sqlx::Error> {
    sqlx::query("SAVEPOINT annals_event")
        .execute(&mut *conn)
        .await?;
    match projection.apply(conn, event).await {
        Ok(()) => {
            sqlx::query("RELEASE SAVEPOINT annals_event")
                .execute(&mut *conn)
                .await?;
            Ok(Ok(()))
        }
        Err(e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT annals_event")
                .execute(&mut *conn)
                .await?;
            Ok(Err(e))
        }
    }
}
