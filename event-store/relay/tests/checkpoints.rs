//! Signed checkpoints published to a real broker (tansu at `$KAFKA_BOOTSTRAP`), read back by a
//! plain consumer and used to verify the store, also after the store was tampered with.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::time::Duration;

use annals_relay::{CheckpointPublisher, RelayConfig, decode_checkpoint};
use event_store::checkpoint::generate_key;
use event_store::{
    AppendBatch, CheckpointOptions, EventStore, ExpectedVersion, Metadata, NewEvent, SealerOptions,
    StreamId,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: run deploy/test.sh, or export KAFKA_BOOTSTRAP=$(deploy/local/kafka.sh)",
    )
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_checkpoint_from_kafka_verifies_the_store(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    for n in 0..10 {
        let batch = AppendBatch::new(Metadata::new("tenant-a", "user-1", "user")).stream(
            StreamId::new(format!("task-{}", n % 3)).unwrap(),
            "task",
            ExpectedVersion::Any,
            vec![NewEvent::new("task.noted", 1, json!({ "n": n }))],
        );
        store.append(batch).await.unwrap();
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();

    // The sealer and checkpointer as a process runs them, publishing through the channel.
    let key = generate_key();
    let topic = format!("t{}.checkpoints", Uuid::now_v7().simple());
    let publisher = CheckpointPublisher::new(&RelayConfig::new(bootstrap()), topic.clone())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let publishing = tokio::spawn(publisher.run(rx));
    let sealer = tokio::spawn(event_store::run_sealer(
        store.clone(),
        SealerOptions {
            checkpoint: Some(CheckpointOptions {
                key: key.clone(),
                every: Duration::from_millis(50),
                file: None,
                publish: Some(tx),
            }),
            idle: Duration::from_millis(20),
            ..SealerOptions::default()
        },
        shutdown.clone().cancelled_owned(),
    ));

    // A plain consumer reads checkpoints until one covers every event (bounded).
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("auditor-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let read = async {
        loop {
            let msg = consumer.recv().await.unwrap();
            let cp = decode_checkpoint(msg.payload().unwrap()).unwrap();
            assert_eq!(msg.key().unwrap(), cp.key_id.as_bytes());
            if cp.leaf_count == total as u64 {
                return cp;
            }
        }
    };
    let cp = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("no checkpoint covering every event arrived within 60 s");
    shutdown.cancel();
    sealer.await.unwrap().unwrap();
    publishing.await.unwrap();

    let public = key.verifying_key();
    let report = store
        .verify_checkpoint(&cp, &public, |_, _| {})
        .await
        .unwrap();
    assert!(report.intact, "{report:?}");
    assert_eq!(report.events_checked, total as u64);

    // The same checkpoint catches a later rewrite of the store by its owner.
    sqlx::raw_sql(
        "ALTER TABLE events DISABLE TRIGGER USER; \
         DELETE FROM events WHERE global_position = (SELECT max(global_position) FROM events);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = store
        .verify_checkpoint(&cp, &public, |_, _| {})
        .await
        .unwrap();
    assert!(!report.intact);
    assert_eq!(report.first_bad.unwrap().leaf_index, total as u64 - 1);
}
