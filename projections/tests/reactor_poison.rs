//! The recurring-task manager passes an undecodable event instead of stalling on it.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::time::Duration;

use event_store::{AppendBatch, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use projections::reactors::RecurringTasks;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn undecodable_completion_does_not_stall_the_manager(pool: PgPool) {
    let store = EventStore::new(pool);
    let poison = store
        .append(
            AppendBatch::new(Metadata::new("tenant-a", "legacy-importer", "service")).stream(
                StreamId::new(uuid::Uuid::now_v7().to_string()).unwrap(),
                "task",
                ExpectedVersion::NoStream,
                vec![NewEvent::new(
                    "task.completed",
                    1,
                    json!({ "not": "a task" }),
                )],
            ),
        )
        .await
        .unwrap();

    let manager = RecurringTasks::new(store.clone());
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { manager.run(&stop).await }
    });
    tokio::time::timeout(Duration::from_secs(30), async {
        while store
            .load_checkpoint(RecurringTasks::CHECKPOINT)
            .await
            .unwrap()
            < poison.last_position()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the manager moved past the undecodable event");
    stop.cancel();
    running.await.unwrap().unwrap();
}
