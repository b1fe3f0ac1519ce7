//! Redelivery, reordering across streams, crashes between commit and offset commit, poison
//! events and dead letters: the models always equal a clean rebuild.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aggregates::task::{Task, TaskCommand};
use event_store::{AppendBatch, EventStore, ExpectedVersion, MIGRATOR, NewEvent, StreamId};
use projections::rebuild::{RebuildOptions, rebuild};
use projections::source::StoreSource;
use projections::testkit::*;
use projections::{Runner, RunnerOptions, dead_letters, models};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

async fn some_history(store: &EventStore) {
    problem_scenario(store, TENANT, 1, 0).await;
    session_scenario(store, TENANT, 1, "erin").await;
    for i in 0..6_u128 {
        let id = uuid(0xd00 + i);
        exec::<Task>(
            store,
            TENANT,
            id,
            create_task(
                id,
                if i % 2 == 0 { "a" } else { "b" },
                Some(minutes(5000)),
                false,
            ),
            minutes(0),
            "a",
        )
        .await;
        if i % 3 == 0 {
            exec::<Task>(
                store,
                TENANT,
                id,
                TaskCommand::CompleteTask {
                    task_id: task_id(id),
                },
                minutes(1),
                "a",
            )
            .await;
        }
    }
    problem_scenario(store, TENANT, 2, 5).await;
    session_scenario(store, TENANT, 2, "gus").await;
}

async fn rebuild_all(store: &EventStore) {
    for p in models::all() {
        rebuild(store, p, &RebuildOptions::default()).await.unwrap();
    }
}

fn runner(store: &EventStore, p: Arc<dyn projections::Projection>) -> Runner {
    Runner::new(
        store.clone(),
        p,
        RunnerOptions {
            retry_backoff: Duration::from_millis(1),
            ..RunnerOptions::default()
        },
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn redelivered_reordered_and_crashed_batches_equal_a_clean_rebuild(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    some_history(&store).await;
    let events = all_events(&store).await;

    // Kafka-like delivery: partitions by stream, interleaved in another order than the global
    // one; every batch delivered twice (a crash after the read-model commit, before the offset
    // commit); a later event delivered before its predecessors (the gap is filled from the
    // store, the predecessors then arrive as duplicates).
    let mut by_stream: Vec<Vec<event_store::RecordedEvent>> = Vec::new();
    for e in &events {
        match by_stream.iter_mut().find(|v| v[0].stream_id == e.stream_id) {
            Some(v) => v.push(e.clone()),
            None => by_stream.push(vec![e.clone()]),
        }
    }
    by_stream.reverse();
    let mut delivery = Vec::new();
    let longest = by_stream.iter().map(Vec::len).max().unwrap();
    for chunk in (0..longest).step_by(3) {
        for s in &by_stream {
            delivery.extend(s.iter().skip(chunk).take(3).cloned());
        }
    }
    let long = by_stream.iter().position(|s| s.len() >= 3).unwrap();
    let third = by_stream[long][2].clone();
    delivery.insert(0, third);
    for p in models::all() {
        let r = runner(&store, p);
        let mut gap_filled = 0;
        for batch in delivery.chunks(7) {
            let first = r.process(batch, None).await.unwrap();
            let again = r.process(batch, None).await.unwrap();
            assert_eq!(
                again.applied + again.gap_filled,
                0,
                "a redelivered batch applies nothing"
            );
            gap_filled += first.gap_filled;
        }
        if r.projection().handles(&by_stream[long][0].stream_type) {
            assert_eq!(gap_filled, 2, "{}", r.projection().name());
        }
    }
    let incremental = model_hashes(&pool).await;
    assert!(
        incremental
            .iter()
            .any(|(t, n, _)| t == "audit_log" && *n == events.len() as i64)
    );

    rebuild_all(&store).await;
    assert_eq!(model_hashes(&pool).await, incremental);

    // And the store-sourced build in global order (with checkpoints) is the same model too.
    sqlx::query("TRUNCATE subscription_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    for t in COMPARED {
        if *t == "audit_log" {
            continue;
        }
        sqlx::query(&format!("DELETE FROM {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL annals.audit_swap = 'on'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("TRUNCATE audit_log")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    catch_up_all(&store).await;
    assert_eq!(model_hashes(&pool).await, incremental);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn live_runners_follow_the_store_and_survive_a_rebuild(
    _opts: sqlx::pool::PoolOptions<sqlx::Postgres>,
    connect: sqlx::postgres::PgConnectOptions,
) {
    // Five runners with their listeners need more than the test pool's five connections.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect_with(connect)
        .await
        .unwrap();
    let store = EventStore::new(pool.clone());
    problem_scenario(&store, TENANT, 1, 0).await;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for p in models::all() {
        let r = runner(&store, p.clone());
        let token = shutdown.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut source = StoreSource::new(store, p.checkpoint_name(), p.stream_types(), 50);
            r.run(&mut source, &token).await
        }));
    }
    session_scenario(&store, TENANT, 1, "erin").await;
    // A rebuild while the runners are live: they are fenced and resume from the swap.
    rebuild(
        &store,
        models::by_name("agent_sessions").unwrap(),
        &RebuildOptions::default(),
    )
    .await
    .unwrap();
    session_scenario(&store, TENANT, 2, "gus").await;
    problem_scenario(&store, TENANT, 2, 3).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = 0;
        for p in models::all() {
            behind += projections::lag::measure(&pool, p.as_ref())
                .await
                .unwrap()
                .events;
        }
        let checkpoints: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM subscription_checkpoints c WHERE c.position < (SELECT max(global_position) FROM events e) AND c.name = 'projection:audit'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if behind == 0 && checkpoints == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runners did not catch up: {behind} behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let live = model_hashes(&pool).await;
    rebuild_all(&store).await;
    assert_eq!(model_hashes(&pool).await, live);
}

/// Appends a hand-written event (the stream's history no longer folds through the domain).
async fn raw(
    store: &EventStore,
    id: uuid::Uuid,
    after: u64,
    event_type: &str,
    payload: serde_json::Value,
) {
    store
        .append(AppendBatch::new(meta(TENANT, "a")).stream(
            StreamId::new(id.to_string()).unwrap(),
            "task",
            ExpectedVersion::Exact(after),
            vec![NewEvent::new(event_type, 1, payload)],
        ))
        .await
        .unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn poison_event_is_dead_lettered_its_stream_parks_and_others_move(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let (poisoned, healthy) = (uuid(0xf1), uuid(0xf2));
    exec::<Task>(
        &store,
        TENANT,
        poisoned,
        create_task(poisoned, "a", Some(minutes(900)), false),
        minutes(0),
        "a",
    )
    .await;
    // An event the projection cannot decode (an empty title violates the domain's rules).
    store
        .append(AppendBatch::new(meta(TENANT, "a")).stream(
            StreamId::new(poisoned.to_string()).unwrap(),
            "task",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new(
                "task.updated",
                1,
                json!({"task_id": poisoned, "title": "", "updated_at": minutes(1)}),
            )],
        ))
        .await
        .unwrap();
    raw(
        &store,
        poisoned,
        2,
        "task.completed",
        json!({"task_id": poisoned, "completed_at": minutes(2)}),
    )
    .await;
    exec::<Task>(
        &store,
        TENANT,
        healthy,
        create_task(healthy, "b", Some(minutes(900)), false),
        minutes(3),
        "b",
    )
    .await;
    exec::<Task>(
        &store,
        TENANT,
        healthy,
        TaskCommand::CompleteTask {
            task_id: task_id(healthy),
        },
        minutes(4),
        "b",
    )
    .await;

    let tasks = models::by_name("tasks").unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(30),
        catch_up(&store, tasks.clone(), 100),
    )
    .await
    .unwrap();
    assert_eq!(
        (stats.applied, stats.dead_lettered, stats.parked),
        (3, 1, 1)
    );

    let dl = dead_letters::list(&pool, Some("tasks"), false, 10)
        .await
        .unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(
        (dl[0].kind.as_str(), dl[0].stream_version, dl[0].attempts),
        ("failed", 2, 3)
    );
    assert!(dl[0].error.contains("task.updated"), "{}", dl[0].error);
    assert_eq!((dl[1].kind.as_str(), dl[1].stream_version), ("parked", 3));
    let status = |id| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM tasks WHERE task_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        status(healthy).await,
        "completed",
        "other streams keep moving"
    );
    assert_eq!(
        status(poisoned).await,
        "active",
        "the poisoned stream is parked"
    );
    // Later events of the parked stream park too, even in a later batch.
    raw(
        &store,
        poisoned,
        3,
        "task.restored",
        json!({"task_id": poisoned, "previous_status": "completed", "restored_at": minutes(5)}),
    )
    .await;
    catch_up(&store, tasks.clone(), 100).await;
    assert_eq!(
        dead_letters::list(&pool, Some("tasks"), false, 10)
            .await
            .unwrap()
            .len(),
        3
    );

    // Retrying cannot fix a bad payload; skipping it applies the parked events in order.
    let report = dead_letters::retry(&store, tasks.as_ref(), None)
        .await
        .unwrap();
    assert_eq!((report.applied, report.still_failing), (0, 1));
    let report = dead_letters::skip(&store, tasks.as_ref(), dl[0].event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.skipped, report.applied, report.still_failing),
        (1, 2, 0)
    );
    assert_eq!(status(poisoned).await, "active");
    let version: i64 = sqlx::query_scalar("SELECT version FROM tasks WHERE task_id = $1")
        .bind(poisoned)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 4);
    assert!(
        dead_letters::list(&pool, Some("tasks"), false, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let closed: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, status FROM projection_dead_letters ORDER BY stream_version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        closed,
        vec![
            ("failed".into(), "skipped".into()),
            ("parked".into(), "resolved".into()),
            ("parked".into(), "resolved".into())
        ]
    );
    // New events of the stream apply normally again.
    raw(
        &store,
        poisoned,
        4,
        "task.completed",
        json!({"task_id": poisoned, "completed_at": minutes(6)}),
    )
    .await;
    catch_up(&store, tasks.clone(), 100).await;
    assert_eq!(status(poisoned).await, "completed");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_failure_fixed_later_is_retried_successfully(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = uuid(0xf3);
    // A read-model constraint the handler trips over (think: a bug fixed by a migration).
    sqlx::query("ALTER TABLE tasks ADD CONSTRAINT test_no_evil CHECK (owner <> 'evil')")
        .execute(&pool)
        .await
        .unwrap();
    exec::<Task>(
        &store,
        TENANT,
        id,
        create_task(id, "evil", Some(minutes(900)), false),
        minutes(0),
        "evil",
    )
    .await;
    exec::<Task>(
        &store,
        TENANT,
        id,
        TaskCommand::CompleteTask {
            task_id: task_id(id),
        },
        minutes(1),
        "evil",
    )
    .await;
    let tasks = models::by_name("tasks").unwrap();
    let stats = catch_up(&store, tasks.clone(), 100).await;
    assert_eq!((stats.dead_lettered, stats.parked), (1, 1));
    sqlx::query("ALTER TABLE tasks DROP CONSTRAINT test_no_evil")
        .execute(&pool)
        .await
        .unwrap();
    let report = dead_letters::retry(&store, tasks.as_ref(), Some(&id.to_string()))
        .await
        .unwrap();
    assert_eq!((report.applied, report.still_failing), (2, 0));
    let status: String = sqlx::query_scalar("SELECT status FROM tasks WHERE task_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "completed");
    let summary: (i64, i64) = sqlx::query_as(
        "SELECT active_count, completed_count FROM task_user_summary WHERE owner = 'evil'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(summary, (0, 1));
}

/// Ids are scoped to the tenant (issue 14): two tenants' aggregates and children of the same ids,
/// delivered interleaved in mixed batches (and twice), project apart, and a rebuild (fresh
/// shadow tables swapped in) gives the same models under the same tenant-scoped keys.
#[sqlx::test(migrator = "MIGRATOR")]
async fn two_tenants_with_the_same_ids_project_apart_and_equal_a_rebuild(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = uuid(0xd00);
    for (tenant, owner) in [(TENANT, "a"), (OTHER, "b")] {
        problem_scenario(&store, tenant, 1, 0).await;
        session_scenario(&store, tenant, 1, owner).await;
        exec::<Task>(
            &store,
            tenant,
            id,
            create_task(id, owner, Some(minutes(5000)), false),
            minutes(0),
            owner,
        )
        .await;
    }
    let events = all_events(&store).await;
    let (a, b): (Vec<_>, Vec<_>) = events.iter().cloned().partition(|e| e.tenant_id == TENANT);
    assert_eq!(a.len(), b.len());
    let delivery: Vec<_> = a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect();
    for p in models::all() {
        let r = runner(&store, p);
        for batch in delivery.chunks(5) {
            r.process(batch, None).await.unwrap();
            let again = r.process(batch, None).await.unwrap();
            assert_eq!(again.applied + again.gap_filled, 0);
        }
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, owner FROM tasks WHERE task_id = $1 ORDER BY tenant_id")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        owners,
        vec![(TENANT.into(), "a".into()), (OTHER.into(), "b".into())]
    );
    let incremental = model_hashes(&pool).await;

    rebuild_all(&store).await;
    assert_eq!(model_hashes(&pool).await, incremental);
    for (constraint, key) in [
        ("tasks_pkey", "PRIMARY KEY (tenant_id, task_id)"),
        (
            "problem_tree_nodes_pkey",
            "PRIMARY KEY (tenant_id, node_id)",
        ),
        (
            "audit_resource_state_pkey",
            "PRIMARY KEY (tenant_id, resource_id)",
        ),
        (
            "projection_streams_pkey",
            "PRIMARY KEY (projection, tenant_id, stream_id)",
        ),
    ] {
        let def: String = sqlx::query_scalar(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c \
               JOIN pg_namespace n ON n.oid = c.connamespace \
              WHERE n.nspname = 'public' AND c.conname = $1",
        )
        .bind(constraint)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(def, key, "after the rebuild's swap");
    }
}
