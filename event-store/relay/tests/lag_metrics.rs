//! The relay's lag metrics, read from its metrics endpoint, while an open transaction holds
//! committed events back and after it commits. Its own test binary: the process-wide metrics
//! recorder belongs to this one test.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use annals_relay::{Relay, RelayConfig};
use event_store::{AppendBatch, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use serde_json::json;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events committed while the transaction is open.
const COMMITTED: usize = 60;

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: run deploy/test.sh, or export KAFKA_BOOTSTRAP=$(deploy/local/kafka.sh)",
    )
}

/// The unlabelled samples and the `# HELP` lines of one scrape of `GET /metrics`.
struct Scrape {
    samples: HashMap<String, f64>,
    help: Vec<String>,
}

impl Scrape {
    fn get(&self, name: &str) -> Option<f64> {
        self.samples.get(name).copied()
    }
}

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut samples = HashMap::new();
    let mut help = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help.push(rest.split(' ').next().unwrap().to_owned());
        } else if !line.starts_with('#')
            && let Some((name, value)) = line.split_once(' ')
        {
            samples.insert(name.to_owned(), value.parse().unwrap());
        }
    }
    Scrape { samples, help }
}

/// Scrapes until `done` holds (bounded), returning that scrape.
async fn scrape_until(
    addr: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let mut last = None;
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = scrape(addr).await;
            if done(&s) {
                return s;
            }
            last = Some(s.samples);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("not within 60 s: {what}; last scrape: {last:?}"))
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn lag_counts_events_held_back_by_an_open_transaction_and_returns_to_zero(pool: PgPool) {
    let recorder = schemas::runtime::prometheus_recorder().unwrap();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(schemas::runtime::serve_metrics(listener, handle));
    annals_relay::describe_metrics();

    let before = scrape(addr).await;
    for name in [
        "annals_relay_messages_total",
        "annals_relay_produce_errors_total",
        "annals_relay_lag_events",
        "annals_relay_held_back_events",
        "annals_relay_lag_seconds",
    ] {
        assert_eq!(
            before.get(name),
            Some(0.0),
            "{name} is exported from the start"
        );
        assert!(before.help.iter().any(|h| h == name), "# HELP of {name}");
    }

    // An append inside a transaction that stays open: everything committed after it is held back.
    let mut open = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT annals_append(NULL, NULL, 'tenant-a', ARRAY['held-open'], ARRAY['task'], \
         ARRAY[-1]::bigint[], ARRAY[1], ARRAY[gen_random_uuid()], ARRAY['task.happened'], \
         ARRAY[1], ARRAY['{}'], '{\"tenant\":\"tenant-a\",\"actor\":\"u\",\"actor_type\":\"user\"}')",
    )
    .execute(&mut *open)
    .await
    .unwrap();
    let store = EventStore::new(pool.clone());
    for i in 0..COMMITTED {
        let stream = StreamId::new(format!("task-{}", i % 7)).unwrap();
        store
            .append(
                AppendBatch::new(Metadata::new("tenant-a", "writer", "service")).stream(
                    stream,
                    "task",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("task.happened", 1, json!({ "i": i }))],
                ),
            )
            .await
            .unwrap();
    }

    let mut config = RelayConfig::new(bootstrap());
    config.topic_prefix = format!("t{}.", Uuid::now_v7().simple());
    config.name = format!("relay-{}", Uuid::now_v7().simple());
    config.stream_types = vec!["task".to_owned()];
    config.lag_interval = Duration::from_millis(50);
    config.backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(500);
    let relay = Relay::new(store.clone(), config);
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    let n = COMMITTED as f64;
    let held = scrape_until(addr, "lag and held-back count the committed events", |s| {
        s.get("annals_relay_lag_events") == Some(n)
            && s.get("annals_relay_held_back_events") == Some(n)
    })
    .await;
    assert!(held.get("annals_relay_lag_seconds").unwrap() > 0.0);
    assert_eq!(
        stats.published.load(Ordering::Relaxed),
        0,
        "nothing passes the open transaction"
    );

    open.commit().await.unwrap();
    // The open transaction's event and every committed one are published, then the gauges
    // return to 0 (other databases' transactions on the cluster may delay this, never stop it).
    let drained = scrape_until(addr, "lag returns to 0 after draining", |s| {
        s.get("annals_relay_lag_events") == Some(0.0)
            && s.get("annals_relay_held_back_events") == Some(0.0)
            && s.get("annals_relay_lag_seconds") == Some(0.0)
    })
    .await;
    assert_eq!(
        stats.published.load(Ordering::Relaxed),
        COMMITTED as u64 + 1
    );
    assert_eq!(
        drained.get("annals_relay_messages_total"),
        Some(COMMITTED as f64 + 1.0)
    );
    assert_eq!(drained.get("annals_relay_produce_errors_total"), Some(0.0));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    server.abort();
}
