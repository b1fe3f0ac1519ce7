//! The stores under test, behind one `append(op, events)` call: the annals event store, a raw
//! `INSERT` floor, `cqrs-es` + `postgres-es` and `esrs`.
//!
//! Every operation is one command creating a fresh aggregate with `events` events of the same
//! payload, in one transaction, through the store's own append API:
//!
//! - annals: [`EventStore::append`] with `NoStream` and a command id (idempotent, as the command
//!   API appends): concurrent appends share a call of `annals_append_group` (group commit).
//! - raw: `INSERT … VALUES` (one event) or `INSERT … SELECT FROM UNNEST` (a batch), autocommit,
//!   into a plain table with the same columns, constraints and indexes as `events`.
//! - postgres-es: `PersistedEventRepository::persist` (one transaction, one `INSERT` per event).
//!   Its framework's `CqrsFramework::execute` would add a load (`SELECT`) per command.
//! - esrs: `AggregateManager::handle_command` on a fresh `AggregateState` (the README's usage;
//!   `PgStore::persist`: one transaction, one `INSERT` per event; no advisory lock since nothing
//!   is loaded).

use std::collections::HashMap;
use std::convert::Infallible;

use anyhow::Context;
use event_store::{AppendBatch, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

use crate::db;

/// Which store a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Plain `INSERT` into a table shaped like `events`: the floor.
    Raw,
    /// `EventStore::append`.
    Annals,
    /// `cqrs-es` + `postgres-es`.
    PostgresEs,
    /// `esrs` (primait event_sourcing.rs).
    Esrs,
}

impl StoreKind {
    /// Every store, floor first.
    pub const ALL: [StoreKind; 4] = [
        StoreKind::Raw,
        StoreKind::Annals,
        StoreKind::PostgresEs,
        StoreKind::Esrs,
    ];

    /// Display and database name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw insert",
            Self::Annals => "annals",
            Self::PostgresEs => "cqrs-es/postgres-es",
            Self::Esrs => "esrs",
        }
    }

    /// Short identifier (database names, JSON).
    pub fn id(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Annals => "annals",
            Self::PostgresEs => "postgres_es",
            Self::Esrs => "esrs",
        }
    }
}

/// The payload every store writes: a task-creation event of realistic size (~300 bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCreated {
    /// Aggregate id.
    pub task_id: Uuid,
    /// Owner.
    pub owner: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// `low|medium|high`.
    pub priority: String,
    /// Tags.
    pub tags: Vec<String>,
    /// RFC 3339 due date.
    pub due_date: String,
}

impl TaskCreated {
    /// The `k`-th event of operation `op`.
    pub fn sample(task_id: Uuid, op: u64, k: usize) -> Self {
        Self {
            task_id,
            owner: format!("user-{}", op % 97),
            title: format!("Write the quarterly report #{op}/{k}"),
            description: "Collect the numbers from finance, draft the prose, circulate for review"
                .to_owned(),
            priority: ["low", "medium", "high"][(op % 3) as usize].to_owned(),
            tags: vec!["finance".to_owned(), "q3".to_owned()],
            due_date: "2030-03-08T09:00:00Z".to_owned(),
        }
    }
}

/// The peers' event type (both libraries want a domain enum).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BenchEvent {
    /// The only event.
    TaskCreated(TaskCreated),
}

impl cqrs_es::DomainEvent for BenchEvent {
    fn event_type(&self) -> String {
        "TaskCreated".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// The cqrs-es aggregate (stateless: the benchmark only appends).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CqrsTask;

impl cqrs_es::Aggregate for CqrsTask {
    const TYPE: &'static str = "task";
    type Command = ();
    type Event = BenchEvent;
    type Error = Infallible;
    type Services = ();

    async fn handle(
        &mut self,
        _command: Self::Command,
        _services: &Self::Services,
        _sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    fn apply(&mut self, _event: Self::Event) {}
}

/// The esrs aggregate: a command is the list of events to record.
#[derive(Debug)]
pub struct EsrsTask;

impl esrs::Aggregate for EsrsTask {
    const NAME: &'static str = "task";
    type State = ();
    type Command = Vec<TaskCreated>;
    type Event = BenchEvent;
    type Error = Infallible;

    fn handle_command(
        _state: &Self::State,
        command: Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error> {
        Ok(command.into_iter().map(BenchEvent::TaskCreated).collect())
    }

    fn apply_event(state: Self::State, _payload: Self::Event) -> Self::State {
        state
    }
}

/// A store ready to take appends.
pub enum Target {
    /// See [`StoreKind::Raw`].
    Raw(PgPool),
    /// See [`StoreKind::Annals`].
    Annals(EventStore),
    /// See [`StoreKind::PostgresEs`].
    PostgresEs(postgres_es::PostgresEventRepository),
    /// See [`StoreKind::Esrs`].
    Esrs(esrs::manager::AggregateManager<esrs::store::postgres::PgStore<EsrsTask>>),
}

/// The plain table of the raw floor: the columns, constraints and indexes of annals' `events`.
const RAW_SCHEMA: &str = "
CREATE SEQUENCE raw_events_position;
CREATE TABLE raw_events (
    global_position BIGINT      PRIMARY KEY DEFAULT nextval('raw_events_position'),
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL,
    stream_type     TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL CHECK (stream_version > 0),
    tenant_id       TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL CHECK (schema_version > 0),
    payload         JSON        NOT NULL,
    metadata        JSON        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    tx_id           XID8        NOT NULL DEFAULT pg_current_xact_id(),
    hash            BYTEA       NOT NULL CHECK (octet_length(hash) = 32),
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX ON raw_events (stream_type, global_position);
CREATE INDEX ON raw_events (recorded_at);
";

/// postgres-es's events table, as its documentation lays it out.
const POSTGRES_ES_SCHEMA: &str = "
CREATE TABLE events (
    aggregate_type TEXT   NOT NULL,
    aggregate_id   TEXT   NOT NULL,
    sequence       BIGINT NOT NULL CHECK (sequence >= 0),
    event_type     TEXT   NOT NULL,
    event_version  TEXT   NOT NULL,
    payload        JSON   NOT NULL,
    metadata       JSON   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots (
    aggregate_type   TEXT   NOT NULL,
    aggregate_id     TEXT   NOT NULL,
    last_sequence    BIGINT NOT NULL CHECK (last_sequence >= 0),
    current_snapshot BIGINT NOT NULL CHECK (current_snapshot >= 0),
    payload          JSON   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
";

/// Annals metadata of the benchmark's service actor.
pub fn metadata() -> Metadata {
    let mut m = Metadata::new("bench", "bench-svc", "service");
    m.correlation_id = Some(Uuid::now_v7());
    m
}

impl Target {
    /// Prepares `kind` in the fresh database `options` with a pool of `pool_size` connections;
    /// annals groups its appends as `group` says.
    pub async fn setup(
        kind: StoreKind,
        options: &PgConnectOptions,
        pool_size: u32,
        group: event_store::GroupCommitOptions,
    ) -> anyhow::Result<Target> {
        let pool = db::pool(options, pool_size).await?;
        Ok(match kind {
            StoreKind::Raw => {
                sqlx::raw_sql(RAW_SCHEMA).execute(&pool).await?;
                Target::Raw(pool)
            }
            StoreKind::Annals => {
                event_store::migrate(&pool).await?;
                Target::Annals(EventStore::with_options(pool, group))
            }
            StoreKind::PostgresEs => {
                sqlx::raw_sql(POSTGRES_ES_SCHEMA).execute(&pool).await?;
                Target::PostgresEs(postgres_es::PostgresEventRepository::new(pool))
            }
            StoreKind::Esrs => {
                let store = esrs::store::postgres::PgStoreBuilder::<EsrsTask>::new(pool)
                    .try_build()
                    .await
                    .context("esrs PgStoreBuilder")?;
                Target::Esrs(esrs::manager::AggregateManager::new(store))
            }
        })
    }

    /// Group-commit counters of the annals store (`None` for the others).
    pub fn group_commit_stats(&self) -> Option<event_store::GroupCommitStats> {
        match self {
            Target::Annals(store) => Some(store.group_commit_stats()),
            _ => None,
        }
    }

    /// Operation `op`: one command creating a fresh aggregate with `events` events.
    pub async fn append(&self, op: u64, events: usize) -> anyhow::Result<()> {
        let id = Uuid::now_v7();
        let payloads: Vec<TaskCreated> = (0..events)
            .map(|k| TaskCreated::sample(id, op, k))
            .collect();
        match self {
            Target::Raw(pool) => raw_append(pool, id, &payloads).await,
            Target::Annals(store) => {
                let events = payloads
                    .iter()
                    .map(|p| Ok(NewEvent::new("task.created", 1, serde_json::to_value(p)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let batch = AppendBatch::new(metadata())
                    .stream(
                        StreamId::new(id.to_string())?,
                        "task",
                        ExpectedVersion::NoStream,
                        events,
                    )
                    .idempotent(Uuid::now_v7());
                store.append(batch).await?;
                Ok(())
            }
            Target::PostgresEs(repo) => {
                use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
                let mut meta = HashMap::new();
                meta.insert("tenant", "bench");
                meta.insert("actor", "bench-svc");
                let meta = serde_json::to_value(meta)?;
                let events = payloads
                    .into_iter()
                    .enumerate()
                    .map(|(k, p)| {
                        Ok(SerializedEvent::new(
                            id.to_string(),
                            k + 1,
                            "task".to_owned(),
                            "TaskCreated".to_owned(),
                            "1.0".to_owned(),
                            serde_json::to_value(BenchEvent::TaskCreated(p))?,
                            meta.clone(),
                        ))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                repo.persist::<CqrsTask>(&events, None)
                    .await
                    .map_err(|e| anyhow::anyhow!("postgres-es persist: {e}"))?;
                Ok(())
            }
            Target::Esrs(manager) => {
                let state = esrs::AggregateState::with_id(id);
                let _ = manager
                    .handle_command(state, payloads)
                    .await
                    .map_err(|e| anyhow::anyhow!("esrs persist: {e}"))?;
                Ok(())
            }
        }
    }
}

async fn raw_append(pool: &PgPool, id: Uuid, payloads: &[TaskCreated]) -> anyhow::Result<()> {
    let mut meta = metadata();
    meta.command_id = Some(Uuid::now_v7());
    let meta = serde_json::to_string(&meta)?;
    let hash = [7u8; 32];
    if let [p] = payloads {
        sqlx::query(
            "INSERT INTO raw_events (event_id, stream_id, stream_type, stream_version, tenant_id, \
             event_type, schema_version, payload, metadata, hash) \
             VALUES ($1, $2, 'task', 1, 'bench', 'task.created', 1, $3::json, $4::json, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(id.to_string())
        .bind(serde_json::to_string(p)?)
        .bind(&meta)
        .bind(hash.as_slice())
        .execute(pool)
        .await?;
        return Ok(());
    }
    let ids: Vec<Uuid> = payloads.iter().map(|_| Uuid::now_v7()).collect();
    let versions: Vec<i64> = (1..=payloads.len() as i64).collect();
    let bodies = payloads
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO raw_events (event_id, stream_id, stream_type, stream_version, tenant_id, \
         event_type, schema_version, payload, metadata, hash) \
         SELECT e, $2, 'task', v, 'bench', 'task.created', 1, p::json, $4::json, $5 \
           FROM UNNEST($1::uuid[], $3::bigint[], $6::text[]) AS u(e, v, p)",
    )
    .bind(&ids)
    .bind(id.to_string())
    .bind(&versions)
    .bind(&meta)
    .bind(hash.as_slice())
    .bind(&bodies)
    .execute(pool)
    .await?;
    Ok(())
}
