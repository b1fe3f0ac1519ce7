//! `annals`: the whole platform in one process, for development, demos and small installs.
//!
//! ```text
//! annals run                                  # command API :50051, query API :50052, metrics :9464
//! annals run --kafka-bootstrap 127.0.0.1:9092 # also relay to Kafka; projections consume topics
//! annals migrate                              # as the tables' owner (see the README, Roles)
//! annals store rebase-positions               # after a logical restore (see the README)
//! annals audit keygen --out checkpoint.key    # Ed25519 key for signed checkpoints
//! annals audit checkpoint --key-file checkpoint.key --file checkpoints.jsonl
//! annals audit verify --public-key checkpoint.key.pub --checkpoint-file checkpoints.jsonl
//! annals audit prove <event-id> --out proof.json
//! annals audit check-proof proof.json --public-key checkpoint.key.pub   # offline
//! ```
//!
//! `run` also seals the global chain (see `event_store::chain`) and, given a signing key
//! (`--checkpoint-key-file` or `ANNALS_CHECKPOINT_KEY`), signs checkpoints of it: stored, appended
//! to `--checkpoint-file`, and published to the checkpoint topic when Kafka is configured.
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
use std::path::{Path, PathBuf};
use std::time::Duration;

use annals_relay::{CHECKPOINT_TOPIC, CheckpointPublisher, Relay, RelayConfig};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use event_store::checkpoint::{self, SignedCheckpoint};
use event_store::{CheckpointOptions, EventStore, InclusionProof, SealerOptions};
use projections::worker::{self, KafkaWorkerConfig, WorkerConfig};
use schemas::auth::TokenStore;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// The annals platform in one process.
#[derive(Debug, Parser)]
#[command(name = "annals", version, about)]
struct Cli {
    /// Postgres holding the event store and the read models. `run` connects as the services'
    /// login; `migrate` and `store` verbs as the tables' owner.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://annals_app:annals_app@127.0.0.1:5432/annals"
    )]
    database_url: String,
    /// Connections in the pool shared by every part.
    #[arg(long, env = "ANNALS_DB_POOL_SIZE", default_value_t = 32)]
    pool_size: u32,
    /// `run`: apply the migrations first, over this URL (the tables' owner; see README, Roles).
    #[arg(long, env = "ANNALS_MIGRATE_URL")]
    migrate_url: Option<String>,
    /// `run`: accept a superuser or the tables' owner as the service login (development only:
    /// such a login could rewrite stored history).
    #[arg(long, env = "ANNALS_ALLOW_OWNER")]
    allow_owner: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run command API, projections, query API (and the relay with Kafka) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Apply the migrations (connect as the tables' owner) and exit.
    Migrate,
    /// Event store maintenance.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Tamper evidence for auditors: signing keys, checkpoints, verification, inclusion proofs.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Generates an Ed25519 checkpoint key: the private key (64 hex digits) to `--out` (mode
    /// 0600) and the public key to `<out>.pub`. Needs no database.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Seals what is safe to seal, signs the global chain's head now, stores the checkpoint,
    /// appends it to `--file` and prints it.
    Checkpoint {
        /// The private key (else `ANNALS_CHECKPOINT_KEY`).
        #[arg(long, env = "ANNALS_CHECKPOINT_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// Append-only JSON-lines file of checkpoints.
        #[arg(long, env = "ANNALS_CHECKPOINT_FILE")]
        file: Option<PathBuf>,
    },
    /// Verifies the store against a signed checkpoint: the last line of `--checkpoint-file`,
    /// else the newest stored checkpoint the public key accepts. Exit status 2 when tampered.
    Verify {
        /// The public key: 64 hex digits or a file holding them.
        #[arg(long)]
        public_key: String,
        /// JSON-lines file of checkpoints (the copy kept outside the database).
        #[arg(long)]
        checkpoint_file: Option<PathBuf>,
    },
    /// Writes a proof that an event is included under a signed checkpoint.
    Prove {
        /// The event.
        event_id: uuid::Uuid,
        /// Where to write the proof (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Prove under the last checkpoint of this file (else the newest stored one).
        #[arg(long)]
        checkpoint_file: Option<PathBuf>,
    },
    /// Checks a proof offline with the public key alone (no database access).
    CheckProof {
        /// The proof (JSON) written by `prove` or returned by `GetInclusionProof`.
        proof: PathBuf,
        /// The public key: 64 hex digits or a file holding them.
        #[arg(long)]
        public_key: String,
    },
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
    /// Do not seal the global chain in this process (another process does).
    #[arg(long, env = "ANNALS_NO_SEALER")]
    no_sealer: bool,
    /// Private key that signs checkpoints of the global chain (else `ANNALS_CHECKPOINT_KEY`;
    /// without either, the chain is sealed but not signed).
    #[arg(long, env = "ANNALS_CHECKPOINT_KEY_FILE")]
    checkpoint_key_file: Option<PathBuf>,
    /// Append-only JSON-lines file every checkpoint is written to.
    #[arg(long, env = "ANNALS_CHECKPOINT_FILE")]
    checkpoint_file: Option<PathBuf>,
    /// Seconds between checkpoints (one is signed only when the chain grew).
    #[arg(long, env = "ANNALS_CHECKPOINT_EVERY_SECS", default_value_t = 60)]
    checkpoint_every_secs: u64,
    /// Kafka topic of checkpoints (with `--kafka-bootstrap`).
    #[arg(long, env = "ANNALS_CHECKPOINT_TOPIC", default_value = CHECKPOINT_TOPIC)]
    checkpoint_topic: String,
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
    // The offline verbs touch no database.
    match &cli.command {
        Command::Audit(AuditCommand::Keygen { out }) => return keygen(out),
        Command::Audit(AuditCommand::CheckProof { proof, public_key }) => {
            return check_proof(proof, public_key);
        }
        _ => {}
    }
    let pool = PgPoolOptions::new()
        .max_connections(cli.pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cli.database_url)
        .await
        .context("connecting to Postgres")?;
    match cli.command {
        Command::Run(args) => {
            let access = event_store::ServiceAccess {
                migrate_url: cli.migrate_url,
                allow_owner: cli.allow_owner,
            };
            let role = event_store::prepare_service(&pool, &access)
                .await
                .context("preparing the database (--allow-owner accepts an owner login)")?;
            tracing::info!(login = %role.name, privileged = role.is_privileged(), "database ready");
            run(args, pool).await
        }
        Command::Migrate => {
            event_store::migrate(&pool)
                .await
                .context("applying migrations")?;
            let role = event_store::connection_role(&pool).await?;
            println!("migrations applied as {}", role.name);
            Ok(())
        }
        Command::Store(StoreCommand::RebasePositions) => {
            event_store::migrate(&pool)
                .await
                .context("applying migrations")?;
            let epoch = EventStore::new(pool).rebase_positions().await?;
            println!(
                "position epoch {} started: new positions start above {} (xid offset {})",
                epoch.epoch, epoch.floor, epoch.xid_offset
            );
            Ok(())
        }
        Command::Audit(verb) => audit(verb, EventStore::new(pool)).await,
    }
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let key = checkpoint::generate_key();
    let public = hex_of(key.verifying_key().as_bytes());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(out)
        .with_context(|| format!("creating {} (it must not exist)", out.display()))?;
    std::io::Write::write_all(
        &mut file,
        format!("{}\n", hex_of(&key.to_bytes())).as_bytes(),
    )?;
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", public_path.display()))?;
    println!(
        "private key: {} (keep it out of the database and its backups)\npublic key:  {} ({public}, key id {})",
        out.display(),
        public_path.display(),
        checkpoint::key_id(&key.verifying_key())
    );
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_proof(path: &Path, public_key: &str) -> anyhow::Result<()> {
    let key = checkpoint::verifying_key_from_arg(public_key)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let proof: InclusionProof = serde_json::from_str(&text).context("not an inclusion proof")?;
    match proof.check(&key) {
        Ok(()) => {
            println!(
                "valid: event {} (position {}) is leaf {} of {} under the checkpoint signed {} by key {}",
                proof.event.event_id,
                proof.event.global_position,
                proof.leaf_index,
                proof.checkpoint.leaf_count,
                proof.checkpoint.signed_at.to_rfc3339(),
                proof.checkpoint.key_id
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("INVALID: {e}");
            std::process::exit(2);
        }
    }
}

fn last_checkpoint(file: &Path) -> anyhow::Result<SignedCheckpoint> {
    checkpoint::read_checkpoint_file(file)?
        .pop()
        .with_context(|| format!("{} holds no checkpoint", file.display()))
}

async fn audit(verb: AuditCommand, store: EventStore) -> anyhow::Result<()> {
    match verb {
        AuditCommand::Keygen { .. } | AuditCommand::CheckProof { .. } => Ok(()),
        AuditCommand::Checkpoint { key_file, file } => {
            let key = checkpoint::load_signing_key(key_file.as_deref())?
                .context("no signing key: pass --key-file or set ANNALS_CHECKPOINT_KEY")?;
            store.seal_all(5_000).await?;
            let cp = store.sign_checkpoint(&key).await?;
            if let Some(file) = &file {
                checkpoint::append_checkpoint_file(file, &cp)
                    .with_context(|| format!("appending to {}", file.display()))?;
            }
            println!("{}", serde_json::to_string(&cp)?);
            Ok(())
        }
        AuditCommand::Verify {
            public_key,
            checkpoint_file,
        } => {
            let key = checkpoint::verifying_key_from_arg(&public_key)?;
            let cp = match &checkpoint_file {
                Some(file) => last_checkpoint(file)?,
                None => store
                    .latest_checkpoint(&key)
                    .await?
                    .context("no stored checkpoint is signed by this key")?,
            };
            let bar = indicatif::ProgressBar::new(cp.leaf_count);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} verifying [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = store
                .verify_checkpoint(&cp, &key, |done, _| bar.set_position(done))
                .await?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.intact {
                eprintln!(
                    "intact: {} events up to position {} match the checkpoint signed {}",
                    report.events_checked,
                    cp.last_position,
                    cp.signed_at.to_rfc3339()
                );
                Ok(())
            } else {
                if let Some(bad) = &report.first_bad {
                    eprintln!(
                        "TAMPERED: first bad leaf {} (position {}), {:?}{}",
                        bad.leaf_index,
                        bad.global_position
                            .map_or_else(|| "gone".to_owned(), |p| p.to_string()),
                        bad.fault,
                        if bad.exact {
                            String::new()
                        } else {
                            format!(
                                " somewhere in leaves [{}, {})",
                                bad.leaf_index, bad.range_end
                            )
                        }
                    );
                }
                std::process::exit(2);
            }
        }
        AuditCommand::Prove {
            event_id,
            out,
            checkpoint_file,
        } => {
            let cp = checkpoint_file
                .as_deref()
                .map(last_checkpoint)
                .transpose()?;
            let proof = store
                .inclusion_proof(event_id, cp.as_ref())
                .await?
                .with_context(|| format!("no event {event_id}"))?;
            std::fs::write(&out, serde_json::to_string_pretty(&proof)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "proof written to {}: leaf {} of {}, {} path hashes",
                out.display(),
                proof.leaf_index,
                proof.checkpoint.leaf_count,
                proof.audit_path.len()
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
        kafka: args
            .kafka_bootstrap
            .clone()
            .map(|bootstrap| KafkaWorkerConfig {
                bootstrap,
                topic_prefix: args.topic_prefix,
                group_prefix: "annals.projections.".to_owned(),
            }),
        reactors: !args.no_reactors,
        ..WorkerConfig::default()
    };
    let workers = worker::spawn(&store, &projections::models::all(), &config, &shutdown);
    let (sealer, publisher) = if args.no_sealer {
        (None, None)
    } else {
        let key = checkpoint::load_signing_key(args.checkpoint_key_file.as_deref())?;
        let (publish, publisher) = match (&key, &args.kafka_bootstrap) {
            (Some(_), Some(bootstrap)) => {
                let publisher = CheckpointPublisher::new(
                    &RelayConfig::new(bootstrap.clone()),
                    &args.checkpoint_topic,
                )
                .await
                .context("creating the checkpoint topic")?;
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                (Some(tx), Some(tokio::spawn(publisher.run(rx))))
            }
            _ => (None, None),
        };
        let options = SealerOptions {
            checkpoint: key.map(|key| CheckpointOptions {
                key,
                every: Duration::from_secs(args.checkpoint_every_secs.max(1)),
                file: args.checkpoint_file.clone(),
                publish,
            }),
            ..SealerOptions::default()
        };
        let sealer = tokio::spawn(event_store::run_sealer(
            store.clone(),
            options,
            shutdown.clone().cancelled_owned(),
        ));
        (Some(sealer), publisher)
    };

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
    if let Some(sealer) = sealer {
        failed |= outcome("sealer", sealer.await.map(|r| r.map_err(|e| e.to_string())));
    }
    if let Some(publisher) = publisher {
        failed |= outcome("checkpoint-publisher", publisher.await.map(Ok));
    }
    anyhow::ensure!(!failed, "a part of annals failed; see the log");
    tracing::info!("stopped");
    Ok(())
}
