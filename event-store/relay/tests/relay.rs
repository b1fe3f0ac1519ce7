//! The Kafka relay against a real broker (tansu, started by `deploy/test.sh`) and, for fault
//! injection only, librdkafka's mock cluster.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use annals_relay::{Relay, RelayConfig, RelayError, RelayStats};
use event_store::wire::{decode_envelope, header, topic_for};
use event_store::{
    AppendBatch, EventStore, ExpectedVersion, Metadata, NewEvent, Position, StreamId,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const STREAM_TYPES: [&str; 2] = ["task", "agent_session"];
const PARTITIONS: i32 = 3;

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: run deploy/test.sh, or export KAFKA_BOOTSTRAP=$(deploy/local/kafka.sh)",
    )
}

fn config(bootstrap: &str) -> RelayConfig {
    let mut c = RelayConfig::new(bootstrap);
    // A fresh prefix per test keeps tests on one broker apart.
    c.topic_prefix = format!("t{}.", Uuid::now_v7().simple());
    c.name = format!("relay-{}", Uuid::now_v7().simple());
    c.partitions = PARTITIONS;
    c.stream_types = STREAM_TYPES.map(str::to_owned).to_vec();
    c.backoff = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(500);
    c
}

/// Appends `total` events from `writers` concurrent writers over many streams of both types.
async fn append_concurrently(store: &EventStore, writers: usize, total: usize) -> HashSet<Uuid> {
    let per_writer = total / writers;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(per_writer);
                let mut n = 0;
                while ids.len() < per_writer {
                    let size = (1 + n % 5).min(per_writer - ids.len());
                    let stream_type = STREAM_TYPES[n % 2];
                    let stream = StreamId::new(format!("{stream_type}-w{w}-{}", n % 17)).unwrap();
                    let events: Vec<NewEvent> = (0..size)
                        .map(|i| {
                            NewEvent::new(
                                format!("{stream_type}.happened"),
                                1,
                                json!({ "w": w, "n": n, "i": i }),
                            )
                        })
                        .collect();
                    let mut meta = Metadata::new("tenant-a", "writer", "service");
                    meta.correlation_id = Some(Uuid::now_v7());
                    let r = store
                        .append(AppendBatch::new(meta).stream(
                            stream,
                            stream_type,
                            ExpectedVersion::Any,
                            events,
                        ))
                        .await
                        .unwrap();
                    ids.extend(r.events.iter().map(|e| e.event_id));
                    n += 1;
                }
                ids
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), writers * per_writer);
    all
}

/// Waits (bounded) until the relay's checkpoint covers every stored event.
async fn wait_caught_up(store: &EventStore, stats: &RelayStats, within: Duration) {
    let head = store.head_position().await.unwrap();
    tokio::time::timeout(within, async {
        while (stats.checkpoint.load(Ordering::Relaxed) as i64) < head.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("relay did not reach position {head} within {within:?}"));
}

/// Everything on the test's topics, as (key, stream version, event id) in partition order.
struct Received {
    per_key: HashMap<String, Vec<(u64, Uuid)>>,
    messages: usize,
}

impl Received {
    fn ids(&self) -> HashSet<Uuid> {
        self.per_key.values().flatten().map(|(_, id)| *id).collect()
    }

    fn duplicates(&self) -> usize {
        self.messages - self.ids().len()
    }

    /// Per key, first deliveries come in strictly increasing version order (duplicates from a
    /// republish may repeat earlier versions; they must not reorder new ones).
    fn assert_ordered(&self) {
        for (key, msgs) in &self.per_key {
            let mut seen = HashSet::new();
            let mut last = 0;
            for (version, id) in msgs {
                if seen.insert(*id) {
                    assert!(*version > last, "key {key}: version {version} after {last}");
                    last = *version;
                }
            }
        }
    }
}

/// Reads the topics from the beginning until `expected` distinct event ids arrived (bounded).
async fn consume(
    bootstrap: &str,
    prefix: &str,
    expected: &HashSet<Uuid>,
    within: Duration,
) -> Received {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("verify-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for t in STREAM_TYPES {
        for p in 0..PARTITIONS {
            assignment
                .add_partition_offset(&topic_for(prefix, t), p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();

    let mut received = Received {
        per_key: HashMap::new(),
        messages: 0,
    };
    let mut ids = HashSet::new();
    let collect = async {
        while !expected.is_subset(&ids) {
            let msg = consumer.recv().await.unwrap();
            let event = decode_envelope(msg.payload().unwrap()).unwrap();
            assert_eq!(msg.key().unwrap(), event.stream_id.as_bytes());
            let headers = msg.headers().unwrap();
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8(v.to_vec()).unwrap())
            };
            assert_eq!(
                header(header::EVENT_ID).unwrap(),
                event.event_id.to_string()
            );
            assert_eq!(header(header::EVENT_TYPE).unwrap(), event.event_type);
            assert_eq!(header(header::SCHEMA_VERSION).unwrap(), "1");
            assert_eq!(
                header(header::GLOBAL_POSITION).unwrap(),
                event.global_position.to_string()
            );
            assert_eq!(header(header::TENANT).unwrap(), "tenant-a");
            assert!(header(header::CORRELATION_ID).is_some());
            assert_eq!(msg.topic(), topic_for(prefix, &event.stream_type));
            ids.insert(event.event_id);
            received.messages += 1;
            received
                .per_key
                .entry(event.stream_id)
                .or_default()
                .push((event.stream_version, event.event_id));
        }
    };
    tokio::time::timeout(within, collect)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "only {} of {} events arrived within {within:?}",
                ids.len(),
                expected.len()
            )
        });
    assert_eq!(&received.ids(), expected, "no event that was not appended");
    received
}

fn spawn_relay(
    store: &EventStore,
    config: RelayConfig,
) -> (
    Arc<RelayStats>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), RelayError>>,
) {
    let relay = Relay::new(store.clone(), config);
    let stats = relay.stats();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(relay.run(stop.clone()));
    (stats, stop, handle)
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn ten_thousand_events_from_eight_writers_arrive_in_order(pool: PgPool) {
    let bootstrap = bootstrap();
    let store = EventStore::new(pool);
    let config = config(&bootstrap);
    let prefix = config.topic_prefix.clone();
    let (stats, stop, handle) = spawn_relay(&store, config);

    let appended = append_concurrently(&store, 8, 10_000).await;
    wait_caught_up(&store, &stats, Duration::from_secs(120)).await;
    let received = consume(&bootstrap, &prefix, &appended, Duration::from_secs(120)).await;
    received.assert_ordered();
    assert_eq!(received.duplicates(), 0, "no failure, so no republish");
    assert_eq!(stats.published.load(Ordering::Relaxed), 10_000);

    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn crash_mid_batch_then_restart_loses_nothing(pool: PgPool) {
    let bootstrap = bootstrap();
    let store = EventStore::new(pool);
    let appended = append_concurrently(&store, 4, 5_000).await;

    let mut crashing = config(&bootstrap);
    crashing.batch_size = 1_000;
    crashing.crash_after_messages = Some(1_500);
    let prefix = crashing.topic_prefix.clone();
    let mut resumed = crashing.clone();
    resumed.crash_after_messages = None;

    let relay = Relay::new(store.clone(), crashing);
    let stats = relay.stats();
    let err = relay.run(CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, RelayError::InjectedCrash));
    assert_eq!(
        stats.published.load(Ordering::Relaxed),
        1_000,
        "only the first batch was acknowledged"
    );
    let checkpoint = store
        .load_checkpoint(&format!("relay:{}", resumed.name))
        .await
        .unwrap();
    assert!(checkpoint > Position::START);

    let (stats, stop, handle) = spawn_relay(&store, resumed);
    wait_caught_up(&store, &stats, Duration::from_secs(120)).await;
    let received = consume(&bootstrap, &prefix, &appended, Duration::from_secs(120)).await;
    received.assert_ordered();
    println!(
        "duplicates on the wire after the crash: {}",
        received.duplicates()
    );
    assert!(
        received.duplicates() <= 500,
        "only the unacknowledged part of one batch repeats"
    );
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn relay_process_killed_by_pid_resumes_without_gaps(pool: PgPool) {
    let bootstrap = bootstrap();
    let store = EventStore::new(pool.clone());
    let appended = append_concurrently(&store, 4, 20_000).await;
    let config = config(&bootstrap);

    // The test database's URL: the server of DATABASE_URL, this test's database.
    let base = std::env::var("DATABASE_URL").unwrap();
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let (server, query) = base
        .split_once('?')
        .map_or((base.as_str(), None), |(s, q)| (s, Some(q)));
    let server = &server[..server.rfind('/').unwrap()];
    let url = match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    };

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_annals-relay"))
        .args(["--database-url", &url, "--kafka-bootstrap", &bootstrap])
        // The test's login owns the tables (event-store/tests/roles.rs covers the refusal).
        .arg("--allow-owner")
        .args([
            "--topic-prefix",
            &config.topic_prefix,
            "--name",
            &config.name,
        ])
        .args([
            "--partitions",
            &PARTITIONS.to_string(),
            "--batch-size",
            "100",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let checkpoint_name = format!("relay:{}", config.name);
    tokio::time::timeout(Duration::from_secs(120), async {
        while store.load_checkpoint(&checkpoint_name).await.unwrap() == Position::START {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the relay process published its first batch");
    let killed = std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    let at_kill = store.load_checkpoint(&checkpoint_name).await.unwrap();
    println!(
        "relay process killed at checkpoint {at_kill}, head {}",
        store.head_position().await.unwrap()
    );

    let (stats, stop, handle) = spawn_relay(&store, config.clone());
    wait_caught_up(&store, &stats, Duration::from_secs(120)).await;
    let received = consume(
        &bootstrap,
        &config.topic_prefix,
        &appended,
        Duration::from_secs(120),
    )
    .await;
    received.assert_ordered();
    println!(
        "duplicates on the wire after the kill: {}",
        received.duplicates()
    );
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn two_relays_only_one_publishes_and_the_other_takes_over(pool: PgPool) {
    let bootstrap = bootstrap();
    let store = EventStore::new(pool);
    let config = config(&bootstrap);
    let prefix = config.topic_prefix.clone();
    let (stats_a, stop_a, handle_a) = spawn_relay(&store, config.clone());
    let (stats_b, stop_b, handle_b) = spawn_relay(&store, config);

    let mut appended = append_concurrently(&store, 2, 1_000).await;
    let head = store.head_position().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while [&stats_a, &stats_b]
            .iter()
            .all(|s| (s.checkpoint.load(Ordering::Relaxed) as i64) < head.0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let (leader, follower, stop_leader, leader_handle) = if stats_a.leader.load(Ordering::Relaxed) {
        (stats_a, stats_b, stop_a, handle_a)
    } else {
        (stats_b, stats_a, stop_b, handle_b)
    };
    assert!(leader.leader.load(Ordering::Relaxed));
    assert!(
        !follower.leader.load(Ordering::Relaxed),
        "exactly one leader"
    );
    assert_eq!(
        follower.published.load(Ordering::Relaxed),
        0,
        "the follower published nothing"
    );
    assert_eq!(leader.published.load(Ordering::Relaxed), 1_000);

    // The leader goes away; the follower takes over from the shared checkpoint.
    stop_leader.cancel();
    leader_handle.await.unwrap().unwrap();
    appended.extend(append_concurrently(&store, 2, 500).await);
    wait_caught_up(&store, &follower, Duration::from_secs(60)).await;
    assert!(follower.leader.load(Ordering::Relaxed));
    assert_eq!(follower.published.load(Ordering::Relaxed), 500);
    let received = consume(&bootstrap, &prefix, &appended, Duration::from_secs(60)).await;
    received.assert_ordered();
    assert_eq!(received.duplicates(), 0);
}

/// Fault injection on librdkafka's mock cluster (it has no CreateTopics: topics are made here).
fn mock_config(mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>) -> RelayConfig {
    let mut c = config(&mock.bootstrap_servers());
    for t in STREAM_TYPES {
        mock.create_topic(&topic_for(&c.topic_prefix, t), PARTITIONS, 1)
            .unwrap();
    }
    c.create_topics = false;
    c.kafka.insert("message.timeout.ms".into(), "2000".into());
    c.batch_size = 200;
    c
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn mock_broker_down_then_up_recovers_without_gaps(pool: PgPool) {
    let mock = MockCluster::new(1).unwrap();
    let store = EventStore::new(pool);
    let config = mock_config(&mock);
    let prefix = config.topic_prefix.clone();
    let (stats, stop, handle) = spawn_relay(&store, config);

    let mut appended = append_concurrently(&store, 2, 400).await;
    wait_caught_up(&store, &stats, Duration::from_secs(60)).await;

    mock.broker_down(1).unwrap();
    appended.extend(append_concurrently(&store, 2, 600).await);
    tokio::time::timeout(Duration::from_secs(60), async {
        while stats.produce_errors.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("deliveries fail while the broker is down");
    mock.broker_up(1).unwrap();

    wait_caught_up(&store, &stats, Duration::from_secs(60)).await;
    let received = consume(
        &mock.bootstrap_servers(),
        &prefix,
        &appended,
        Duration::from_secs(60),
    )
    .await;
    received.assert_ordered();
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn mock_produce_errors_and_fatal_producer_error_are_survived(pool: PgPool) {
    let mock = MockCluster::new(1).unwrap();
    let store = EventStore::new(pool);
    let config = mock_config(&mock);
    let prefix = config.topic_prefix.clone();

    // Retriable errors are retried inside the idempotent producer, in order.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4],
    );
    // A failed producer-id request is fatal for an idempotent producer: the relay must build a
    // new producer (the mock answers the next one normally).
    mock.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
    );
    let appended = append_concurrently(&store, 2, 1_000).await;
    let (stats, stop, handle) = spawn_relay(&store, config);
    wait_caught_up(&store, &stats, Duration::from_secs(60)).await;
    assert!(
        stats.produce_errors.load(Ordering::Relaxed) > 0,
        "the fatal error surfaced and was recovered from"
    );
    let received = consume(
        &mock.bootstrap_servers(),
        &prefix,
        &appended,
        Duration::from_secs(60),
    )
    .await;
    received.assert_ordered();
    stop.cancel();
    handle.await.unwrap().unwrap();
}
