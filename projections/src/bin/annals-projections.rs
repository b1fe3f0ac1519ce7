//! `annals-projections`: the projection worker and its operator commands.
//!
//! ```text
//! annals-projections run                      # all projections + reactors, store as source
//! annals-projections run --kafka-bootstrap 127.0.0.1:9092   # consume Kafka instead
//! annals-projections rebuild tasks            # or `all`; progress bar on stderr
//! annals-projections dead-letters list [--projection tasks] [--all]
//! annals-projections dead-letters retry tasks [--stream <id>]
//! annals-projections dead-letters skip tasks <event-id>
//! annals-projections lag
//! ```
//!
//! `run` also seals the global chain (`event_store::chain`; `--no-sealer` leaves it to another
//! process) and, given a signing key (`--checkpoint-key-file` or `ANNALS_CHECKPOINT_KEY`), signs
//! checkpoints of it into the table and `--checkpoint-file` (Kafka publication is the `annals`
//! binary's, which links the relay).
//!
//! Every flag also reads an environment variable (see `--help`); migrations are applied at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use event_store::{CheckpointOptions, EventStore, SealerOptions};
use projections::rebuild::{RebuildOptions, rebuild_all};
use projections::worker::{self, KafkaWorkerConfig, WorkerConfig};
use projections::{dead_letters, lag, models};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "annals-projections",
    version,
    about = "annals read side: projections, rebuild, dead letters"
)]
struct Cli {
    /// Postgres holding the event store and the read models.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "ANNALS_DB_POOL", default_value_t = 16)]
    pool_size: u32,
    /// Apply the migrations first, over this URL (the tables' owner; see README, Roles).
    #[arg(long, env = "ANNALS_MIGRATE_URL", global = true)]
    migrate_url: Option<String>,
    /// Accept a superuser or the tables' owner as the service login (development only: such a
    /// login could rewrite stored history).
    #[arg(long, env = "ANNALS_ALLOW_OWNER", global = true)]
    allow_owner: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run projections (and the reactors) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Rebuild a projection (or `all`) from the store into fresh tables and swap them in.
    Rebuild {
        /// Projection name or `all`.
        projection: String,
        /// Events per transaction.
        #[arg(long, default_value_t = 1000)]
        batch_size: u32,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Inspect and resolve dead letters.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Print the lag of every projection.
    Lag,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Comma-separated projections to run, or `all`.
    #[arg(long, env = "ANNALS_PROJECTIONS", default_value = "all")]
    projections: String,
    /// Kafka bootstrap servers; when set, projections consume Kafka instead of the store.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Kafka topic prefix (topic = prefix + stream type with '_' as '-').
    #[arg(long, env = "ANNALS_TOPIC_PREFIX", default_value = "annals.")]
    topic_prefix: String,
    /// Consumer group prefix; each projection's group is prefix + its name.
    #[arg(
        long,
        env = "ANNALS_GROUP_PREFIX",
        default_value = "annals.projections."
    )]
    group_prefix: String,
    /// Events per batch (per transaction).
    #[arg(long, env = "ANNALS_BATCH_SIZE", default_value_t = 500)]
    batch_size: u32,
    /// Attempts per event before it is dead-lettered.
    #[arg(long, env = "ANNALS_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,
    /// Prometheus metrics address (text format at any path).
    #[arg(long, env = "ANNALS_METRICS_ADDR", default_value = "127.0.0.1:9466")]
    metrics_addr: SocketAddr,
    /// Do not run the reminder scheduler and the recurring-task manager.
    #[arg(long, env = "ANNALS_NO_REACTORS")]
    no_reactors: bool,
    /// Seconds between reminder scans.
    #[arg(long, env = "ANNALS_REMINDER_INTERVAL_SECS", default_value_t = 5)]
    reminder_interval_secs: u64,
    /// Seconds between lag samples.
    #[arg(long, env = "ANNALS_LAG_INTERVAL_SECS", default_value_t = 5)]
    lag_interval_secs: u64,
    /// Do not seal the global chain in this process (another process does).
    #[arg(long, env = "ANNALS_NO_SEALER")]
    no_sealer: bool,
    /// Private key that signs checkpoints of the global chain (else `ANNALS_CHECKPOINT_KEY`).
    #[arg(long, env = "ANNALS_CHECKPOINT_KEY_FILE")]
    checkpoint_key_file: Option<PathBuf>,
    /// Append-only JSON-lines file every checkpoint is written to.
    #[arg(long, env = "ANNALS_CHECKPOINT_FILE")]
    checkpoint_file: Option<PathBuf>,
    /// Seconds between checkpoints (one is signed only when the chain grew).
    #[arg(long, env = "ANNALS_CHECKPOINT_EVERY_SECS", default_value_t = 60)]
    checkpoint_every_secs: u64,
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// List open dead letters.
    List {
        /// Only this projection.
        #[arg(long)]
        projection: Option<String>,
        /// Include resolved and skipped ones.
        #[arg(long)]
        all: bool,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Retry the parked streams of a projection, in stream order.
    Retry {
        /// Projection.
        projection: String,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
    },
    /// Skip one failed event (never applied) and retry the rest of its stream.
    Skip {
        /// Projection.
        projection: String,
        /// The failed event.
        event_id: uuid::Uuid,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
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
    if matches!(cli.command, Command::Rebuild { .. }) {
        // Maintenance verb: a rebuild moves tables, which only their owner may do.
        event_store::migrate(&pool)
            .await
            .context("applying migrations")?;
    } else {
        let access = event_store::ServiceAccess {
            migrate_url: cli.migrate_url.clone(),
            allow_owner: cli.allow_owner,
        };
        event_store::prepare_service(&pool, &access)
            .await
            .context("preparing the database (--allow-owner accepts an owner login)")?;
    }
    let store = EventStore::new(pool.clone());

    match cli.command {
        Command::Run(args) => run(store, args).await,
        Command::Rebuild {
            projection,
            batch_size,
            no_progress,
        } => {
            let targets = worker::select(&projection).map_err(anyhow::Error::msg)?;
            let options = RebuildOptions {
                batch_size,
                progress: !no_progress,
                ..RebuildOptions::default()
            };
            // One pass over the store for every named projection, swapped in together.
            let reports = rebuild_all(&store, &targets, &options).await?;
            for (p, report) in targets.iter().zip(&reports) {
                println!(
                    "{}: {} events, position {}, busy {:.1}s of {:.1}s",
                    p.name(),
                    report.events,
                    report.position,
                    report.busy.as_secs_f64(),
                    report.elapsed.as_secs_f64()
                );
            }
            Ok(())
        }
        Command::DeadLetters { command } => dead_letter_command(&store, command).await,
        Command::Lag => {
            for p in models::all() {
                let l = lag::measure(&pool, p.as_ref()).await?;
                println!(
                    "{:<16} {:>10} events {:>10.1} s",
                    p.name(),
                    l.events,
                    l.seconds
                );
            }
            Ok(())
        }
    }
}

async fn dead_letter_command(store: &EventStore, command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List {
            projection,
            all,
            limit,
        } => {
            let rows = dead_letters::list(store.pool(), projection.as_deref(), all, limit).await?;
            for d in &rows {
                println!(
                    "{} {} pos={} stream={} v{} {} [{} {}] attempts={} {}",
                    d.projection,
                    d.event_id,
                    d.global_position,
                    d.stream_id,
                    d.stream_version,
                    d.event_type,
                    d.kind,
                    d.status,
                    d.attempts,
                    d.error
                );
            }
            println!("{} dead letter(s)", rows.len());
        }
        DeadLetterCommand::Retry { projection, stream } => {
            let Some(p) = models::by_name(&projection) else {
                bail!("unknown projection {projection:?}");
            };
            let report = dead_letters::retry(store, p.as_ref(), stream.as_deref()).await?;
            println!("{report:?}");
        }
        DeadLetterCommand::Skip {
            projection,
            event_id,
        } => {
            let Some(p) = models::by_name(&projection) else {
                bail!("unknown projection {projection:?}");
            };
            match dead_letters::skip(store, p.as_ref(), event_id).await? {
                Some(report) => println!("{report:?}"),
                None => bail!("no open dead letter {event_id} in {projection}"),
            }
        }
    }
    Ok(())
}

async fn run(store: EventStore, args: RunArgs) -> anyhow::Result<()> {
    schemas::runtime::install_prometheus(args.metrics_addr)
        .context("starting the metrics listener")?;
    projections::telemetry::describe_metrics();
    let projections = worker::select(&args.projections).map_err(anyhow::Error::msg)?;
    let config = WorkerConfig {
        kafka: args.kafka_bootstrap.map(|bootstrap| KafkaWorkerConfig {
            bootstrap,
            topic_prefix: args.topic_prefix,
            group_prefix: args.group_prefix,
        }),
        batch_size: args.batch_size,
        max_attempts: args.max_attempts,
        reactors: !args.no_reactors,
        reminder_interval: Duration::from_secs(args.reminder_interval_secs),
        lag_interval: Duration::from_secs(args.lag_interval_secs),
    };
    let key = event_store::checkpoint::load_signing_key(args.checkpoint_key_file.as_deref())?;
    let shutdown = CancellationToken::new();
    let sealer = (!args.no_sealer).then(|| {
        let options = SealerOptions {
            checkpoint: key.map(|key| CheckpointOptions {
                key,
                every: Duration::from_secs(args.checkpoint_every_secs.max(1)),
                file: args.checkpoint_file.clone(),
                publish: None,
            }),
            ..SealerOptions::default()
        };
        tokio::spawn(event_store::run_sealer(
            store.clone(),
            options,
            shutdown.clone().cancelled_owned(),
        ))
    });
    let tasks = worker::spawn(&store, &projections, &config, &shutdown);
    wait_for_signal().await;
    tracing::info!("shutting down: finishing in-flight batches");
    shutdown.cancel();
    worker::join(tasks).await;
    if let Some(sealer) = sealer {
        match sealer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the sealer stopped with an error"),
            Err(e) => tracing::error!(error = %e, "the sealer panicked"),
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
