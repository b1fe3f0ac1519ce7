//! Database access of the query service: projection positions, the read-your-writes wait, and
//! tenant-scoped read transactions.
//!
//! # Positions
//!
//! A projection's store checkpoint is the position of the last event *of its stream types*
//! that it applied, so a `tasks` checkpoint stops at the last task event even when problem
//! events follow. The position an answer reflects is therefore the checkpoint moved forward
//! over everything the projection does not consume: the highest `P` such that no event of its
//! types lies in `(checkpoint, P]`, capped at the store's gap-safe high-water mark (the newest
//! event whose transaction id is below `pg_snapshot_xmin`, or below the position epoch's floor,
//! so every event below it is final).
//! One SQL statement computes it; it is read *before* the data, so the data is at least as new.
//!
//! Kafka-mode runners record the same checkpoint (the store position below which every event
//! of their types is applied), so positions and `min_position` work in both modes.
//!
//! # Waiting
//!
//! Projection runners notify [`projections::PROGRESS_CHANNEL`] after each committed batch. One
//! follower task per [`Reader`] (started by the first wait, ended when the last clone of the
//! reader is dropped or the pool closes) listens, reads the position of each projection named
//! in a burst of notifications once, and publishes it; every waiting request watches the
//! published position, so a thousand waiters cost one position read per commit, not a
//! thousand. A wait still re-reads the position on its own with a growing pause (5 ms doubling
//! to 100 ms): positions also move without a projection commit (events of types a projection
//! does not consume become final), and a notification can be lost across a reconnect.
//!
//! # Tenant scoping (two walls)
//!
//! Every SQL statement of the service filters `tenant_id = $1` with the caller's tenant. When
//! row-level security is enabled (the default), each request's transaction additionally runs
//! as the role `annals_reader` with `annals.tenant` set to the caller's tenant and
//! `transaction_read_only` on; the policies of migration `20261123000030` then hide every other
//! tenant's rows even from a query that forgot its filter, and nothing can be written.
//!
//! # Round trips
//!
//! [`Reader::enter`] reads the position in the statement that raises the second wall (it runs
//! with the service's privileges, checked when the statement starts; the role applies from
//! the next statement on), so a request costs `BEGIN`, that statement, its reads and `COMMIT`,
//! and tokens come from memory. Without row-level security there is no transaction: the
//! position and the reads are statements on one pooled connection. GetTask goes further with
//! PL/pgSQL functions that raise the wall inside themselves (migration `20261202000300`): the
//! position and the task in one statement, the reminders in a second, no transaction.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::QueryError;

/// What an RPC reads, i.e. which position it reflects and waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Projection `problems`.
    Problems,
    /// Projection `tasks`.
    Tasks,
    /// Projection `agent_sessions`.
    AgentSessions,
    /// Projection `governance`.
    Governance,
    /// Projection `audit`.
    Audit,
    /// The event store itself (history RPCs).
    Store,
}

impl Model {
    /// Projection name (`store` for the event store).
    pub fn name(self) -> &'static str {
        match self {
            Model::Problems => "problems",
            Model::Tasks => "tasks",
            Model::AgentSessions => "agent_sessions",
            Model::Governance => "governance",
            Model::Audit => "audit",
            Model::Store => "store",
        }
    }

    /// The projections, in the order of [`Reader`]'s published positions.
    const PROJECTIONS: [Model; 5] = [
        Model::Problems,
        Model::Tasks,
        Model::AgentSessions,
        Model::Governance,
        Model::Audit,
    ];

    /// Index into [`Model::PROJECTIONS`]; `None` for the store.
    fn index(self) -> Option<usize> {
        Model::PROJECTIONS.iter().position(|m| *m == self)
    }
}

/// A projection's checkpoint name and stream types, from the projections crate.
#[derive(Debug, Clone)]
struct Tracked {
    checkpoint: String,
    types: Option<Vec<String>>,
}

fn tracked(model: Model) -> Option<Tracked> {
    let projection = projections::models::by_name(model.name())?;
    Some(Tracked {
        checkpoint: projection.checkpoint_name(),
        types: projection
            .stream_types()
            .map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
    })
}

/// The store's gap-safe high-water mark (see the module docs), as a CTE.
macro_rules! high_water {
    () => {
        "hw AS (SELECT coalesce((SELECT global_position FROM events \
                  WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
                     OR global_position < annals_delivery_floor() \
                  ORDER BY global_position DESC LIMIT 1), 0) AS p)"
    };
}

/// Position of a projection consuming some stream types (`$1` checkpoint, `$2` types): one
/// indexed probe per type for the first unapplied event.
macro_rules! typed_position {
    () => {
        concat!(
            "WITH cp AS (SELECT coalesce((SELECT position FROM subscription_checkpoints \
                                            WHERE name = $1), 0) AS p), ",
            $crate::reader::high_water!(),
            ", nx AS (SELECT min(n.global_position) AS p FROM unnest($2::text[]) AS t(stream_type) \
                 CROSS JOIN LATERAL (SELECT e.global_position FROM events e \
                                      WHERE e.stream_type = t.stream_type \
                                        AND e.global_position > (SELECT p FROM cp) \
                                      ORDER BY e.global_position LIMIT 1) n) \
             SELECT GREATEST(cp.p, CASE WHEN nx.p IS NULL THEN hw.p ELSE LEAST(hw.p, nx.p - 1) END) \
                    AS p \
               FROM cp, hw, nx"
        )
    };
}
pub(crate) use {high_water, typed_position};

/// Position of a projection consuming every stream type (`$1` checkpoint).
macro_rules! all_position {
    () => {
        concat!(
            "WITH cp AS (SELECT coalesce((SELECT position FROM subscription_checkpoints \
                                            WHERE name = $1), 0) AS p), ",
            high_water!(),
            ", nx AS (SELECT min(global_position) AS p FROM events \
                      WHERE global_position > (SELECT p FROM cp)) \
             SELECT GREATEST(cp.p, CASE WHEN nx.p IS NULL THEN hw.p ELSE LEAST(hw.p, nx.p - 1) END) \
                    AS p \
               FROM cp, hw, nx"
        )
    };
}

/// Position of the store itself (no parameters).
macro_rules! store_position {
    () => {
        concat!("WITH ", high_water!(), " SELECT p FROM hw")
    };
}

/// Raises the second wall (see the module docs) from the position statement of the same
/// transaction, so that position and wall cost one round trip. The position is read with the
/// login's privileges: those are checked when the statement starts, before the role changes;
/// the role applies from the next statement on. `$n` is the tenant.
macro_rules! enter_tenant_reading {
    ($position:expr, $n:literal) => {
        concat!(
            "WITH pos AS MATERIALIZED (",
            $position,
            ") SELECT pos.p, set_config('role', 'annals_reader', true), \
                      set_config('annals.tenant', $",
            $n,
            ", true), set_config('transaction_read_only', 'on', true) FROM pos"
        )
    };
}

const TYPED_POSITION: &str = typed_position!();
const ALL_POSITION: &str = all_position!();
const STORE_POSITION: &str = store_position!();
const ENTER_TYPED: &str = enter_tenant_reading!(typed_position!(), "3");
const ENTER_ALL: &str = enter_tenant_reading!(all_position!(), "2");
const ENTER_STORE: &str = enter_tenant_reading!(store_position!(), "1");

/// Applies the second wall (see the module docs) to a fresh transaction.
const ENTER_TENANT: &str = "SELECT set_config('role', 'annals_reader', true), \
            set_config('annals.tenant', $1, true), \
            set_config('transaction_read_only', 'on', true)";

/// Where a request's statements run: a tenant-scoped read-only transaction (row-level security
/// on) or a pooled connection in autocommit (off: every statement filters by tenant itself,
/// and a transaction would only add its `BEGIN` and `COMMIT` round trips).
#[derive(Debug)]
pub enum Session {
    /// Row-level security on.
    Tenant(Transaction<'static, Postgres>),
    /// Row-level security off.
    Plain(sqlx::pool::PoolConnection<Postgres>),
}

impl Session {
    /// The connection to run statements on.
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        match self {
            Session::Tenant(tx) => tx,
            Session::Plain(c) => c,
        }
    }

    /// Ends the request's reads (commits the read-only transaction).
    pub async fn finish(self) -> Result<(), QueryError> {
        if let Session::Tenant(tx) = self {
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Reads positions and opens tenant-scoped transactions.
#[derive(Debug, Clone)]
pub struct Reader {
    pool: PgPool,
    row_level_security: bool,
    wait: Duration,
    /// Per projection (order of [`Model::PROJECTIONS`]).
    tracked: Arc<[Option<Tracked>; 5]>,
    progress: Arc<Progress>,
}

/// The follower's published positions and its lifetime.
#[derive(Debug)]
struct Progress {
    /// Latest position read after a commit notification, per projection.
    published: Arc<[watch::Sender<i64>; 5]>,
    started: OnceLock<()>,
    /// Cancelled when the last clone of the reader goes away.
    stop: CancellationToken,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Reader {
    /// A reader over `pool`; `wait` bounds every `min_position` wait.
    pub fn new(pool: PgPool, row_level_security: bool, wait: Duration) -> Self {
        Self {
            pool,
            row_level_security,
            wait,
            tracked: Arc::new(Model::PROJECTIONS.map(tracked)),
            progress: Arc::new(Progress {
                published: Arc::new(std::array::from_fn(|_| watch::Sender::new(0))),
                started: OnceLock::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether requests run behind the second wall (see the module docs).
    pub fn row_level_security(&self) -> bool {
        self.row_level_security
    }

    /// Checkpoint name and stream types of `model` when it consumes some stream types: the
    /// `$1` and `$2` of a statement that reads its position with [`typed_position!`].
    pub(crate) fn typed(&self, model: Model) -> Option<(&str, &[String])> {
        let tracked = self.tracked[model.index()?].as_ref()?;
        Some((tracked.checkpoint.as_str(), tracked.types.as_deref()?))
    }

    /// The position `model` reflects now.
    pub async fn current(&self, model: Model) -> Result<i64, QueryError> {
        let tracked = model.index().and_then(|i| self.tracked[i].as_ref());
        position(&self.pool, tracked).await
    }

    /// Waits until `model` reflects `min_position` (at most the configured deadline) and
    /// returns the position reached; `min_position <= 0` answers at once.
    pub async fn reach(&self, model: Model, min_position: i64) -> Result<i64, QueryError> {
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(5);
        // Subscribed before the first read: a commit after it is seen as a change.
        let mut published = model.index().map(|i| {
            self.follow_progress();
            self.progress.published[i].subscribe()
        });
        loop {
            let current = self.current(model).await?;
            if current >= min_position {
                return Ok(current);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QueryError::NotYet {
                    projection: model.name(),
                    wanted: min_position,
                    current,
                });
            }
            let recheck = tokio::time::sleep(pause.min(deadline - now));
            match published.as_mut() {
                // `wait_for` fails only when the senders are gone, which `self` prevents; the
                // branch would then be disabled and the re-read still answer.
                Some(rx) => tokio::select! {
                    Ok(p) = rx.wait_for(|p| *p >= min_position) => return Ok(*p),
                    () = recheck => {}
                },
                None => recheck.await,
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Starts the follower task once (needs a Tokio runtime, which every wait has).
    fn follow_progress(&self) {
        self.progress.started.get_or_init(|| {
            tokio::spawn(follow(
                self.pool.clone(),
                Arc::clone(&self.tracked),
                Arc::clone(&self.progress.published),
                self.progress.stop.clone(),
            ));
        });
    }

    /// A read-only transaction scoped to `tenant` (row-level security when enabled).
    pub async fn begin(&self, tenant: &str) -> Result<Transaction<'static, Postgres>, QueryError> {
        let mut tx = self.pool.begin().await?;
        if self.row_level_security {
            sqlx::query(ENTER_TENANT)
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Opens the request's [`Session`] for `tenant` and reads the position `model` reflects in
    /// the same statement; when that is below `min_position`, waits for it ([`Reader::reach`])
    /// and opens a new session. Round trips: `BEGIN` and one statement with row-level security
    /// (plus the data and `COMMIT`), one statement without.
    ///
    /// The position is read before the data (an earlier statement, or the same snapshot), so
    /// the data is at least as new as the position returned.
    pub async fn enter(
        &self,
        tenant: &str,
        model: Model,
        min_position: i64,
    ) -> Result<(Session, i64), QueryError> {
        let (session, position) = self.open(tenant, model).await?;
        if position >= min_position {
            return Ok((session, position));
        }
        // Not there yet: no session is held while waiting.
        drop(session);
        let reached = self.reach(model, min_position).await?;
        let (session, position) = self.open(tenant, model).await?;
        Ok((session, position.max(reached)))
    }

    async fn open(&self, tenant: &str, model: Model) -> Result<(Session, i64), QueryError> {
        let tracked = model.index().and_then(|i| self.tracked[i].as_ref());
        if !self.row_level_security {
            let mut conn = self.pool.acquire().await?;
            let position = position(&mut *conn, tracked).await?;
            return Ok((Session::Plain(conn), position));
        }
        let mut tx = self.pool.begin().await?;
        let query = match tracked {
            Some(Tracked {
                checkpoint,
                types: Some(types),
            }) => sqlx::query_scalar(ENTER_TYPED)
                .bind(checkpoint)
                .bind(types)
                .bind(tenant),
            Some(Tracked {
                checkpoint,
                types: None,
            }) => sqlx::query_scalar(ENTER_ALL).bind(checkpoint).bind(tenant),
            None => sqlx::query_scalar(ENTER_STORE).bind(tenant),
        };
        let position: Option<i64> = query.fetch_one(&mut *tx).await?;
        Ok((Session::Tenant(tx), position.unwrap_or(0)))
    }

    /// Checks at start that the second wall can be raised (the role exists and this login may
    /// assume it), so that a misconfiguration fails loudly instead of on every request.
    pub async fn probe(&self) -> Result<(), QueryError> {
        let mut tx = self.begin("probe").await?;
        sqlx::query("SELECT 1 FROM problems LIMIT 1")
            .execute(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(())
    }
}

/// The position a projection (or, for `None`, the store) reflects now: one statement.
async fn position<'e>(
    pool: impl sqlx::PgExecutor<'e>,
    tracked: Option<&Tracked>,
) -> Result<i64, QueryError> {
    let position: Option<i64> = match tracked {
        Some(Tracked {
            checkpoint,
            types: Some(types),
        }) => {
            sqlx::query_scalar(TYPED_POSITION)
                .bind(checkpoint)
                .bind(types)
                .fetch_one(pool)
                .await?
        }
        Some(Tracked {
            checkpoint,
            types: None,
        }) => {
            sqlx::query_scalar(ALL_POSITION)
                .bind(checkpoint)
                .fetch_one(pool)
                .await?
        }
        None => sqlx::query_scalar(STORE_POSITION).fetch_one(pool).await?,
    };
    Ok(position.unwrap_or(0))
}

/// Listens for projection commits and publishes the positions they move (see the module docs).
async fn follow(
    pool: PgPool,
    tracked: Arc<[Option<Tracked>; 5]>,
    published: Arc<[watch::Sender<i64>; 5]>,
    stop: CancellationToken,
) {
    loop {
        let listening = tokio::select! {
            () = stop.cancelled() => return,
            l = listen(&pool) => l,
        };
        let mut listener = match listening {
            Ok(l) => l,
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for projection progress; polling");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                n = listener.recv() => n,
            };
            let mut named = HashSet::new();
            match first {
                Ok(n) => named.insert(n.payload().to_owned()),
                Err(sqlx::Error::PoolClosed) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "projection progress listener lost; reconnecting");
                    break;
                }
            };
            // Everything already received is covered by one read per projection.
            while let Some(n) = listener.next_buffered() {
                named.insert(n.payload().to_owned());
            }
            for (slot, sender) in tracked.iter().zip(published.iter()) {
                let Some(t) = slot.as_ref().filter(|t| named.contains(&t.checkpoint)) else {
                    continue;
                };
                match position(&pool, Some(t)).await {
                    Ok(p) => {
                        sender.send_if_modified(|current| {
                            let newer = p > *current;
                            if newer {
                                *current = p;
                            }
                            newer
                        });
                    }
                    Err(err) => tracing::debug!(error = %err, "reading a projection position"),
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(projections::PROGRESS_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use aggregates::task::Task;
    use event_store::{EventStore, MIGRATOR};
    use projections::testkit::{catch_up, create_task, exec, t0, uuid};

    use super::*;

    /// The published position is fed only by the follower, so reaching it proves that a
    /// projection commit's notification arrived and moved it. The follower may start listening
    /// after the first commits, so commits repeat (bounded) until one is seen.
    #[sqlx::test(migrator = "MIGRATOR")]
    async fn projection_commits_are_published_to_waiters(pool: PgPool) {
        let store = EventStore::new(pool.clone());
        let reader = Reader::new(pool, false, Duration::from_secs(1));
        let tasks = Model::Tasks.index().unwrap();
        let mut published = reader.progress.published[tasks].subscribe();
        reader.follow_progress();
        let projection = projections::models::by_name("tasks").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for n in 1.. {
            let id = uuid(n);
            let position = exec::<Task>(
                &store,
                "acme",
                id,
                create_task(id, "ann", None, false),
                t0(),
                "ann",
            )
            .await
            .last_position()
            .0;
            catch_up(&store, Arc::clone(&projection), 100).await;
            let seen = tokio::time::timeout(
                Duration::from_millis(500),
                published.wait_for(|p| *p >= position),
            )
            .await;
            if seen.is_ok_and(|r| r.is_ok()) {
                let reached = reader.reach(Model::Tasks, position).await.unwrap();
                assert!(reached >= position);
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no projection commit reached the reader's follower in 30 s"
            );
        }
    }
}
