//! Kafka: the annals outbox relay ([`Relay`]) publishing stored events to the broker, against a
//! plain rdkafka idempotent producer sending the very same envelopes, keys and headers.

use std::time::{Duration, Instant};

use annals_relay::{Relay, RelayConfig};
use anyhow::Context;
use event_store::wire::{encode_envelope, header, topic_for};
use event_store::{EventStore, Position, RecordedEvent};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::stats::Measurement;

/// Results of the Kafka suite.
#[derive(Debug, Clone, Serialize)]
pub struct KafkaResult {
    /// The relay, from start (topic creation included) to the last acknowledged message.
    pub relay: Measurement,
    /// The plain producer, from the first send to the last acknowledgement.
    pub plain_producer: Measurement,
}

/// Publishes every event of `store` with the relay, then with a plain producer.
pub async fn run(store: &EventStore, bootstrap: &str, events: u64) -> anyhow::Result<KafkaResult> {
    let first = bootstrap.split(',').next().unwrap_or(bootstrap).trim();
    tokio::net::TcpStream::connect(first)
        .await
        .with_context(|| format!("no broker listening at {first}"))?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let mut config = RelayConfig::new(bootstrap);
    config.name = format!("bench-{run_id}");
    config.topic_prefix = format!("bench-relay-{run_id}.");
    config.stream_types = vec!["task".to_owned()];
    let relay = Relay::new(store.clone(), config);
    let stats = relay.stats();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(relay.run(stop.clone()));
    let deadline = started + Duration::from_secs(600);
    while stats.published.load(std::sync::atomic::Ordering::Relaxed) < events {
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay did not finish in 10 minutes"
        );
        anyhow::ensure!(!handle.is_finished(), "relay stopped early");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relay_m = Measurement::new(events, events, started.elapsed(), None);
    stop.cancel();
    handle.await.context("relay task")??;

    // The same events, read up front (the relay's reads are inside its time, these are not).
    let mut all: Vec<RecordedEvent> = Vec::with_capacity(usize::try_from(events)?);
    let mut after = Position::START;
    loop {
        let batch = store.read_all(after, 5_000).await?;
        if batch.events.is_empty() {
            break;
        }
        after = batch.next_after(after);
        all.extend(batch.events);
    }
    let prefix = format!("bench-plain-{run_id}.");
    let topic = topic_for(&prefix, "task");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new_topic = NewTopic::new(&topic, 3, TopicReplication::Fixed(1));
    admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .context("creating the plain producer's topic")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(all.len());
    for event in &all {
        let value = encode_envelope(event)?;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: header::EVENT_ID,
                value: Some(event.event_id.to_string().as_bytes()),
            })
            .insert(Header {
                key: header::EVENT_TYPE,
                value: Some(event.event_type.as_bytes()),
            })
            .insert(Header {
                key: header::SCHEMA_VERSION,
                value: Some(event.schema_version.to_string().as_bytes()),
            })
            .insert(Header {
                key: header::GLOBAL_POSITION,
                value: Some(event.global_position.0.to_string().as_bytes()),
            })
            .insert(Header {
                key: header::TENANT,
                value: Some(event.tenant_id.as_bytes()),
            });
        let mut record = FutureRecord::to(&topic)
            .key(event.stream_id.as_bytes())
            .payload(&value)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .context("delivery cancelled")?
            .map_err(|(e, _)| e)?;
    }
    let plain = Measurement::new(all.len() as u64, all.len() as u64, started.elapsed(), None);
    Ok(KafkaResult {
        relay: relay_m,
        plain_producer: plain,
    })
}
