//! `annals`: the whole platform in one process, for development, demos and small installs.
//!
//! ```text
//! annals run                                  # command API :50051, query API :50052, metrics :9464
//! annals run --kafka-bootstrap 127.0.0.1:9092 # also relay to Kafka; projections consume topics
//! annals store rebase-positions               # after a logical restore (see the README)
//! ```
//!
//! Without Kafka (the embedded default) projections follow the event store directly. With
//! `--kafka-bootstrap`, the outbox relay publishes every event and the projections consume the
//! topics in consumer groups, exactly as separate `annals-relay` and `annals-projections`
//! processes would. Tokens: `annals-command-api token create …` (same database).
//!
//! # Layout
//!
//! One file: flags, then `run`, which starts each part on a shared cancellation token and waits
//! for all of them after SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use annals_relay::{Relay, RelayConfig};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use event_store::EventStore;
use projections::worker::{self, KafkaWorkerConfig, WorkerConfig};
use schemas::auth::TokenStore;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// The annals platform in one process.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about)]
struct Cli {
    /// Postgres holding the event store and the read models.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://annals:annals@127.0.0.1:5432/annals"
    )]
    database_url: String,
    /// Connections in the pool shared by every part.
    #[arg(long, env = "ANNALS_DB_POOL_SIZE", default_value_t = 32)]
    pool_size: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run command API, projections, query API (and the relay with Kafka) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Event store maintenance.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// After the database was restored (pg_dump/pg_restore) or logically replicated into another
    /// Postgres cluster, appends refuse because that cluster's transaction ids are behind the
    /// stored ones. This starts a new position epoch so that new positions follow every stored
    /// one; nothing stored is rewritten. Safe to run at any time (it waits for running appends).
    RebasePositions,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Command API address.
    #[arg(long, env = "ANNALS_COMMAND_LISTEN", default_value = "0.0.0.0:50051")]
    command_listen: SocketAddr,
    /// Query API address.
    #[arg(long, env = "ANNALS_QUERY_LISTEN", default_value = "0.0.0.0:50052")]
    query_listen: SocketAddr,
    /// Prometheus metrics of every part, on one endpoint.
    #[arg(long, env = "ANNALS_METRICS_LISTEN", default_value = "0.0.0.0:9464")]
    metrics_listen: SocketAddr,
    /// Kafka bootstrap servers: relay to Kafka and project from its topics.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Kafka topic prefix.
    #[arg(long, env = "ANNALS_TOPIC_PREFIX", default_value = "annals.")]
    topic_prefix: String,
    /// Longest a query waits for `min_position` before answering UNAVAILABLE.
    #[arg(long, env = "ANNALS_MIN_POSITION_WAIT_MS", default_value_t = 5_000)]
    min_position_wait_ms: u64,
    /// Read-side queries run as the `annals_reader` role under row-level security.
    #[arg(long, env = "ANNALS_QUERY_RLS", default_value_t = true, action = clap::ArgAction::Set)]
    row_level_security: bool,
    /// Do not run the reminder scheduler and the recurring-task manager.
    #[arg(long, env = "ANNALS_NO_REACTORS")]
    no_reactors: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let pool = PgPoolOptions::new()
        .max_connections(cli.pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cli.database_url)
        .await
        .context("connecting to Postgres")?;
    event_store::migrate(&pool)
        .await
        .context("applying migrations")?;
    match cli.command {
        Command::Run(args) => run(args, pool).await,
        Command::Store(StoreCommand::RebasePositions) => {
            let epoch = EventStore::new(pool).rebase_positions().await?;
            println!(
                "position epoch {} started: new positions start above {} (xid offset {})",
                epoch.epoch, epoch.floor, epoch.xid_offset
            );
            Ok(())
        }
    }
}

async fn run(args: RunArgs, pool: sqlx::PgPool) -> anyhow::Result<()> {
    let store = EventStore::new(pool.clone());
    let reader = query_api::Reader::new(
        pool.clone(),
        args.row_level_security,
        Duration::from_millis(args.min_position_wait_ms),
    );
    if args.row_level_security {
        reader.probe().await.context(
            "row-level security is on but role annals_reader cannot be assumed \
             (grant it to this login, or pass --row-level-security=false)",
        )?;
    }
    command_api::telemetry::install_prometheus(args.metrics_listen)
        .context("starting the metrics endpoint")?;
    command_api::telemetry::describe_metrics();
    query_api::telemetry::describe_metrics();
    projections::telemetry::describe_metrics();
    if args.kafka_bootstrap.is_some() {
        annals_relay::describe_metrics();
    }
    let command_listener = tokio::net::TcpListener::bind(args.command_listen)
        .await
        .with_context(|| format!("binding {}", args.command_listen))?;
    let query_listener = tokio::net::TcpListener::bind(args.query_listen)
        .await
        .with_context(|| format!("binding {}", args.query_listen))?;
    // One line on stdout with the bound addresses (ports may be 0 = chosen by the OS), for
    // scripts and tests.
    println!(
        "annals listening command={} query={} metrics={}",
        command_listener.local_addr()?,
        query_listener.local_addr()?,
        args.metrics_listen
    );

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            command_api::shutdown_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });

    let commands = tokio::spawn({
        let (store, tokens, stop) = (
            store.clone(),
            TokenStore::new(pool.clone()),
            shutdown.clone(),
        );
        async move {
            let config = command_api::ServerConfig::default();
            command_api::serve(
                store,
                tokens,
                &config,
                command_listener,
                stop.cancelled_owned(),
            )
            .await
        }
    });
    let queries = tokio::spawn({
        let (tokens, stop) = (TokenStore::new(pool.clone()), shutdown.clone());
        async move {
            let config = query_api::ServerConfig::default();
            query_api::serve(
                reader,
                tokens,
                &config,
                query_listener,
                stop.cancelled_owned(),
            )
            .await
        }
    });
    let relay = args.kafka_bootstrap.clone().map(|bootstrap| {
        let mut config = RelayConfig::new(bootstrap);
        config.topic_prefix.clone_from(&args.topic_prefix);
        tokio::spawn(Relay::new(store.clone(), config).run(shutdown.clone()))
    });
    let config = WorkerConfig {
        kafka: args.kafka_bootstrap.map(|bootstrap| KafkaWorkerConfig {
            bootstrap,
            topic_prefix: args.topic_prefix,
            group_prefix: "annals.projections.".to_owned(),
        }),
        reactors: !args.no_reactors,
        ..WorkerConfig::default()
    };
    let workers = worker::spawn(&store, &projections::models::all(), &config, &shutdown);

    // A part that stops on its own (e.g. a server that cannot serve) stops the others.
    let mut failed = false;
    let outcome =
        |name: &str, joined: Result<Result<(), String>, tokio::task::JoinError>| match joined {
            Ok(Ok(())) => false,
            Ok(Err(e)) => {
                tracing::error!(part = name, error = %e, "stopped with an error");
                true
            }
            Err(e) => {
                tracing::error!(part = name, error = %e, "panicked");
                true
            }
        };
    let stop_all = shutdown.clone();
    let commands = async {
        let r = commands.await.map(|r| r.map_err(|e| e.to_string()));
        stop_all.cancel();
        r
    };
    let queries = async {
        let r = queries.await.map(|r| r.map_err(|e| e.to_string()));
        shutdown.cancel();
        r
    };
    let (c, q) = tokio::join!(commands, queries);
    failed |= outcome("command-api", c);
    failed |= outcome("query-api", q);
    if let Some(relay) = relay {
        failed |= outcome("relay", relay.await.map(|r| r.map_err(|e| e.to_string())));
    }
    failed |= worker::join(workers).await > 0;
    anyhow::ensure!(!failed, "a part of annals failed; see the log");
    tracing::info!("stopped");
    Ok(())
}
