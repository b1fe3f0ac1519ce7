//! The set-based path: a poison event in a large batch, no xid held while the runner pauses
//! between attempts, and rebuilds swapped in under queries and commands.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aggregates::task::Task;
use aggregates::{Aggregate, CommandContext, DomainEvent};
use async_trait::async_trait;
use event_store::{
    AppendBatch, EventStore, ExpectedVersion, MIGRATOR, NewEvent, RecordedEvent, StreamId,
};
use projections::models::{self, tasks::TasksProjection};
use projections::rebuild::{RebuildOptions, rebuild};
use projections::testkit::*;
use projections::{Projection, ProjectionError, Runner, RunnerOptions};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;

/// Creates tasks `first..first + n` (one `task.created` each) in one append.
async fn create_tasks(store: &EventStore, first: u128, n: u128) {
    let mut batch = AppendBatch::new(meta(TENANT, "loader"));
    for i in first..first + n {
        let id = uuid(0x20_0000 + i);
        let state = <Task as Aggregate>::State::default();
        let ctx = CommandContext::new(minutes(0), "loader");
        let events = Task::decide(
            &state,
            create_task(id, &format!("user-{}", i % 7), Some(minutes(10_000)), false),
            &ctx,
        )
        .unwrap()
        .iter()
        .map(|e| NewEvent::new(e.event_type(), e.schema_version(), e.to_payload()))
        .collect();
        batch = batch.stream(
            StreamId::new(id.to_string()).unwrap(),
            "task",
            ExpectedVersion::NoStream,
            events,
        );
    }
    store.append(batch).await.unwrap();
}

/// An update the projection cannot decode (an empty title breaks the domain's rules).
async fn poison(store: &EventStore, task: u128) {
    let id = uuid(0x20_0000 + task);
    store
        .append(AppendBatch::new(meta(TENANT, "a")).stream(
            StreamId::new(id.to_string()).unwrap(),
            "task",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new(
                "task.updated",
                1,
                json!({"task_id": id, "title": "", "updated_at": minutes(1)}),
            )],
        ))
        .await
        .unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_poison_event_in_a_batch_of_1000_is_dead_lettered_and_999_are_applied(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    create_tasks(&store, 0, 500).await;
    poison(&store, 17).await;
    create_tasks(&store, 500, 499).await;
    let events = all_events(&store).await;
    assert_eq!(events.len(), 1000);

    let runner = Runner::new(
        store.clone(),
        Arc::new(TasksProjection),
        RunnerOptions {
            retry_backoff: Duration::from_millis(1),
            ..RunnerOptions::default()
        },
    );
    let stats = runner.process(&events, None).await.unwrap();
    assert_eq!(
        (stats.applied, stats.dead_lettered, stats.parked),
        (999, 1, 0)
    );
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tasks, 999);
    let letters: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, stream_version FROM projection_dead_letters WHERE projection = 'tasks'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(letters, vec![("failed".to_owned(), 2)]);
    // The redelivered batch is a no-op.
    let again = runner.process(&events, None).await.unwrap();
    assert_eq!(again.applied + again.dead_lettered, 0);
}

/// The tasks projection, reporting every failed (batch or single) application.
struct Reporting {
    inner: TasksProjection,
    failures: mpsc::UnboundedSender<()>,
}

#[async_trait]
impl Projection for Reporting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn stream_types(&self) -> Option<&'static [&'static str]> {
        self.inner.stream_types()
    }
    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }
    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let r = self.inner.apply(conn, event).await;
        if r.is_err() {
            let _ = self.failures.send(());
        }
        r
    }
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let r = self.inner.apply_batch(conn, events).await;
        if r.is_err() {
            let _ = self.failures.send(());
        }
        r
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn no_transaction_holds_an_xid_while_the_runner_sleeps_between_attempts(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    create_tasks(&store, 0, 20).await;
    poison(&store, 3).await;
    create_tasks(&store, 20, 20).await;
    let events = all_events(&store).await;

    let (tx, mut failures) = mpsc::unbounded_channel();
    let runner = Runner::new(
        store.clone(),
        Arc::new(Reporting {
            inner: TasksProjection,
            failures: tx,
        }),
        RunnerOptions {
            // Far longer than the test: once the careful pass has failed, the runner sleeps.
            retry_backoff: Duration::from_secs(3600),
            ..RunnerOptions::default()
        },
    );
    let running = tokio::spawn(async move { runner.process(&events, None).await });
    // The set-based attempt fails, then the first careful pass (which wrote the events before
    // the poison in savepoints, so its transaction had an xid) fails on the poison.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), failures.recv())
            .await
            .expect("the batch failed")
            .unwrap();
    }
    // The pass's transaction is rolled back before the pause: within a bounded wait, no
    // session of this database holds an xid, while the runner is still pausing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let holding: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid() \
                AND backend_xid IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if holding == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a transaction keeps its xid while the runner sleeps"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!running.is_finished(), "the runner is pausing, not done");
    assert!(failures.try_recv().is_err(), "no further attempt yet");
    running.abort();
}

/// Rows of `sql` (a count) read while rebuilds swap tables underneath.
const COUNT_TASKS: &str = "SELECT count(*) FROM tasks";
const COUNT_SUMMARY: &str = "SELECT count(*) FROM task_user_summary_view";
const COUNT_AUDIT: &str = "SELECT count(*) FROM audit_log WHERE resource_type = 'task'";

#[sqlx::test(migrator = "MIGRATOR")]
async fn rebuilds_under_commands_and_queries_never_fail_a_query_or_show_an_empty_model(
    _opts: sqlx::pool::PoolOptions<sqlx::Postgres>,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect_with(connect)
        .await
        .unwrap();
    let store = EventStore::new(pool.clone());
    create_tasks(&store, 0, 300).await;
    catch_up_all(&store).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for sql in [COUNT_TASKS, COUNT_SUMMARY, COUNT_AUDIT] {
        let (pool, stop, reads) = (pool.clone(), stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            let mut least = i64::MAX;
            while !stop.load(Ordering::Relaxed) {
                // Any failure (a dropped table, a stale plan) fails the test here.
                let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                least = least.min(n);
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
            least
        }));
    }
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = 1_000;
            while !stop.load(Ordering::Relaxed) {
                create_tasks(&store, next, 5).await;
                next += 5;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for p in models::all() {
        rebuild(&store, p, &RebuildOptions::default())
            .await
            .unwrap();
    }
    // Readers ran during the rebuilds (bounded wait for at least some reads to have happened).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reads.load(Ordering::Relaxed) < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .unwrap()
        .unwrap();
    for r in readers {
        let least = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .unwrap()
            .unwrap();
        assert!(least >= 7, "a query saw an emptied model ({least} rows)");
    }
    let tasks: i64 = sqlx::query_scalar(COUNT_TASKS)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(tasks >= 300, "the swapped-in model holds the seeded tasks");

    // The rebuilt model equals the incrementally built one.
    catch_up_all(&store).await;
    let incremental = model_hashes(&pool).await;
    for p in models::all() {
        rebuild(&store, p, &RebuildOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(model_hashes(&pool).await, incremental);
}

/// What a swapped-in table must keep: index names and definitions, RLS flags and policies,
/// grants, triggers; and the views' definitions and options.
const CATALOG: &str = "
SELECT 'index ' || i.indexrelid::regclass::text || ' ' || regexp_replace(pg_get_indexdef(i.indexrelid), ' ON \\S+ ', ' ON t ')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relname = ANY($1)
UNION ALL
SELECT 'rls ' || relname || ' ' || relrowsecurity || ' ' || relforcerowsecurity || ' ' || coalesce(relacl::text, '')
  FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname = ANY($1)
UNION ALL
SELECT 'policy ' || tablename || ' ' || policyname || ' ' || permissive || ' ' || roles::text || ' ' || cmd
       || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
  FROM pg_policies WHERE schemaname = 'public' AND tablename = ANY($1)
UNION ALL
SELECT 'trigger ' || c.relname || ' ' || t.tgname || ' ' || t.tgenabled::text || ' ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1) AND NOT t.tgisinternal
UNION ALL
SELECT 'view ' || c.relname || ' ' || coalesce(c.reloptions::text, '') || ' ' || coalesce(c.relacl::text, '')
       || ' ' || pg_get_viewdef(c.oid)
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'
ORDER BY 1";

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_swapped_in_table_keeps_indexes_policies_grants_triggers_and_views(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    create_tasks(&store, 0, 10).await;
    catch_up_all(&store).await;
    let tables: Vec<String> = models::all()
        .iter()
        .flat_map(|p| p.tables().iter().map(|t| (*t).to_owned()))
        .collect();
    let before: Vec<String> = sqlx::query_scalar(CATALOG)
        .bind(&tables)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(before.iter().any(|l| l.starts_with("trigger audit_log")));
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("view task_user_summary_view"))
    );
    for p in models::all() {
        rebuild(&store, p, &RebuildOptions::default())
            .await
            .unwrap();
    }
    let after: Vec<String> = sqlx::query_scalar(CATALOG)
        .bind(&tables)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(after, before);
    // The append-only trigger is live on the swapped-in audit log.
    let refused = sqlx::query("DELETE FROM audit_log").execute(&pool).await;
    assert!(refused.is_err(), "the audit log is still append-only");
    let retired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname IN ('annals_retired', 'annals_rebuild') AND c.relkind = 'r' \
            AND c.relname = ANY($1)",
    )
    .bind(&tables)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        retired, 0,
        "no retired or shadow model tables are left behind"
    );
}
