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
//! event whose transaction id is below `pg_snapshot_xmin`, so every event below it is final).
//! One SQL statement computes it; it is read *before* the data, so the data is at least as new.
//!
//! In Kafka mode projections write no store checkpoint; positions then stay at what the store
//! runner last wrote (0 when it never ran) and `min_position` waits time out: read-your-writes
//! needs the embedded (store) runner.
//!
//! # Waiting
//!
//! Projections send no notification when they commit, so a request with `min_position` polls
//! the position with a short, growing pause (5 ms doubling to 100 ms) until it is reached or
//! the deadline passes. The poll is one indexed statement; a few per waiting request is cheap.
//!
//! # Tenant scoping (two walls)
//!
//! Every SQL statement of the service filters `tenant_id = $1` with the caller's tenant. When
//! row-level security is enabled (the default), each request's transaction additionally runs
//! as the role `annals_reader` with `annals.tenant` set to the caller's tenant and
//! `transaction_read_only` on; the policies of migration `20261123000030` then hide every other
//! tenant's rows even from a query that forgot its filter, and nothing can be written.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::time::Instant;

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
                  ORDER BY global_position DESC LIMIT 1), 0) AS p)"
    };
}

/// Position of a projection consuming some stream types: one indexed probe per type for the
/// first unapplied event.
const TYPED_POSITION: &str = concat!(
    "WITH cp AS (SELECT coalesce((SELECT position FROM subscription_checkpoints \
                                    WHERE name = $1), 0) AS p), ",
    high_water!(),
    ", nx AS (SELECT min(n.global_position) AS p FROM unnest($2::text[]) AS t(stream_type) \
         CROSS JOIN LATERAL (SELECT e.global_position FROM events e \
                              WHERE e.stream_type = t.stream_type \
                                AND e.global_position > (SELECT p FROM cp) \
                              ORDER BY e.global_position LIMIT 1) n) \
     SELECT GREATEST(cp.p, CASE WHEN nx.p IS NULL THEN hw.p ELSE LEAST(hw.p, nx.p - 1) END) \
       FROM cp, hw, nx"
);

/// Position of a projection consuming every stream type.
const ALL_POSITION: &str = concat!(
    "WITH cp AS (SELECT coalesce((SELECT position FROM subscription_checkpoints \
                                    WHERE name = $1), 0) AS p), ",
    high_water!(),
    ", nx AS (SELECT min(global_position) AS p FROM events \
              WHERE global_position > (SELECT p FROM cp)) \
     SELECT GREATEST(cp.p, CASE WHEN nx.p IS NULL THEN hw.p ELSE LEAST(hw.p, nx.p - 1) END) \
       FROM cp, hw, nx"
);

const STORE_POSITION: &str = concat!("WITH ", high_water!(), " SELECT p FROM hw");

/// Applies the second wall (see the module docs) to a fresh transaction.
const ENTER_TENANT: &str = "SELECT set_config('role', 'annals_reader', true), \
            set_config('annals.tenant', $1, true), \
            set_config('transaction_read_only', 'on', true)";

/// Reads positions and opens tenant-scoped transactions.
#[derive(Debug, Clone)]
pub struct Reader {
    pool: PgPool,
    row_level_security: bool,
    wait: Duration,
    problems: Option<Tracked>,
    tasks: Option<Tracked>,
    agent_sessions: Option<Tracked>,
    governance: Option<Tracked>,
    audit: Option<Tracked>,
}

impl Reader {
    /// A reader over `pool`; `wait` bounds every `min_position` wait.
    pub fn new(pool: PgPool, row_level_security: bool, wait: Duration) -> Self {
        Self {
            pool,
            row_level_security,
            wait,
            problems: tracked(Model::Problems),
            tasks: tracked(Model::Tasks),
            agent_sessions: tracked(Model::AgentSessions),
            governance: tracked(Model::Governance),
            audit: tracked(Model::Audit),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn tracked(&self, model: Model) -> Option<&Tracked> {
        match model {
            Model::Problems => self.problems.as_ref(),
            Model::Tasks => self.tasks.as_ref(),
            Model::AgentSessions => self.agent_sessions.as_ref(),
            Model::Governance => self.governance.as_ref(),
            Model::Audit => self.audit.as_ref(),
            Model::Store => None,
        }
    }

    /// The position `model` reflects now.
    pub async fn current(&self, model: Model) -> Result<i64, QueryError> {
        let position: Option<i64> = match self.tracked(model) {
            Some(Tracked {
                checkpoint,
                types: Some(types),
            }) => {
                sqlx::query_scalar(TYPED_POSITION)
                    .bind(checkpoint)
                    .bind(types)
                    .fetch_one(&self.pool)
                    .await?
            }
            Some(Tracked {
                checkpoint,
                types: None,
            }) => {
                sqlx::query_scalar(ALL_POSITION)
                    .bind(checkpoint)
                    .fetch_one(&self.pool)
                    .await?
            }
            None => {
                sqlx::query_scalar(STORE_POSITION)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        Ok(position.unwrap_or(0))
    }

    /// Waits until `model` reflects `min_position` (at most the configured deadline) and
    /// returns the position reached; `min_position <= 0` answers at once.
    pub async fn reach(&self, model: Model, min_position: i64) -> Result<i64, QueryError> {
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(5);
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
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
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
