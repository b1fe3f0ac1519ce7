//! Kafka source against a real broker (tansu, started by `deploy/test.sh`): the real relay
//! publishes the store, two workers in one consumer group per projection share the partitions,
//! one is killed, the other takes over, and the models equal a rebuild from the store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aggregates::task::{Task, TaskCommand, UpdateTask};
use aggregates::values::TaskTitle;
use annals_relay::{Relay, RelayConfig};
use async_trait::async_trait;
use event_store::{EventStore, MIGRATOR, RecordedEvent};
use projections::rebuild::{RebuildOptions, rebuild};
use projections::source::{KafkaSource, KafkaSourceConfig};
use projections::testkit::*;
use projections::{Projection, ProjectionError, Runner, RunnerOptions, models};
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ALL_TYPES: &[&str] = &["problem", "task", "agent_session", "governance_decision"];

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: run deploy/test.sh, or export KAFKA_BOOTSTRAP=$(deploy/local/kafka.sh)",
    )
}

/// A projection that counts the events this worker applied (to see who owns partitions).
struct Counting {
    inner: Arc<dyn Projection>,
    applied: Arc<AtomicU64>,
}

#[async_trait]
impl Projection for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn stream_types(&self) -> Option<&'static [&'static str]> {
        self.inner.stream_types()
    }
    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        self.inner.apply_batch(conn, events).await?;
        self.applied
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A worker: every projection, each with its own Kafka consumer in its projection's group.
fn worker(
    store: &EventStore,
    prefix: &str,
    groups: &str,
    applied: Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    models::all()
        .into_iter()
        .map(|p| {
            let counting: Arc<dyn Projection> = Arc::new(Counting {
                inner: p.clone(),
                applied: applied.clone(),
            });
            let runner = Runner::new(store.clone(), counting, RunnerOptions::default());
            let mut cfg = KafkaSourceConfig::new(bootstrap(), p.name());
            cfg.topic_prefix = prefix.to_owned();
            cfg.group_id = format!("{groups}{}", p.name());
            cfg.batch_size = 7;
            cfg.idle_timeout = Duration::from_secs(1);
            let types: Vec<&str> = p
                .stream_types()
                .map_or(ALL_TYPES.to_vec(), <[&str]>::to_vec);
            tokio::spawn(async move {
                let mut source = KafkaSource::new(cfg, &types);
                // Never cancelled: the worker is killed by aborting the task.
                runner
                    .run(&mut source, &CancellationToken::new())
                    .await
                    .unwrap();
            })
        })
        .collect()
}

/// Streams whose applied version (per projection) is below the store's head.
async fn behind(pool: &sqlx::PgPool) -> i64 {
    let mut n = 0;
    for p in models::all() {
        let types: Option<Vec<String>> = p
            .stream_types()
            .map(|t| t.iter().map(|s| s.to_string()).collect());
        let b: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM streams s WHERE ($2::text[] IS NULL OR s.stream_type = ANY($2)) \
             AND NOT EXISTS (SELECT 1 FROM projection_streams ps WHERE ps.projection = $1 \
                               AND ps.tenant_id = s.tenant_id AND ps.stream_id = s.stream_id \
                               AND ps.version = s.version)",
        )
        .bind(p.name())
        .bind(&types)
        .fetch_one(pool)
        .await
        .unwrap();
        n += b;
    }
    n
}

async fn touch_task(store: &EventStore, id: Uuid, n: u32) {
    let mut u = UpdateTask::new(task_id(id));
    u.title = Some(TaskTitle::parse(format!("update {n}")).unwrap());
    exec::<Task>(
        store,
        TENANT,
        id,
        TaskCommand::UpdateTask(u),
        minutes(i64::from(n)),
        "a",
    )
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_workers_share_partitions_and_one_takes_over(
    _opts: sqlx::pool::PoolOptions<sqlx::Postgres>,
    connect: PgConnectOptions,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(connect.clone())
        .await
        .unwrap();
    let store = EventStore::new(pool.clone());
    let tag = Uuid::now_v7().simple().to_string();
    let prefix = format!("p{tag}.");
    let groups = format!("g{tag}.");

    problem_scenario(&store, TENANT, 1, 0).await;
    session_scenario(&store, TENANT, 1, "erin").await;
    let tasks: Vec<Uuid> = (0..24_u128).map(|i| uuid(0x7700 + i)).collect();
    for id in &tasks {
        exec::<Task>(
            &store,
            TENANT,
            *id,
            create_task(*id, "a", Some(minutes(100_000)), false),
            minutes(0),
            "a",
        )
        .await;
    }

    let mut relay_cfg = RelayConfig::new(bootstrap());
    relay_cfg.topic_prefix = prefix.clone();
    relay_cfg.name = format!("relay-{tag}");
    relay_cfg.partitions = 3;
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(store.clone(), relay_cfg).run(relay_stop.clone()));

    // Each worker has its own connections, like a separate process.
    let worker_pool = || {
        PgPoolOptions::new()
            .max_connections(10)
            .connect_with(connect.clone())
    };
    let (pool_a, pool_b) = (worker_pool().await.unwrap(), worker_pool().await.unwrap());
    let (a_count, b_count) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = worker(
        &EventStore::new(pool_a.clone()),
        &prefix,
        &groups,
        a_count.clone(),
    );
    let b = worker(
        &EventStore::new(pool_b.clone()),
        &prefix,
        &groups,
        b_count.clone(),
    );

    // Keep events flowing on every task stream until both workers have applied some: then
    // both own partitions (whatever the timing of the group's rebalances).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut n = 1;
    while a_count.load(Ordering::Relaxed) == 0 || b_count.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both workers never got partitions"
        );
        touch_task(&store, tasks[n as usize % tasks.len()], n).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Kill worker A (no graceful shutdown: batches in flight are lost, offsets uncommitted).
    // Like a process death: tasks gone mid-batch, connections closed (Postgres rolls back their
    // transactions and releases their locks), Kafka membership left to the broker.
    for h in &a {
        h.abort();
    }
    for h in a {
        let _ = h.await;
    }
    tokio::time::timeout(Duration::from_secs(30), pool_a.close())
        .await
        .unwrap();
    let before = b_count.load(Ordering::Relaxed);
    for (i, id) in tasks.iter().enumerate() {
        touch_task(&store, *id, 1000 + i as u32).await;
    }
    session_scenario(&store, TENANT, 2, "gus").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let lag = behind(&pool).await;
        if lag == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let detail: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
                "SELECT p.name, s.stream_id, s.version, ps.version FROM streams s \
                 CROSS JOIN (VALUES ('problems', 'problem'), ('tasks', 'task'), \
                   ('agent_sessions', 'agent_session'), ('governance', 'governance_decision'), \
                   ('audit', NULL)) AS p(name, st) \
                 LEFT JOIN projection_streams ps ON ps.projection = p.name \
                       AND ps.tenant_id = s.tenant_id AND ps.stream_id = s.stream_id \
                 WHERE (p.st IS NULL OR p.st = s.stream_type) AND ps.version IS DISTINCT FROM s.version",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let relayed: Option<i64> = sqlx::query_scalar(
                "SELECT position FROM subscription_checkpoints WHERE name LIKE 'relay:%'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            let head: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events")
                .fetch_one(&pool)
                .await
                .unwrap();
            panic!(
                "{lag} stream(s) never caught up after the takeover: {detail:?}; relay at {relayed:?}, head {head:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b_count.load(Ordering::Relaxed) > before,
        "the survivor applied the new events"
    );
    for h in &b {
        h.abort();
    }
    relay_stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    let from_kafka = model_hashes(&pool).await;
    for p in models::all() {
        rebuild(&store, p, &RebuildOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(
        model_hashes(&pool).await,
        from_kafka,
        "Kafka-built models equal the store-sourced rebuild"
    );
}
