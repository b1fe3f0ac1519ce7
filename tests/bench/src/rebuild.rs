//! Projection rebuild: every read model rebuilt from stored events with the projections crate's
//! [`rebuild_all`] API (every projection in one pass), against a raw floor (batched read of
//! `events` plus a set-based upsert of a per-stream row and an insert of one audit row per
//! event, in one transaction per batch).

use std::time::Instant;

use aggregates::task::{CreateTask, Priority, Tags, Task, TaskCommand, UpdateTask};
use aggregates::values::{TaskId, TaskTitle, Text, UserRef};
use aggregates::{Aggregate, CommandContext, DomainEvent};
use anyhow::Context;
use chrono::{DateTime, Duration, TimeZone, Utc};
use event_store::{AppendBatch, EventStore, ExpectedVersion, NewEvent, Position, StreamId};
use projections::rebuild::{RebuildOptions, rebuild_all};
use serde::Serialize;
use uuid::Uuid;

use crate::stats::Measurement;
use crate::stores::metadata;

/// Events per task stream: created, updated, completed, restored, completed or deleted.
const PER_TASK: u64 = 5;
/// Streams per seeding append.
const TASKS_PER_APPEND: u64 = 500;

/// Results of the rebuild suite.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildResult {
    /// Events in the store.
    pub stored_events: u64,
    /// Rebuild of every projection in one pass (events/s = stored events / time).
    pub annals: Measurement,
    /// Per projection: (name, events applied, seconds busy in its batches; the projections'
    /// batches run side by side, so these overlap).
    pub per_projection: Vec<(String, u64, f64)>,
    /// The raw floor over the same events.
    pub raw_floor: Measurement,
}

fn at(minutes: i64) -> DateTime<Utc> {
    // A fixed far-future clock keeps "due date after now" rules satisfied.
    Utc.with_ymd_and_hms(2030, 3, 1, 9, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
        + Duration::minutes(minutes)
}

/// Task commands decided by the real aggregate, appended `TASKS_PER_APPEND` streams at a time.
pub async fn seed(store: &EventStore, events: u64) -> anyhow::Result<u64> {
    let tasks = events.div_ceil(PER_TASK);
    let mut n = 0;
    while n < tasks {
        let mut batch = AppendBatch::new(metadata());
        for _ in 0..TASKS_PER_APPEND.min(tasks - n) {
            let id = Uuid::from_u128(0x10_0000 + u128::from(n));
            let task_id = TaskId::new(id)?;
            let cmds = vec![
                TaskCommand::CreateTask(CreateTask {
                    task_id,
                    owner: UserRef::parse(format!("user-{}", n % 97))?,
                    title: TaskTitle::parse(format!("task {n}"))?,
                    description: Some(Text::parse("description", "numbers and prose")?),
                    due_date: Some(at(10_000)),
                    priority: Some(Priority::High),
                    tags: Tags::parse(["work", "q3"])?,
                    reminder_config: None,
                    recurrence: None,
                    parent_task_id: None,
                    occurrence: 1,
                }),
                {
                    let mut u = UpdateTask::new(task_id);
                    u.title = Some(TaskTitle::parse(format!("renamed {n}"))?);
                    TaskCommand::UpdateTask(u)
                },
                TaskCommand::CompleteTask { task_id },
                TaskCommand::RestoreTask { task_id },
                if n.is_multiple_of(3) {
                    TaskCommand::DeleteTask { task_id }
                } else {
                    TaskCommand::CompleteTask { task_id }
                },
            ];
            let mut state = <Task as Aggregate>::State::default();
            let mut new = Vec::with_capacity(PER_TASK as usize);
            for (k, cmd) in cmds.into_iter().enumerate() {
                let ctx = CommandContext::new(at(k as i64), "loader");
                for e in Task::decide(&state, cmd, &ctx).map_err(|e| anyhow::anyhow!("{e:?}"))? {
                    new.push(NewEvent::new(
                        e.event_type(),
                        e.schema_version(),
                        e.to_payload(),
                    ));
                    state = Task::evolve(state, &e);
                }
            }
            batch = batch.stream(
                StreamId::new(id.to_string())?,
                "task",
                ExpectedVersion::NoStream,
                new,
            );
            n += 1;
        }
        store.append(batch).await.context("seeding")?;
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await?;
    Ok(u64::try_from(total)?)
}

/// Rebuilds every projection of [`projections::models::all`] in one pass
/// ([`rebuild_all`], the rebuild's default batch size), then the raw floor.
pub async fn run(store: &EventStore, stored: u64) -> anyhow::Result<RebuildResult> {
    // Vacuum/analyze once so that neither contender pays for the seeding's dead tuples.
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(store.pool())
        .await?;
    let mut options = RebuildOptions {
        progress: false,
        ..RebuildOptions::default()
    };
    // For comparing batch sizes by hand; the reported figure uses the rebuild's default.
    if let Some(size) = std::env::var("ANNALS_BENCH_REBUILD_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.batch_size = size;
    }
    let all = projections::models::all();
    let started = Instant::now();
    let reports = rebuild_all(store, &all, &options)
        .await
        .map_err(|e| anyhow::anyhow!("rebuild: {e}"))?;
    let per = all
        .iter()
        .zip(&reports)
        .map(|(p, r)| (p.name().to_owned(), r.events, r.busy.as_secs_f64()))
        .collect();
    let annals = Measurement::new(1, stored, started.elapsed(), None);

    let raw_floor = raw_floor(store, stored).await?;
    Ok(RebuildResult {
        stored_events: stored,
        annals,
        per_projection: per,
        raw_floor,
    })
}

const RAW_TABLES: &str = "
CREATE TABLE IF NOT EXISTS bench_floor_streams (
    stream_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, version BIGINT NOT NULL,
    state JSONB NOT NULL, last_position BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS bench_floor_audit (
    global_position BIGINT PRIMARY KEY, event_id UUID NOT NULL, tenant_id TEXT NOT NULL,
    resource_id TEXT NOT NULL, action TEXT NOT NULL, changed JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL);
TRUNCATE bench_floor_streams, bench_floor_audit;
";

/// Reads `events` in batches of 1,000 by position and, per batch in one transaction, upserts
/// one row per stream and inserts one audit row per event, set-based (`UNNEST`).
async fn raw_floor(store: &EventStore, stored: u64) -> anyhow::Result<Measurement> {
    let pool = store.pool();
    sqlx::raw_sql(RAW_TABLES).execute(pool).await?;
    let started = Instant::now();
    let mut after = Position::START.0;
    let mut seen = 0u64;
    loop {
        let rows: Vec<(i64, Uuid, String, String, i64, String, String)> = sqlx::query_as(
            "SELECT global_position, event_id, stream_id, tenant_id, stream_version, \
                    event_type, payload::text FROM events \
              WHERE global_position > $1 ORDER BY global_position LIMIT 1000",
        )
        .bind(after)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        seen += rows.len() as u64;
        let mut tx = pool.begin().await?;
        let pos: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let ids: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
        let streams: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        let tenants: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.4).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.5.as_str()).collect();
        let payloads: Vec<&str> = rows.iter().map(|r| r.6.as_str()).collect();
        sqlx::query(
            "INSERT INTO bench_floor_streams AS s (stream_id, tenant_id, version, state, last_position) \
             SELECT DISTINCT ON (sid) sid, t, v, p::jsonb, g \
               FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[]) \
                    AS u(sid, t, v, p, g) \
              ORDER BY sid, v DESC \
             ON CONFLICT (stream_id) DO UPDATE \
                SET version = excluded.version, state = s.state || excluded.state, \
                    last_position = excluded.last_position",
        )
        .bind(&streams)
        .bind(&tenants)
        .bind(&versions)
        .bind(&payloads)
        .bind(&pos)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO bench_floor_audit (global_position, event_id, tenant_id, resource_id, \
                                            action, changed, recorded_at) \
             SELECT g, e, t, sid, a, p::jsonb, now() \
               FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[]) \
                    AS u(g, e, t, sid, a, p)",
        )
        .bind(&pos)
        .bind(&ids)
        .bind(&tenants)
        .bind(&streams)
        .bind(&types)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    anyhow::ensure!(seen == stored, "floor read {seen} of {stored} events");
    Ok(Measurement::new(1, seen, started.elapsed(), None))
}
