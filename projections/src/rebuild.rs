//! Rebuilding a projection from the store into fresh tables and swapping them in atomically.
//!
//! 1. Fresh, empty copies of the projection's tables and of the runner's bookkeeping tables are
//!    created in the schema `annals_rebuild` (`CREATE TABLE .. (LIKE .. INCLUDING ALL)`). Table
//!    names come from the projection's fixed internal list ([`Projection::tables`]), never from
//!    input; that is the one place where SQL text is assembled with `format!`.
//! 2. The store is replayed into them with the very same handlers: the runner's transactions set
//!    `search_path` to the shadow schema first. The live tables keep serving meanwhile. A
//!    progress bar shows events/s and the ETA.
//!    Before the replay, `annals_rebuild_dress` (migration `20261202000201`) gives each fresh
//!    table what `LIKE` does not copy: the live constraint names, row-level security and its
//!    policies, privileges and triggers (the audit log's append-only triggers included), and
//!    drops its secondary indexes; after the replay, `annals_rebuild_index` builds the live
//!    ones on it, with their names (one sort per index instead of upkeep per insert).
//! 3. The swap takes the projection's advisory lock exclusively, which waits for in-flight live
//!    batches and holds new ones. If the store has events the shadow has not seen yet, the lock
//!    is released and the shadow catches up again. Otherwise, in one short transaction, the
//!    shadow tables are moved into `public` and the live ones out to `annals_retired`
//!    (`annals_rebuild_swap`, which also re-points the views over them): a catalog change,
//!    whatever the size of the model, so readers wait only for that short lock. The swap takes
//!    its locks without waiting (`NOWAIT`, all at once: waiting for one while holding another
//!    could deadlock with a reader of a view) and is retried after a short pause when a table
//!    is in use at that instant. The per-stream
//!    versions and dead letters are replaced and the checkpoint set to the shadow's position
//!    in the same transaction; the retired tables are dropped after the commit. A live store
//!    runner notices the moved checkpoint (it is fenced) and resumes from it; a Kafka runner
//!    dedupes by stream version.
//!
//! One rebuild runs at a time (a session advisory lock), because the bookkeeping tables of the
//! shadow schema are shared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{AllBatch, EventStore, Position};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::Connection;
use tracing::Instrument;

use crate::projection::{Projection, ProjectionError};
use crate::runner::{Runner, RunnerOptions, Target};

/// Runner tables copied along with a projection's own tables (rows filtered by projection).
const BOOKKEEPING: &[&str] = &["projection_streams", "projection_dead_letters"];

/// Gives a fresh shadow table the live table's index names, policies, grants and triggers.
const DRESS_SHADOW: &str = "SELECT annals_rebuild_dress($1)";

/// Builds the live table's secondary indexes on a filled shadow table.
const INDEX_SHADOW: &str = "SELECT annals_rebuild_index($1)";

/// Moves the shadow tables in and the live ones out (see the module docs).
const SWAP_TABLES: &str = "SELECT annals_rebuild_swap($1::text[])";

/// SQLSTATE `lock_not_available`: the swap's `NOWAIT` locks were not free at that instant.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Pause before the next try of a swap whose locks were not free (readers finish meanwhile).
const SWAP_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Session advisory lock key serialising rebuilds (`hashtext('annals:rebuild')` is not stable
/// across versions, so a constant).
const REBUILD_LOCK: i64 = 0x616e_6e61_6c73_7262;

/// Settings of a rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Events per read and per transaction.
    pub batch_size: u32,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Runner settings (retries before a dead letter).
    pub runner: RunnerOptions,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            progress: false,
            runner: RunnerOptions::default(),
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildReport {
    /// Events read (all of the projection's stream types).
    pub events: u64,
    /// Position the swapped-in model reflects.
    pub position: Position,
    /// Wall time.
    pub elapsed: Duration,
}

/// Rebuilds `projection` from the store and swaps the result in.
pub async fn rebuild(
    store: &EventStore,
    projection: Arc<dyn Projection>,
    options: &RebuildOptions,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let name = projection.name();
    let span = tracing::info_span!("projection.rebuild", projection = name);
    async move {
        let mut lock_conn = store.pool().acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut lock_conn)
            .await?;
        let result = rebuild_locked(store, projection, options).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut lock_conn)
            .await;
        let _ = lock_conn.close().await;
        let (events, position) = result?;
        let report = RebuildReport {
            events,
            position,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            projection = name,
            events,
            position = position.0,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "rebuild swapped in"
        );
        Ok(report)
    }
    .instrument(span)
    .await
}

async fn rebuild_locked(
    store: &EventStore,
    projection: Arc<dyn Projection>,
    options: &RebuildOptions,
) -> Result<(u64, Position), ProjectionError> {
    let tables = shadow_tables(projection.as_ref())?;
    let mut conn = store.pool().acquire().await?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS annals_rebuild")
        .execute(&mut *conn)
        .await?;
    for table in &tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS annals_rebuild.{table}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE annals_rebuild.{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *conn)
        .await?;
    }
    for table in projection.tables() {
        sqlx::query(DRESS_SHADOW)
            .bind(table)
            .execute(&mut *conn)
            .await?;
    }
    drop(conn);

    let types: Option<Vec<String>> = projection
        .stream_types()
        .map(|t| t.iter().map(|s| (*s).to_owned()).collect());
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE $1::text[] IS NULL OR stream_type = ANY($1)",
    )
    .bind(&types)
    .fetch_one(store.pool())
    .await?;
    let bar = if options.progress {
        let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>16} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events \
             {per_sec} ETA {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(projection.name());
        bar
    } else {
        ProgressBar::hidden()
    };

    let runner = Runner::new(store.clone(), projection.clone(), options.runner.clone());
    let mut replay = Replay {
        store,
        runner: &runner,
        types: &types,
        options,
        bar: &bar,
        position: Position::START,
        events: 0,
    };
    replay.catch_up().await?;
    // Secondary indexes once the bulk is in: one sort each instead of upkeep per insert.
    let mut conn = store.pool().acquire().await?;
    for table in projection.tables() {
        sqlx::query(INDEX_SHADOW)
            .bind(table)
            .execute(&mut *conn)
            .await?;
    }
    drop(conn);
    while !swap(&mut replay, projection.as_ref()).await? {
        replay.catch_up().await?;
    }
    let (events, position) = (replay.events, replay.position);
    bar.finish();
    let mut conn = store.pool().acquire().await?;
    for table in &tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS annals_rebuild.{table}"))
            .execute(&mut *conn)
            .await?;
    }
    // The retired live tables: dropped outside the swap, so that the swap stays a catalog
    // change (a reader still on them is waited for here, not inside the swap).
    for table in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS annals_retired.{table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok((events, position))
}

/// Fixed table names of the projection plus the bookkeeping tables, checked to be plain
/// identifiers (defence in depth: they are interpolated into DDL).
fn shadow_tables(projection: &dyn Projection) -> Result<Vec<&'static str>, ProjectionError> {
    let tables: Vec<&'static str> = projection
        .tables()
        .iter()
        .chain(BOOKKEEPING)
        .copied()
        .collect();
    for t in &tables {
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(ProjectionError::Inconsistent(format!(
                "table name {t:?} is not a plain identifier"
            )));
        }
    }
    Ok(tables)
}

async fn read(
    store: &EventStore,
    types: &Option<Vec<String>>,
    after: Position,
    limit: u32,
) -> Result<AllBatch, ProjectionError> {
    Ok(match types {
        Some(types) => store.read_all_of_types(after, limit, types).await?,
        None => store.read_all(after, limit).await?,
    })
}

/// The replay of the store into the shadow tables, and how far it got.
struct Replay<'a> {
    store: &'a EventStore,
    runner: &'a Runner,
    types: &'a Option<Vec<String>>,
    options: &'a RebuildOptions,
    bar: &'a ProgressBar,
    /// The last position applied to the shadow tables.
    position: Position,
    /// Events applied so far.
    events: u64,
}

impl Replay<'_> {
    /// Replays everything after `position` into the shadow tables.
    async fn catch_up(&mut self) -> Result<(), ProjectionError> {
        loop {
            let batch = read(
                self.store,
                self.types,
                self.position,
                self.options.batch_size,
            )
            .await?;
            if batch.events.is_empty() {
                if batch.held_back {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                return Ok(());
            }
            self.runner
                .process_to(&batch.events, None, Target::Shadow)
                .await?;
            self.position = batch.next_after(self.position);
            let n = batch.events.len() as u64;
            self.events += n;
            self.bar.inc(n);
            // The projection's events may outnumber the count taken at the start.
            if self.bar.position() > self.bar.length().unwrap_or(0) {
                self.bar.set_length(self.bar.position());
            }
        }
    }
}

/// Swaps the shadow tables in; `false` = the live tables were in use, try again.
///
/// Holding the projection's lock, which stops live batches (not the store's writers), the
/// shadow first catches up with whatever was appended meanwhile, until nothing is pending:
/// with commands running at full speed, giving up whenever something is pending would retry
/// forever.
async fn swap(
    replay: &mut Replay<'_>,
    projection: &dyn Projection,
) -> Result<bool, ProjectionError> {
    let name = projection.name();
    let store = replay.store;
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(projection.checkpoint_name())
        .execute(&mut *tx)
        .await?;
    loop {
        // On this connection: waiting live runners hold pool connections while we hold the
        // lock. The transaction has no xid yet (a lock and reads only).
        let pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE global_position > $1 \
                              AND ($2::text[] IS NULL OR stream_type = ANY($2)))",
        )
        .bind(replay.position.0)
        .bind(replay.types)
        .fetch_one(&mut *tx)
        .await?;
        if !pending {
            break;
        }
        replay.catch_up().await?;
    }
    let position = replay.position;
    for table in BOOKKEEPING {
        sqlx::query(&format!("DELETE FROM public.{table} WHERE projection = $1"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO public.{table} SELECT * FROM annals_rebuild.{table} WHERE projection = $1"
        ))
        .bind(name)
        .execute(&mut *tx)
        .await?;
    }
    event_store::save_checkpoint(&mut *tx, &projection.checkpoint_name(), position).await?;
    sqlx::query(
        "INSERT INTO projection_progress (projection, position, updated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = now()",
    )
    .bind(name)
    .bind(position.0)
    .execute(&mut *tx)
    .await?;
    // Last: from here until the commit, readers of the model wait.
    let names: Vec<&str> = projection.tables().to_vec();
    match sqlx::query(SWAP_TABLES)
        .bind(&names)
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            tracing::debug!(projection = name, "live tables in use; retrying the swap");
            tx.rollback().await?;
            // Outside any transaction: nothing is held while pausing.
            tokio::time::sleep(SWAP_RETRY_PAUSE).await;
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(true)
}
