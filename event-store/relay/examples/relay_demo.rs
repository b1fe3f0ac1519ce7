//! Publishes everything in the store to Kafka with the outbox relay, waits until the relay has
//! caught up, and prints each topic's message count. `ANNALS_KAFKA=1 deploy/demo.sh` runs it
//! after the other demos.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use annals_relay::{Relay, RelayConfig};
use anyhow::Context;
use clap::Parser;
use event_store::EventStore;
use event_store::wire::{decode_envelope, topic_for};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// annals relay demo.
#[derive(Debug, Parser)]
struct Args {
    /// Postgres holding the event store.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rdkafka=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    event_store::migrate(&pool).await?;
    let store = EventStore::new(pool);
    let config = RelayConfig::new(&args.kafka_bootstrap);
    let prefix = config.topic_prefix.clone();
    let stream_types = config.stream_types.clone();
    let relay = Relay::new(store.clone(), config);
    let stats = relay.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));

    println!(
        "== Kafka: relaying the store to {} ==",
        args.kafka_bootstrap
    );
    let head = store.head_position().await?;
    tokio::time::timeout(Duration::from_secs(60), async {
        while (stats.checkpoint.load(Ordering::Relaxed) as i64) < head.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the relay did not catch up within 60 s")?;
    stop.cancel();
    running.await??;
    println!(
        "relay caught up at position {head} ({} messages published by this run)",
        stats.published.load(Ordering::Relaxed)
    );

    // Counted by reading the topics back, not from watermarks: tansu's high watermarks count
    // record batches rather than records.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_bootstrap)
        .set("group.id", format!("annals-demo-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut expected = HashMap::new();
    for stream_type in &stream_types {
        let topic = topic_for(&prefix, stream_type);
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
            }
        }
        // The broker may hold messages of earlier runs: only this store's events count.
        let stored: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT event_id FROM events WHERE stream_type = $1")
                .bind(stream_type)
                .fetch_all(store.pool())
                .await?;
        expected.insert(topic, stored.into_iter().collect::<HashSet<_>>());
    }
    consumer.assign(&assignment)?;
    let mut seen: HashMap<String, HashSet<uuid::Uuid>> = HashMap::new();
    let complete = |seen: &HashMap<String, HashSet<uuid::Uuid>>| {
        expected
            .iter()
            .all(|(t, ids)| seen.get(t).is_some_and(|s| ids.is_subset(s)))
    };
    let reading = async {
        while !complete(&seen) {
            let message = consumer.recv().await?;
            let event = decode_envelope(message.payload().unwrap_or_default())?;
            if expected
                .get(message.topic())
                .is_some_and(|ids| ids.contains(&event.event_id))
            {
                seen.entry(message.topic().to_owned())
                    .or_default()
                    .insert(event.event_id);
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .context("reading the topics back took over 30 s")??;
    for stream_type in &stream_types {
        let topic = topic_for(&prefix, stream_type);
        println!(
            "  {topic:<28} {:>6} of the store's {:>6} events read back from the topic",
            seen.get(&topic).map_or(0, HashSet::len),
            expected.get(&topic).map_or(0, HashSet::len)
        );
    }
    Ok(())
}
