//! Rebuilding projections from the store into fresh tables and swapping them in atomically.
//!
//! 1. Fresh, empty copies of the projections' tables and of the runner's bookkeeping tables are
//!    created in the schema `annals_rebuild` (`CREATE TABLE .. (LIKE .. INCLUDING ALL)`). Table
//!    names come from the projections' fixed internal lists ([`Projection::tables`]), never
//!    from input; that is the one place where SQL text is assembled with `format!`.
//!    Before the replay, `annals_rebuild_dress` (migration `20261202000201`) gives each fresh
//!    table what `LIKE` does not copy: the live constraint names, row-level security and its
//!    policies, privileges and triggers (the audit log's append-only triggers included), and
//!    drops its secondary indexes; after the replay, `annals_rebuild_index` builds the live
//!    ones on it, with their names (one sort per index instead of upkeep per insert).
//! 2. The store is replayed into them with the very same handlers: the runner's transactions set
//!    `search_path` to the shadow schema first. The live tables keep serving meanwhile. A
//!    progress bar shows events/s and the ETA. [`rebuild_all`] rebuilds several projections in
//!    one pass: the store is read once (the union of their stream types), each batch goes to
//!    every projection that has events in it, the projections' transactions run side by side
//!    (one connection each, so their Postgres work and their folds run on different cores),
//!    and the next batch is read while the current one is applied. A projection with no
//!    events in a batch costs nothing for it.
//! 3. The swap takes the projections' advisory locks exclusively (in name order), which waits
//!    for in-flight live batches and holds new ones. If the store has events the shadow has
//!    not seen yet, the shadow catches up under the locks. Then, in one short transaction,
//!    the shadow tables are moved into `public` and the live ones out to `annals_retired`
//!    (`annals_rebuild_swap`, which also re-points the views over them): a catalog change,
//!    whatever the size of the models, so readers wait only for that short lock. The swap
//!    takes its locks without waiting (`NOWAIT`, all at once: waiting for one while holding
//!    another could deadlock with a reader of a view) and is retried after a short pause when
//!    a table is in use at that instant. The per-stream versions and dead letters are replaced
//!    and the checkpoints set to the shadow's position in the same transaction; the retired
//!    tables are dropped after the commit. A live store runner notices the moved checkpoint
//!    (it is fenced) and resumes from it; a Kafka runner dedupes by stream version.
//!
//! One rebuild runs at a time (a session advisory lock), because the bookkeeping tables of the
//! shadow schema are shared.

use std::collections::BTreeSet;
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

/// What a rebuild did for one projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildReport {
    /// Events of the projection's stream types read.
    pub events: u64,
    /// Position the swapped-in model reflects.
    pub position: Position,
    /// Wall time of the whole rebuild (shared by the projections of one [`rebuild_all`]).
    pub elapsed: Duration,
    /// Time spent in this projection's batches (in a [`rebuild_all`] they overlap with the
    /// other projections' batches and with the reads).
    pub busy: Duration,
}

/// Rebuilds `projection` from the store and swaps the result in.
pub async fn rebuild(
    store: &EventStore,
    projection: Arc<dyn Projection>,
    options: &RebuildOptions,
) -> Result<RebuildReport, ProjectionError> {
    rebuild_all(store, std::slice::from_ref(&projection), options)
        .await?
        .pop()
        .ok_or_else(|| ProjectionError::Inconsistent("a rebuild reported nothing".into()))
}

/// Rebuilds `projections` from the store in one pass (see the module docs) and swaps them all
/// in at once; one report per projection, in the given order.
pub async fn rebuild_all(
    store: &EventStore,
    projections: &[Arc<dyn Projection>],
    options: &RebuildOptions,
) -> Result<Vec<RebuildReport>, ProjectionError> {
    let started = Instant::now();
    if projections.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&'static str> = projections.iter().map(|p| p.name()).collect();
    if names.iter().collect::<BTreeSet<_>>().len() != names.len() {
        return Err(ProjectionError::Inconsistent(format!(
            "a projection is named twice in one rebuild: {names:?}"
        )));
    }
    let span = tracing::info_span!("projection.rebuild", projections = %names.join(","));
    async move {
        let mut lock_conn = store.pool().acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut lock_conn)
            .await?;
        let result = rebuild_locked(store, projections, options).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut lock_conn)
            .await;
        let _ = lock_conn.close().await;
        let (members, position) = result?;
        let elapsed = started.elapsed();
        let reports = members
            .iter()
            .map(|m| {
                tracing::info!(
                    projection = m.projection.name(),
                    events = m.events,
                    position = position.0,
                    elapsed_ms = elapsed.as_millis() as u64,
                    busy_ms = m.busy.as_millis() as u64,
                    "rebuild swapped in"
                );
                RebuildReport {
                    events: m.events,
                    position,
                    elapsed,
                    busy: m.busy,
                }
            })
            .collect();
        Ok(reports)
    }
    .instrument(span)
    .await
}

/// One projection of a rebuild.
struct Member {
    projection: Arc<dyn Projection>,
    runner: Runner,
    /// Events of its types applied so far.
    events: u64,
    /// Time spent in its batches.
    busy: Duration,
}

async fn rebuild_locked(
    store: &EventStore,
    projections: &[Arc<dyn Projection>],
    options: &RebuildOptions,
) -> Result<(Vec<Member>, Position), ProjectionError> {
    let mut tables: Vec<&'static str> = Vec::new();
    for p in projections {
        tables.extend(checked_tables(p.tables())?);
    }
    let own_tables = tables.clone();
    tables.extend(checked_tables(BOOKKEEPING)?);
    prepare_shadow(store, &tables, &own_tables).await?;

    // The union of the projections' stream types; `None` (all) if one of them takes all.
    let types: Option<Vec<String>> = projections
        .iter()
        .map(|p| p.stream_types())
        .collect::<Option<Vec<_>>>()
        .map(|lists| {
            lists
                .into_iter()
                .flatten()
                .map(|s| (*s).to_owned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        });
    let bar = if options.progress {
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE $1::text[] IS NULL OR stream_type = ANY($1)",
        )
        .bind(&types)
        .fetch_one(store.pool())
        .await?;
        let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>16} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events \
             {per_sec} ETA {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(
            projections
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(","),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let members = projections
        .iter()
        .map(|p| Member {
            projection: Arc::clone(p),
            runner: Runner::new(store.clone(), Arc::clone(p), options.runner.clone()),
            events: 0,
            busy: Duration::ZERO,
        })
        .collect();
    let mut replay = Replay {
        store,
        members,
        types,
        options,
        bar: &bar,
        position: Position::START,
    };
    replay.catch_up().await?;
    // Secondary indexes once the bulk is in: one sort each instead of upkeep per insert; the
    // projections' tables side by side (one connection each).
    let builds: Vec<_> = projections
        .iter()
        .map(|p| {
            let pool = store.pool().clone();
            let tables = p.tables();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                for table in tables {
                    sqlx::query("SELECT annals_rebuild_index($1)")
                        .bind(table)
                        .execute(&mut *conn)
                        .await?;
                }
                Ok::<_, ProjectionError>(())
            })
        })
        .collect();
    join_all_tasks(builds).await?;
    while !swap(&mut replay).await? {
        replay.catch_up().await?;
    }
    bar.finish();
    let position = replay.position;
    let mut conn = store.pool().acquire().await?;
    let mut cleanup = String::new();
    for table in &tables {
        cleanup.push_str(&format!("DROP TABLE IF EXISTS annals_rebuild.{table};"));
    }
    // The retired live tables: dropped outside the swap, so that the swap stays a catalog
    // change (a reader still on them is waited for here, not inside the swap).
    for table in &own_tables {
        cleanup.push_str(&format!("DROP TABLE IF EXISTS annals_retired.{table};"));
    }
    sqlx::raw_sql(&cleanup).execute(&mut *conn).await?;
    Ok((replay.members, position))
}

/// Creates the empty shadow `tables` and dresses the projections' own ones (`own`) like the
/// live ones: one round trip of statements (DDL on the catalog; the tables are empty).
async fn prepare_shadow(
    store: &EventStore,
    tables: &[&'static str],
    own: &[&'static str],
) -> Result<(), ProjectionError> {
    let mut sql = String::from("CREATE SCHEMA IF NOT EXISTS annals_rebuild;");
    for table in tables {
        sql.push_str(&format!(
            "DROP TABLE IF EXISTS annals_rebuild.{table}; \
             CREATE TABLE annals_rebuild.{table} (LIKE public.{table} INCLUDING ALL);"
        ));
    }
    for table in own {
        // A checked plain identifier (`checked_tables`), so a literal needs no escaping.
        sql.push_str(&format!("SELECT annals_rebuild_dress('{table}');"));
    }
    let mut tx = store.pool().begin().await?;
    sqlx::raw_sql(&sql).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// `tables`, checked to be plain identifiers (defence in depth: they are interpolated into
/// DDL).
fn checked_tables(tables: &[&'static str]) -> Result<Vec<&'static str>, ProjectionError> {
    for t in tables {
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(ProjectionError::Inconsistent(format!(
                "table name {t:?} is not a plain identifier"
            )));
        }
    }
    Ok(tables.to_vec())
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

/// Awaits every task (all of them, even after a failure: none may still write when the caller
/// goes on) and returns their results in order, or the first failure.
async fn join_all_tasks<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, ProjectionError>>>,
) -> Result<Vec<T>, ProjectionError> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(ProjectionError::Inconsistent(format!(
                    "a rebuild task failed: {e}"
                )));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The replay of the store into the shadow tables, and how far it got.
struct Replay<'a> {
    store: &'a EventStore,
    members: Vec<Member>,
    /// Stream types read (`None` = all).
    types: Option<Vec<String>>,
    options: &'a RebuildOptions,
    bar: &'a ProgressBar,
    /// The last position applied to the shadow tables.
    position: Position,
}

impl Replay<'_> {
    /// Replays everything after `position` into the shadow tables, reading the next batch
    /// while the current one is applied.
    async fn catch_up(&mut self) -> Result<(), ProjectionError> {
        let limit = self.options.batch_size;
        let mut next = read(self.store, &self.types, self.position, limit).await?;
        loop {
            if next.events.is_empty() {
                if next.held_back {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    next = read(self.store, &self.types, self.position, limit).await?;
                    continue;
                }
                return Ok(());
            }
            let batch = Arc::new(next);
            let after = batch.next_after(self.position);
            let (read_next, applied) = tokio::join!(
                read(self.store, &self.types, after, limit),
                apply(&mut self.members, &batch)
            );
            applied?;
            next = read_next?;
            self.position = after;
            let n = batch.events.len() as u64;
            self.bar.inc(n);
            // The projections' events may outnumber the count taken at the start.
            if self.bar.position() > self.bar.length().unwrap_or(0) {
                self.bar.set_length(self.bar.position());
            }
        }
    }
}

/// Applies `batch` to every projection of `members` with events in it, side by side (a
/// transaction and a connection each).
async fn apply(members: &mut [Member], batch: &Arc<AllBatch>) -> Result<(), ProjectionError> {
    let mut running = Vec::new();
    let mut involved = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let mine = batch
            .events
            .iter()
            .filter(|e| m.projection.handles(&e.stream_type))
            .count() as u64;
        if mine == 0 {
            continue;
        }
        let runner = m.runner.clone();
        let batch = Arc::clone(batch);
        running.push(tokio::spawn(async move {
            let started = Instant::now();
            runner
                .process_to(&batch.events, None, Target::Shadow)
                .await?;
            Ok(started.elapsed())
        }));
        involved.push((i, mine));
    }
    let busy = join_all_tasks(running).await?;
    for ((i, mine), busy) in involved.into_iter().zip(busy) {
        if let Some(m) = members.get_mut(i) {
            m.events += mine;
            m.busy += busy;
        }
    }
    Ok(())
}

/// Swaps the shadow tables in; `false` = the live tables were in use, try again.
///
/// Holding the projections' locks, which stop live batches (not the store's writers), the
/// shadow first catches up with whatever was appended meanwhile, until nothing is pending:
/// with commands running at full speed, giving up whenever something is pending would retry
/// forever.
async fn swap(replay: &mut Replay<'_>) -> Result<bool, ProjectionError> {
    let store = replay.store;
    let mut tx = store.pool().begin().await?;
    // In one order (checkpoint names sorted): two rebuilds never run at once, but this keeps
    // the exclusive locks in the order any other multi-lock taker would use.
    let checkpoints: BTreeSet<String> = replay
        .members
        .iter()
        .map(|m| m.projection.checkpoint_name())
        .collect();
    for checkpoint in &checkpoints {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(checkpoint)
            .execute(&mut *tx)
            .await?;
    }
    loop {
        // On this connection: waiting live runners hold pool connections while we hold the
        // locks. The transaction has no xid yet (locks and reads only).
        let pending: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE global_position > $1 \
                              AND ($2::text[] IS NULL OR stream_type = ANY($2)))",
        )
        .bind(replay.position.0)
        .bind(&replay.types)
        .fetch_one(&mut *tx)
        .await?;
        if !pending {
            break;
        }
        replay.catch_up().await?;
    }
    let position = replay.position;
    let names: Vec<&str> = replay.members.iter().map(|m| m.projection.name()).collect();
    for table in BOOKKEEPING {
        sqlx::query(&format!(
            "DELETE FROM public.{table} WHERE projection = ANY($1)"
        ))
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO public.{table} SELECT * FROM annals_rebuild.{table} \
              WHERE projection = ANY($1)"
        ))
        .bind(&names)
        .execute(&mut *tx)
        .await?;
    }
    for m in &replay.members {
        event_store::save_checkpoint(&mut *tx, &m.projection.checkpoint_name(), position).await?;
    }
    sqlx::query(
        "INSERT INTO projection_progress (projection, position, updated_at) \
         SELECT p, $2, now() FROM unnest($1::text[]) AS p \
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = now()",
    )
    .bind(&names)
    .bind(position.0)
    .execute(&mut *tx)
    .await?;
    // Last: from here until the commit, readers of the models wait.
    let tables: Vec<&str> = replay
        .members
        .iter()
        .flat_map(|m| m.projection.tables().iter().copied())
        .collect();
    match sqlx::query(SWAP_TABLES)
        .bind(&tables)
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
            tracing::debug!(
                projections = %names.join(","),
                "live tables in use; retrying the swap"
            );
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
