//! What a runner does with events that do not come straight from the store (Kafka mode: no
//! store checkpoint moves with a batch): it records the store position it reflects, and it
//! trusts no message whose hash does not chain onto its stream's previous hash.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use aggregates::task::{Task, TaskCommand, UpdateTask};
use aggregates::values::TaskTitle;
use event_store::{EventStore, MIGRATOR, Position, RecordedEvent};
use projections::models::{self, audit::AuditProjection, tasks::TasksProjection};
use projections::rebuild::{RebuildOptions, rebuild};
use projections::testkit::*;
use projections::{Projection, Runner, RunnerOptions};
use sqlx::PgPool;

fn runner(store: &EventStore, p: Arc<dyn Projection>) -> Runner {
    Runner::new(
        store.clone(),
        p,
        RunnerOptions {
            retry_backoff: Duration::from_millis(1),
            ..RunnerOptions::default()
        },
    )
}

async fn recorded(pool: &PgPool, projection: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce((SELECT position FROM subscription_checkpoints WHERE name = $1), 0)",
    )
    .bind(format!("projection:{projection}"))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// One task per append, so that each has its own position.
async fn three_tasks(store: &EventStore) -> Vec<RecordedEvent> {
    for n in 0..3 {
        exec::<Task>(
            store,
            TENANT,
            uuid(0x30 + n),
            create_task(uuid(0x30 + n), "ann", Some(minutes(900)), false),
            minutes(0),
            "ann",
        )
        .await;
    }
    all_events(store).await
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn kafka_mode_records_the_store_position_it_reflects(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let events = three_tasks(&store).await;
    let (a, b, c) = (&events[0], &events[1], &events[2]);
    for p in [
        Arc::new(TasksProjection) as Arc<dyn Projection>,
        Arc::new(AuditProjection),
    ] {
        let name = p.name();
        let r = runner(&store, p);
        // Partitions deliver C and A; B (in between) is still on its way.
        r.process(&[c.clone(), a.clone()], None).await.unwrap();
        assert!(
            recorded(&pool, name).await < b.global_position.0,
            "{name}: the recorded position must not cover the missing event"
        );
        r.process(std::slice::from_ref(b), None).await.unwrap();
        // Every event is applied: the position reaches C's once C is final for the whole
        // cluster (other tests' open transactions may hold the horizon back: bounded wait).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while recorded(&pool, name).await < c.global_position.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: position never reached"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            r.record_position().await.unwrap();
        }
    }
    // A store runner's checkpoint and the recorded one mean the same: a catch-up from it
    // applies nothing twice and misses nothing.
    let stats = catch_up(&store, Arc::new(TasksProjection), 100).await;
    assert_eq!(stats.applied, 0);
    assert!(
        store.load_checkpoint("projection:tasks").await.unwrap() >= Position(c.global_position.0)
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_forged_message_is_rejected_and_the_model_equals_a_store_rebuild(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = uuid(0x40);
    exec::<Task>(
        &store,
        TENANT,
        id,
        create_task(id, "ann", Some(minutes(900)), false),
        minutes(0),
        "ann",
    )
    .await;
    let mut update = UpdateTask::new(task_id(id));
    update.title = Some(TaskTitle::parse("the real title").unwrap());
    exec::<Task>(
        &store,
        TENANT,
        id,
        TaskCommand::UpdateTask(update),
        minutes(1),
        "ann",
    )
    .await;
    let events = all_events(&store).await;
    assert_eq!(events.len(), 2);

    // The payload changed in transit and the hash recomputed over it, but not onto the chain.
    let mut forged = events[1].clone();
    forged.payload = forged.payload.replace("the real title", "a forged title");
    assert_ne!(forged.payload, events[1].payload);
    forged.hash = event_store::hash::event_hash(&event_store::hash::GENESIS, &forged);

    for p in [
        Arc::new(TasksProjection) as Arc<dyn Projection>,
        Arc::new(AuditProjection),
    ] {
        let name = p.name();
        let r = runner(&store, p);
        let first = r
            .process(&[events[0].clone(), forged.clone()], None)
            .await
            .unwrap();
        assert_eq!((first.rejected, first.applied), (1, 2), "{name}");
        // The genuine message arriving later is a duplicate: the store's copy was applied.
        let again = r
            .process(std::slice::from_ref(&events[1]), None)
            .await
            .unwrap();
        assert_eq!((again.applied, again.duplicates), (0, 1), "{name}");
        let letters: Vec<(String, String)> =
            sqlx::query_as("SELECT kind, error FROM projection_dead_letters WHERE projection = $1")
                .bind(name)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(letters.len(), 1, "{name}");
        assert_eq!(letters[0].0, "rejected");
        assert!(letters[0].1.contains("previous hash"), "{}", letters[0].1);
    }
    let title: String = sqlx::query_scalar("SELECT title FROM tasks WHERE task_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(title, "the real title");

    let from_kafka = model_hashes(&pool).await;
    for name in ["tasks", "audit"] {
        rebuild(
            &store,
            models::by_name(name).unwrap(),
            &RebuildOptions::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(model_hashes(&pool).await, from_kafka);
}
