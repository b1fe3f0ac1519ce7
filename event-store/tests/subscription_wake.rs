#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test
//! A subscription held back behind an open transaction: gap safety while the holder is open,
//! and release once it ended and announced it on a holder channel.

use std::time::Duration;

use event_store::{
    AppendBatch, EventStore, ExpectedVersion, MIGRATOR, Metadata, NewEvent, Position, StreamId,
    SubscriptionOptions,
};
use serde_json::json;
use sqlx::PgPool;

const HOLDERS: &str = "annals_test_holders";

fn one(stream: &str) -> AppendBatch {
    AppendBatch::new(Metadata::new("tenant-a", "user-1", "user")).stream(
        StreamId::new(stream).unwrap(),
        "test",
        ExpectedVersion::NoStream,
        vec![NewEvent::new("test.happened", 1, json!({ "s": stream }))],
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn held_back_subscription_is_released_when_the_holder_ends(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    // A transaction with an xid that appends nothing: its end sends no store notification.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holder)
        .await
        .unwrap();
    let appended = store.append(one("s1")).await.unwrap();
    let options = SubscriptionOptions {
        // Only a notification can end a wait within the bound below.
        idle_recheck: Duration::from_secs(3600),
        holder_channels: vec![HOLDERS.to_owned()],
        ..SubscriptionOptions::default()
    };
    let mut sub = store.subscribe(Position::START, options);
    // Gap safety: nothing is delivered while an older transaction is open (cancel-safe).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next_batch())
            .await
            .is_err(),
        "an event was delivered past an open transaction"
    );
    let waiting = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(30), sub.next_batch()).await
    });
    holder.commit().await.unwrap();
    sqlx::query("SELECT pg_notify($1, 'holder ended')")
        .bind(HOLDERS)
        .execute(&pool)
        .await
        .unwrap();
    let batch = waiting
        .await
        .unwrap()
        .expect("the held-back subscription was not released in 30 s")
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].global_position, appended.last_position());
}
