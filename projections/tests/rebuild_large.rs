//! A rebuild of 100,000 events produces exactly the incrementally built models.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use aggregates::task::{Task, TaskCommand, UpdateTask};
use aggregates::values::TaskTitle;
use aggregates::{Aggregate, CommandContext, DomainEvent};
use event_store::{AppendBatch, EventStore, ExpectedVersion, MIGRATOR, NewEvent, StreamId};
use projections::models;
use projections::rebuild::{RebuildOptions, rebuild};
use projections::testkit::*;
use sqlx::PgPool;

const TASKS: u128 = 20_000;
const PER_TASK: usize = 5;
const TASKS_PER_APPEND: u128 = 1_000;

/// Decides every command with the real aggregate, folding locally, and appends 5,000 events
/// (1,000 streams) per append.
async fn seed(store: &EventStore) {
    for chunk in 0..TASKS / TASKS_PER_APPEND {
        let mut batch = AppendBatch::new(meta(TENANT, "loader"));
        for i in 0..TASKS_PER_APPEND {
            let n = chunk * TASKS_PER_APPEND + i;
            let id = uuid(0x10_0000 + n);
            let owner = format!("user-{}", n % 97);
            let ctx = |m| CommandContext::new(minutes(m), "loader");
            let mut cmds = vec![
                create_task(id, &owner, Some(minutes(10_000)), false),
                {
                    let mut u = UpdateTask::new(task_id(id));
                    u.title = Some(TaskTitle::parse(format!("renamed {n}")).unwrap());
                    TaskCommand::UpdateTask(u)
                },
                TaskCommand::CompleteTask {
                    task_id: task_id(id),
                },
                TaskCommand::RestoreTask {
                    task_id: task_id(id),
                },
            ];
            cmds.push(if n.is_multiple_of(3) {
                TaskCommand::DeleteTask {
                    task_id: task_id(id),
                }
            } else {
                TaskCommand::CompleteTask {
                    task_id: task_id(id),
                }
            });
            let mut state = <Task as Aggregate>::State::default();
            let mut events = Vec::with_capacity(PER_TASK);
            for (k, cmd) in cmds.into_iter().enumerate() {
                for e in Task::decide(&state, cmd, &ctx(k as i64)).unwrap() {
                    events.push(NewEvent::new(
                        e.event_type(),
                        e.schema_version(),
                        e.to_payload(),
                    ));
                    state = Task::evolve(state, &e);
                }
            }
            batch = batch.stream(
                StreamId::new(id.to_string()).unwrap(),
                "task",
                ExpectedVersion::NoStream,
                events,
            );
        }
        store.append(batch).await.unwrap();
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn rebuilding_100k_events_equals_the_incremental_models(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let started = Instant::now();
    seed(&store).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, (TASKS as i64) * PER_TASK as i64);
    eprintln!("seeded {total} events in {:?}", started.elapsed());

    let started = Instant::now();
    for name in ["tasks", "audit"] {
        catch_up(&store, models::by_name(name).unwrap(), 1000).await;
    }
    eprintln!("incremental build in {:?}", started.elapsed());
    let incremental = model_hashes(&pool).await;
    let summary: (i64, i64, i64) = sqlx::query_as(
        "SELECT sum(active_count)::bigint, sum(completed_count)::bigint, sum(deleted_count)::bigint FROM task_user_summary",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let deleted = (0..TASKS).filter(|n| n.is_multiple_of(3)).count() as i64;
    assert_eq!(summary, (0, TASKS as i64 - deleted, deleted));

    let started = Instant::now();
    for name in ["tasks", "audit"] {
        let report = rebuild(
            &store,
            models::by_name(name).unwrap(),
            &RebuildOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(report.events, total as u64);
    }
    eprintln!("rebuild in {:?}", started.elapsed());
    assert_eq!(model_hashes(&pool).await, incremental);
}
