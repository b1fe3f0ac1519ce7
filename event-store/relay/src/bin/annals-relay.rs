//! `annals-relay`: publishes the event store to Kafka (see the `annals_relay` crate).
//!
//! Start as many as you like; one leads (Postgres advisory lock), the others wait and take over
//! when it dies. Stops gracefully on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use annals_relay::{Relay, RelayConfig};
use anyhow::Context;
use clap::Parser;
use event_store::EventStore;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// Publishes every event of the annals store to Kafka topics, in order, with no gaps.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Postgres holding the event store.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Apply the migrations first, over this URL (the tables' owner; see README, Roles).
    #[arg(long, env = "ANNALS_MIGRATE_URL")]
    migrate_url: Option<String>,
    /// Accept a superuser or the tables' owner as the service login (development only: such a
    /// login could rewrite stored history).
    #[arg(long, env = "ANNALS_ALLOW_OWNER")]
    allow_owner: bool,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// Extra librdkafka settings (security, tuning), as KEY=VALUE; repeatable.
    #[arg(long = "kafka-config", value_parser = parse_kv, env = "ANNALS_KAFKA_CONFIG", value_delimiter = ',')]
    kafka_config: Vec<(String, String)>,
    /// Topic prefix: topics are `<prefix><stream type>`.
    #[arg(long, env = "ANNALS_TOPIC_PREFIX", default_value = "annals.")]
    topic_prefix: String,
    /// Partitions for topics the relay creates.
    #[arg(long, env = "ANNALS_TOPIC_PARTITIONS", default_value_t = 3)]
    partitions: i32,
    /// Replication factor for topics the relay creates.
    #[arg(long, env = "ANNALS_TOPIC_REPLICATION", default_value_t = 1)]
    replication: i32,
    /// Relay name (checkpoint and leadership lock).
    #[arg(long, env = "ANNALS_RELAY_NAME", default_value = "kafka-relay")]
    name: String,
    /// Events per produce batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: u32,
    /// Serve Prometheus metrics on this address.
    #[arg(
        long,
        env = "ANNALS_RELAY_METRICS_ADDR",
        default_value = "127.0.0.1:9467"
    )]
    metrics_addr: SocketAddr,
    /// Fault injection for crash drills: exit after handing this many messages to the producer.
    #[arg(long, hide = true)]
    crash_after_messages: Option<u64>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    schemas::runtime::install_prometheus(args.metrics_addr)
        .context("starting the metrics endpoint")?;
    annals_relay::describe_metrics();

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    let access = event_store::ServiceAccess {
        migrate_url: args.migrate_url.clone(),
        allow_owner: args.allow_owner,
    };
    event_store::prepare_service(&pool, &access)
        .await
        .context("preparing the database (--allow-owner accepts an owner login)")?;

    let mut config = RelayConfig::new(args.kafka_bootstrap);
    config.kafka.extend(args.kafka_config);
    config.topic_prefix = args.topic_prefix;
    config.partitions = args.partitions;
    config.replication = args.replication;
    config.name = args.name;
    config.batch_size = args.batch_size;
    config.crash_after_messages = args.crash_after_messages;

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    Relay::new(EventStore::new(pool), config)
        .run(shutdown)
        .await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
