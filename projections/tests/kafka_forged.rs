//! Against a real broker (tansu): a forged message on a topic is dead-lettered and the model
//! still equals a rebuild from the store; the runner records the store position it reflects,
//! which is what the query API's `min_position` waits for.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use aggregates::task::{Task, TaskCommand, UpdateTask};
use aggregates::values::TaskTitle;
use annals_relay::{Relay, RelayConfig};
use event_store::wire::{encode_envelope, topic_for};
use event_store::{EventStore, MIGRATOR};
use projections::models::tasks::TasksProjection;
use projections::rebuild::{RebuildOptions, rebuild};
use projections::source::{KafkaSource, KafkaSourceConfig};
use projections::testkit::*;
use projections::{Runner, RunnerOptions};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: run deploy/test.sh, or export KAFKA_BOOTSTRAP=$(deploy/local/kafka.sh)",
    )
}

/// Runs the relay until it has published everything in the store.
async fn relay_all(store: &EventStore, cfg: &RelayConfig, pool: &PgPool) {
    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(store.clone(), cfg.clone()).run(stop.clone()));
    let head: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let relayed: Option<i64> =
            sqlx::query_scalar("SELECT position FROM subscription_checkpoints WHERE name = $1")
                .bind(format!("relay:{}", cfg.name))
                .fetch_optional(pool)
                .await
                .unwrap();
        if relayed.unwrap_or(0) >= head {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), relay).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_forged_kafka_message_is_dead_lettered_and_the_model_equals_a_store_rebuild(
    pool: PgPool,
) {
    let store = EventStore::new(pool.clone());
    let tag = Uuid::now_v7().simple().to_string();
    let prefix = format!("f{tag}.");
    let id = uuid(0x50);
    exec::<Task>(
        &store,
        TENANT,
        id,
        create_task(id, "ann", Some(minutes(900)), false),
        minutes(0),
        "ann",
    )
    .await;
    let mut relay_cfg = RelayConfig::new(bootstrap());
    relay_cfg.topic_prefix = prefix.clone();
    relay_cfg.name = format!("relay-{tag}");
    relay_cfg.partitions = 1;
    relay_all(&store, &relay_cfg, &pool).await;

    // The genuine update is in the store; on the topic, before it, a forgery: payload changed,
    // hash recomputed over it but not onto the stream's chain.
    let mut update = UpdateTask::new(task_id(id));
    update.title = Some(TaskTitle::parse("the real title").unwrap());
    let written = exec::<Task>(
        &store,
        TENANT,
        id,
        TaskCommand::UpdateTask(update),
        minutes(1),
        "ann",
    )
    .await;
    let genuine = all_events(&store).await.pop().unwrap();
    let mut forged = genuine.clone();
    forged.payload = forged.payload.replace("the real title", "a forged title");
    forged.hash = event_store::hash::event_hash(&event_store::hash::GENESIS, &forged);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let bytes = encode_envelope(&forged).unwrap();
    producer
        .send(
            FutureRecord::to(&topic_for(&prefix, "task"))
                .key(&forged.stream_id)
                .payload(&bytes),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    // Then the relay publishes the genuine one.
    relay_all(&store, &relay_cfg, &pool).await;

    let runner = Runner::new(
        store.clone(),
        Arc::new(TasksProjection),
        RunnerOptions::default(),
    );
    let mut cfg = KafkaSourceConfig::new(bootstrap(), "tasks");
    cfg.topic_prefix = prefix.clone();
    cfg.group_id = format!("g{tag}.tasks");
    cfg.idle_timeout = Duration::from_secs(1);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut source = KafkaSource::new(cfg, &["task"]);
            runner.run(&mut source, &stop).await
        }
    });
    // Applied, and the recorded store position covers the write (min_position's condition).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (version, position): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT version FROM projection_streams WHERE projection = 'tasks' \
                      AND stream_id = $1), \
                    (SELECT position FROM subscription_checkpoints WHERE name = 'projection:tasks')",
        )
        .bind(id.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
        if version == Some(2) && position.unwrap_or(0) >= written.last_position().0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not applied: version {version:?}, position {position:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let letters: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, error FROM projection_dead_letters WHERE projection = 'tasks'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, "rejected");
    let title: String = sqlx::query_scalar("SELECT title FROM tasks WHERE task_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(title, "the real title");
    let from_kafka = model_hashes(&pool).await;
    rebuild(
        &store,
        Arc::new(TasksProjection),
        &RebuildOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(model_hashes(&pool).await, from_kafka);
}
