//! Applying batches of events to a projection, effectively once, and the run loop.
//!
//! One batch = one transaction: the projection's set-based writes, the per-stream versions and
//! hashes (`projection_streams`), dead letters, progress and the checkpoint commit together.
//! Pauses between attempts happen between transactions, never inside one.

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

/// Raises the projection's highest applied position (lag metrics, both source modes).
const UPSERT_PROGRESS: &str = "INSERT INTO projection_progress (projection, position, updated_at) \
     VALUES ($1, $2, now()) ON CONFLICT (projection) DO UPDATE \
     SET position = GREATEST(projection_progress.position, excluded.position), updated_at = now()";

/// Kafka mode (no store checkpoint moves with a batch): records, as the projection's store
/// checkpoint, the highest position `P` such that every event of its types at or below `P`
/// is applied (or dead-lettered), capped at the store's gap-safe high-water mark. That is what
/// a store runner's checkpoint means, so readers of `subscription_checkpoints` (the query
/// API's `min_position`) work in both modes. Never moves backwards. `$1` checkpoint name,
/// `$2` projection, `$3` stream types (NULL = all).
const ADVANCE_CONTIGUOUS: &str = "WITH cp AS ( \
       SELECT coalesce((SELECT position FROM subscription_checkpoints WHERE name = $1), 0) AS p), \
     hw AS ( \
       SELECT coalesce((SELECT global_position FROM events \
                         WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                         ORDER BY global_position DESC LIMIT 1), 0) AS p), \
     nx AS ( \
       SELECT min(e.global_position) AS p FROM events e \
         LEFT JOIN projection_streams ps ON ps.projection = $2 AND ps.tenant_id = e.tenant_id \
                                        AND ps.stream_id = e.stream_id \
        WHERE e.global_position > (SELECT p FROM cp) \
          AND ($3::text[] IS NULL OR e.stream_type = ANY($3)) \
          AND e.stream_version > coalesce(ps.version, 0) \
          AND NOT EXISTS (SELECT 1 FROM projection_dead_letters d \
                           WHERE d.projection = $2 AND d.event_id = e.event_id \
                             AND d.kind <> 'rejected')) \
     INSERT INTO subscription_checkpoints AS s (name, position, updated_at) \
     SELECT $1, GREATEST(cp.p, LEAST(hw.p, coalesce(nx.p - 1, hw.p))), now() FROM cp, hw, nx \
     ON CONFLICT (name) DO UPDATE SET position = GREATEST(s.position, excluded.position), \
       updated_at = now() \
     WHERE excluded.position > s.position";

/// Applied version, previous hash and parking of the streams of a batch. A stream is parked
/// behind an open `failed` or `parked` dead letter; a `rejected` message does not park it.
/// Rows from before the hashes were kept take the applied event's hash from the store.
/// Driven by the batch's ids (one primary-key probe each): `stream_id = ANY($2)` let a planner
/// without statistics (a rebuild's fresh shadow table) scan every stream of the projection and
/// compare it with every id of the batch, the slowest statement of a rebuild.
const LOAD_STREAMS: &str = "SELECT s.tenant_id, s.stream_id, s.version, s.last_position, \
       COALESCE(s.last_hash, (SELECT e.hash FROM events e \
                               WHERE e.tenant_id = s.tenant_id AND e.stream_id = s.stream_id \
                                 AND e.stream_version = s.version)) AS last_hash, \
       EXISTS (SELECT 1 FROM projection_dead_letters d \
                WHERE d.projection = s.projection AND d.tenant_id = s.tenant_id \
                  AND d.stream_id = s.stream_id \
                  AND d.status = 'open' AND d.kind <> 'rejected') AS parked \
     FROM unnest($2::text[], $3::text[]) AS ids(tenant_id, stream_id) \
     JOIN projection_streams s ON s.projection = $1 AND s.tenant_id = ids.tenant_id \
                              AND s.stream_id = ids.stream_id";

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
    /// Messages whose hash did not verify against their stream's chain (dead-lettered as
    /// `rejected`; the store's copy of the event was applied instead).
    pub rejected: u64,
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
    /// An event failed on the careful path and has attempts left: the transaction was rolled
    /// back; pause (outside any transaction) for this attempt's back-off, then replay.
    Retry {
        /// The failed attempt of that event (1-based).
        attempt: u32,
    },
    /// Anything else: the batch failed as a whole.
    Other(ProjectionError),
}

impl<E: Into<ProjectionError>> From<E> for AttemptError {
    fn from(e: E) -> Self {
        AttemptError::Other(e.into())
    }
}

/// A stream as the runner keys it: (tenant, stream id); stream ids are unique per tenant.
type StreamKey = (String, String);

fn stream_key(event: &RecordedEvent) -> StreamKey {
    (event.tenant_id.clone(), event.stream_id.clone())
}

/// The state of one pass over a batch (one transaction).
struct Pass<'a> {
    streams: HashMap<StreamKey, StreamState>,
    stats: BatchStats,
    /// Careful pass: each event applied alone in a savepoint; fast pass: events collected in
    /// `pending` and applied as one set.
    careful: bool,
    /// Fast pass: the events to apply, each the next of its stream, in application order.
    pending: Vec<RecordedEvent>,
    /// Failed attempts per event, kept across the careful passes of one batch.
    failures: &'a mut HashMap<uuid::Uuid, (u32, String)>,
    /// Check every event's hash against its stream's chain: the events did not come straight
    /// from the store (Kafka).
    verify: bool,
}

#[derive(Debug, Clone, Copy)]
struct StreamState {
    version: u64,
    /// Hash of the event at `version` (`None` only for a stream never applied).
    last_hash: Option<[u8; 32]>,
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
    /// one transaction, moving the store checkpoint when given. Without one (Kafka mode) every
    /// event's hash is checked against its stream's chain and the checkpoint is moved to the
    /// highest position below which every event of the projection's types is applied.
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
        let mut failures = HashMap::new();
        match self
            .attempt(
                &mine,
                max_position,
                checkpoint,
                target,
                false,
                &mut failures,
            )
            .await
        {
            Ok(stats) => return Ok(stats),
            Err(AttemptError::Handler(err)) => {
                tracing::warn!(
                    projection = self.projection.name(),
                    error = %err,
                    "batch failed; replaying it event by event to isolate the failure"
                );
            }
            Err(AttemptError::Retry { .. }) => {}
            Err(AttemptError::Other(err)) => return Err(err),
        }
        // Every careful pass either commits or adds one failed attempt to one event, and an
        // event with no attempts left is dead-lettered instead: this loop ends.
        loop {
            match self
                .attempt(&mine, max_position, checkpoint, target, true, &mut failures)
                .await
            {
                Ok(stats) => return Ok(stats),
                Err(AttemptError::Retry { attempt }) => {
                    // The pass's transaction is rolled back by now: sleeping here holds no
                    // xid (a held xid would hold back every reader of the cluster).
                    tokio::time::sleep(self.options.retry_backoff * attempt).await;
                }
                Err(AttemptError::Handler(err) | AttemptError::Other(err)) => return Err(err),
            }
        }
    }

    /// One pass over a batch in one transaction, rolled back explicitly on any error so that
    /// the connection holds no transaction once this returns.
    async fn attempt(
        &self,
        events: &[&RecordedEvent],
        max_position: Option<i64>,
        checkpoint: Option<CheckpointMove>,
        target: Target,
        careful: bool,
        failures: &mut HashMap<uuid::Uuid, (u32, String)>,
    ) -> Result<BatchStats, AttemptError> {
        let mut tx = self.pool.begin().await?;
        let outcome = self
            .attempt_in(
                &mut tx,
                events,
                max_position,
                checkpoint,
                target,
                careful,
                failures,
            )
            .await;
        match outcome {
            Ok(stats) => {
                tx.commit().await?;
                if target == Target::Live {
                    self.progress.wake(&self.pool);
                }
                Ok(stats)
            }
            Err(err) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(projection = self.projection.name(), error = %rollback,
                        "rollback of a failed batch failed");
                }
                Err(err)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt_in(
        &self,
        tx: &mut PgConnection,
        events: &[&RecordedEvent],
        max_position: Option<i64>,
        checkpoint: Option<CheckpointMove>,
        target: Target,
        careful: bool,
        failures: &mut HashMap<uuid::Uuid, (u32, String)>,
    ) -> Result<BatchStats, AttemptError> {
        let name = self.projection.name();
        match target {
            Target::Shadow => {
                // The schema name is the fixed constant REBUILD_SCHEMA, never input.
                sqlx::query("SET LOCAL search_path TO annals_rebuild, public")
                    .execute(&mut *tx)
                    .await?;
                // The shadow is worth nothing until it is swapped in (a crash restarts the
                // rebuild), so its batches need not wait for their WAL flush; the swap commits
                // synchronously, which flushes everything before it.
                sqlx::query("SET LOCAL synchronous_commit = off")
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

        let streams = self.lock_streams(&mut *tx, events, target).await?;
        let mut pass = Pass {
            streams,
            stats: BatchStats::default(),
            careful,
            pending: Vec::new(),
            failures,
            verify: checkpoint.is_none() && target == Target::Live,
        };
        for event in events {
            self.apply_one(&mut *tx, event, &mut pass).await?;
        }
        if !pass.pending.is_empty() {
            self.projection
                .apply_batch(&mut *tx, &pass.pending)
                .await
                .map_err(AttemptError::Handler)?;
        }
        write_streams(&mut *tx, name, &pass.streams).await?;
        if let (Target::Live, Some(position)) = (target, max_position) {
            sqlx::query(UPSERT_PROGRESS)
                .bind(name)
                .bind(position)
                .execute(&mut *tx)
                .await?;
        }
        match (checkpoint, target) {
            (Some(cp), _) => {
                event_store::save_checkpoint(&mut *tx, &self.projection.checkpoint_name(), cp.to)
                    .await?;
            }
            (None, Target::Live) => self.advance_contiguous(&mut *tx).await?,
            (None, Target::Shadow) => {}
        }
        Ok(pass.stats)
    }

    /// Moves the store checkpoint over every event of the projection's types that is applied
    /// (see [`ADVANCE_CONTIGUOUS`]): sources without a store checkpoint (Kafka) then still
    /// tell readers which store position the model reflects.
    async fn advance_contiguous(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let types: Option<Vec<&str>> = self.projection.stream_types().map(<[&str]>::to_vec);
        sqlx::query(ADVANCE_CONTIGUOUS)
            .bind(self.projection.checkpoint_name())
            .bind(self.projection.name())
            .bind(types)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Records the store position this projection reflects, outside any batch: when the source
    /// is idle, events of other types and newly final positions still move it. Kafka mode.
    pub async fn record_position(&self) -> Result<(), ProjectionError> {
        let mut tx = self.pool.begin().await?;
        // Exclusive against a rebuild's swap, like a batch.
        sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))")
            .bind(self.projection.checkpoint_name())
            .execute(&mut *tx)
            .await?;
        self.advance_contiguous(&mut tx).await?;
        tx.commit().await?;
        self.progress.wake(&self.pool);
        Ok(())
    }

    /// Locks every stream of the batch (sorted: no deadlocks between workers during a
    /// rebalance) and loads its applied version and whether it is parked.
    async fn lock_streams(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
        target: Target,
    ) -> Result<HashMap<StreamKey, StreamState>, AttemptError> {
        let (tenants, ids): (Vec<String>, Vec<String>) = events
            .iter()
            .map(|e| stream_key(e))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .unzip();
        let mut streams = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(streams);
        }
        let name = self.projection.name();
        // A rebuild is the shadow's only writer (one rebuild at a time): no stream locks.
        if target == Target::Live {
            sqlx::query(
                "SELECT pg_advisory_xact_lock(k) FROM ( \
                   SELECT hashtextextended($1 || '/' || annals_stream_lock_key(t, s), 0) AS k \
                     FROM unnest($2::text[], $3::text[]) AS u(t, s) \
                   ORDER BY 1) q",
            )
            .bind(name)
            .bind(&tenants)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        }
        let rows = sqlx::query(LOAD_STREAMS)
            .bind(name)
            .bind(&tenants)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let version: i64 = row.try_get("version")?;
            let hash: Option<Vec<u8>> = row.try_get("last_hash")?;
            streams.insert(
                (row.try_get("tenant_id")?, row.try_get("stream_id")?),
                StreamState {
                    version: u64::try_from(version).unwrap_or(0),
                    last_hash: hash.and_then(|h| <[u8; 32]>::try_from(h).ok()),
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
        pass: &mut Pass<'_>,
    ) -> Result<(), AttemptError> {
        let state = *pass
            .streams
            .entry(stream_key(event))
            .or_insert(StreamState {
                version: 0,
                last_hash: None,
                last_position: 0,
                parked: false,
                dirty: false,
            });
        if event.stream_version <= state.version {
            pass.stats.duplicates += 1;
            return Ok(());
        }
        if state.parked {
            self.park(conn, event, pass).await?;
            return Ok(());
        }
        if event.stream_version > state.version + 1 {
            let stream = StreamId::new(event.stream_id.clone())?;
            let missing =
                u32::try_from(event.stream_version - state.version - 1).unwrap_or(u32::MAX);
            let gap = self
                .store
                .read_stream(
                    &event.tenant_id,
                    &stream,
                    state.version + 1,
                    Direction::Forward,
                    missing,
                )
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
                self.apply_checked(conn, earlier, pass).await?;
                pass.stats.gap_filled += 1;
                if pass
                    .streams
                    .get(&stream_key(event))
                    .is_some_and(|s| s.parked)
                {
                    break;
                }
            }
            let now = pass.streams.get(&stream_key(event)).copied();
            if now.is_some_and(|s| s.parked) {
                self.park(conn, event, pass).await?;
                return Ok(());
            }
            if now.is_some_and(|s| s.version + 1 != event.stream_version) {
                return Err(AttemptError::Other(ProjectionError::Inconsistent(format!(
                    "stream {} has a gap before version {} that the store cannot fill",
                    event.stream_id, event.stream_version
                ))));
            }
        }
        self.apply_checked(conn, event, pass).await
    }

    /// Holds `event` back behind an earlier failed event of its stream.
    async fn park(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
        pass: &mut Pass<'_>,
    ) -> Result<(), AttemptError> {
        dead_letter(
            conn,
            self.projection.name(),
            event,
            "parked",
            "waiting behind an earlier failed event of this stream",
            0,
        )
        .await?;
        pass.stats.parked += 1;
        Ok(())
    }

    /// On a verifying pass, checks that `event` (the next of its stream) chains onto the
    /// stream's previous hash: its hash must be `SHA-256(previous || envelope)`. A message that
    /// does not verify is dead-lettered as `rejected` with the reason and the store's own copy,
    /// verified the same way, is returned to be applied instead; if that does not verify
    /// either, the batch fails (the store's chain itself is broken: nothing is applied).
    async fn check_chain(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
        pass: &mut Pass<'_>,
    ) -> Result<Option<RecordedEvent>, AttemptError> {
        if !pass.verify {
            return Ok(None);
        }
        let prev = match pass.streams.get(&stream_key(event)) {
            Some(s) if s.version > 0 => s.last_hash,
            _ => Some(event_store::hash::GENESIS),
        };
        let verifies = |e: &RecordedEvent| {
            prev.is_some_and(|p| event_store::hash::event_hash(&p, e) == e.hash)
        };
        if verifies(event) {
            return Ok(None);
        }
        let reason = if prev.is_none() {
            "the stream's previous hash is unknown".to_owned()
        } else {
            format!(
                "hash does not chain onto the stream's previous hash at version {} \
                 (forged or altered message)",
                event.stream_version
            )
        };
        dead_letter(conn, self.projection.name(), event, "rejected", &reason, 0).await?;
        metrics::counter!("annals_projection_rejected_messages_total",
            "projection" => self.projection.name())
        .increment(1);
        pass.stats.rejected += 1;
        let stream = StreamId::new(event.stream_id.clone())?;
        let stored = self
            .store
            .read_stream(
                &event.tenant_id,
                &stream,
                event.stream_version,
                Direction::Forward,
                1,
            )
            .await?
            .into_iter()
            .find(|e| e.stream_version == event.stream_version);
        match stored {
            Some(stored) if verifies(&stored) => Ok(Some(stored)),
            _ => Err(AttemptError::Other(ProjectionError::Inconsistent(format!(
                "stream {} version {}: neither the message nor the store's event verifies \
                 against the stream's hash chain",
                event.stream_id, event.stream_version
            )))),
        }
    }

    /// Takes an event that is the next of its stream: into the batch's set on the fast path;
    /// alone in a savepoint on the careful path, where a failure either ends the pass (attempts
    /// left: the caller rolls back, pauses and replays) or dead-letters the event.
    async fn apply_checked(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
        pass: &mut Pass<'_>,
    ) -> Result<(), AttemptError> {
        let genuine;
        let event = match self.check_chain(conn, event, pass).await? {
            None => event,
            Some(replacement) => {
                genuine = replacement;
                &genuine
            }
        };
        let advance = |streams: &mut HashMap<StreamKey, StreamState>| {
            if let Some(s) = streams.get_mut(&stream_key(event)) {
                s.version = event.stream_version;
                s.last_hash = Some(event.hash);
                s.last_position = event.global_position.0;
                s.dirty = true;
            }
        };
        if !pass.careful {
            pass.pending.push(event.clone());
            advance(&mut pass.streams);
            pass.stats.applied += 1;
            return Ok(());
        }
        let max_attempts = self.options.max_attempts.max(1);
        let failed_before = pass.failures.get(&event.event_id).map_or(0, |f| f.0);
        let error = if failed_before < max_attempts {
            match apply_once(conn, self.projection.as_ref(), event).await? {
                Ok(()) => {
                    advance(&mut pass.streams);
                    pass.stats.applied += 1;
                    return Ok(());
                }
                Err(err) => {
                    let attempt = failed_before + 1;
                    pass.failures
                        .insert(event.event_id, (attempt, err.to_string()));
                    tracing::warn!(
                        projection = self.projection.name(),
                        event_id = %event.event_id,
                        event_type = %event.event_type,
                        attempt,
                        error = %err,
                        "handler failed"
                    );
                    if attempt < max_attempts {
                        return Err(AttemptError::Retry { attempt });
                    }
                    err.to_string()
                }
            }
        } else {
            // Out of attempts in an earlier pass (a later event's retry replayed the batch).
            pass.failures
                .get(&event.event_id)
                .map(|f| f.1.clone())
                .unwrap_or_default()
        };
        dead_letter(
            conn,
            self.projection.name(),
            event,
            "failed",
            &error,
            i32::try_from(max_attempts).unwrap_or(i32::MAX),
        )
        .await?;
        metrics::counter!("annals_projection_dead_letters_total",
            "projection" => self.projection.name())
        .increment(1);
        if let Some(s) = pass.streams.get_mut(&stream_key(event)) {
            s.parked = true;
            // The row must exist so that later batches see the stream as parked.
            s.dirty = true;
        }
        pass.stats.dead_lettered += 1;
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
                    match self.reconcile().await {
                        Ok(filled) => self.record_position().await.map(|()| BatchStats {
                            gap_filled: filled,
                            ..stats
                        }),
                        Err(e) => Err(e),
                    }
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
        let behind: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT s.tenant_id, s.stream_id, COALESCE(ps.version, 0) FROM streams s \
               LEFT JOIN projection_streams ps \
                 ON ps.projection = $1 AND ps.tenant_id = s.tenant_id \
                AND ps.stream_id = s.stream_id \
              WHERE ($2::text[] IS NULL OR s.stream_type = ANY($2)) \
                AND COALESCE(ps.version, 0) < s.version \
                AND NOT EXISTS (SELECT 1 FROM projection_dead_letters d \
                                 WHERE d.projection = $1 AND d.tenant_id = s.tenant_id \
                                   AND d.stream_id = s.stream_id \
                                   AND d.status = 'open' AND d.kind <> 'rejected') \
              ORDER BY s.tenant_id, s.stream_id LIMIT 100",
        )
        .bind(p.name())
        .bind(&types)
        .fetch_all(&self.pool)
        .await?;
        let mut events = Vec::new();
        for (tenant, stream, applied) in &behind {
            let id = StreamId::new(stream.clone())?;
            let from = u64::try_from(*applied).unwrap_or(0) + 1;
            events.extend(
                self.store
                    .read_stream(tenant, &id, from, Direction::Forward, 500)
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
    streams: &HashMap<StreamKey, StreamState>,
) -> Result<(), sqlx::Error> {
    let dirty: Vec<(&StreamKey, &StreamState)> = streams.iter().filter(|(_, s)| s.dirty).collect();
    if dirty.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = dirty.iter().map(|((t, _), _)| t.as_str()).collect();
    let ids: Vec<&str> = dirty.iter().map(|((_, id), _)| id.as_str()).collect();
    let versions: Vec<i64> = dirty
        .iter()
        .map(|(_, s)| i64::try_from(s.version).unwrap_or(i64::MAX))
        .collect();
    let positions: Vec<i64> = dirty.iter().map(|(_, s)| s.last_position).collect();
    let hashes: Vec<Option<Vec<u8>>> = dirty
        .iter()
        .map(|(_, s)| s.last_hash.map(|h| h.to_vec()))
        .collect();
    sqlx::query(
        "INSERT INTO projection_streams (projection, tenant_id, stream_id, version, last_position, \
           last_hash) \
         SELECT $1, t, s, v, p, h \
           FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[]) \
                AS u(t, s, v, p, h) \
         ON CONFLICT (projection, tenant_id, stream_id) DO UPDATE \
         SET version = excluded.version, last_position = excluded.last_position, \
             last_hash = COALESCE(excluded.last_hash, projection_streams.last_hash)",
    )
    .bind(projection)
    .bind(&tenants)
    .bind(&ids)
    .bind(&versions)
    .bind(&positions)
    .bind(&hashes)
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
