//! `annals-query-api`: the gRPC query service.
//!
//! ```text
//! annals-query-api serve          # listen on 0.0.0.0:50052, metrics on :9465
//! ```
//!
//! Every flag also reads an environment variable (shown by `--help`); the library never does.
//! Tokens are managed with `annals-command-api token create|list|revoke` (same table).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use query_api::{Reader, ServerConfig};
use schemas::auth::{TokenCacheConfig, TokenStore};
use sqlx::postgres::PgPoolOptions;

/// annals gRPC query service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Postgres URL of the event store and read models.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://annals_app:annals_app@127.0.0.1:5432/annals"
    )]
    database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "ANNALS_DB_POOL_SIZE", global = true, default_value_t = 16)]
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
    /// Serve the gRPC query API.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "ANNALS_QUERY_LISTEN", default_value = "0.0.0.0:50052")]
    listen: SocketAddr,
    /// Prometheus metrics listen address (`GET /metrics`).
    #[arg(
        long,
        env = "ANNALS_QUERY_METRICS_LISTEN",
        default_value = "0.0.0.0:9465"
    )]
    metrics_listen: SocketAddr,
    /// Longest wait for a request's `min_position`, in milliseconds.
    #[arg(long, env = "ANNALS_MIN_POSITION_WAIT_MS", default_value_t = 5_000)]
    min_position_wait_ms: u64,
    /// Run each request as role `annals_reader` under the tenant row-level-security policies
    /// (second wall; `false` keeps only the per-statement tenant filter).
    #[arg(
        long,
        env = "ANNALS_QUERY_RLS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    row_level_security: bool,
    /// Largest accepted request message, in bytes.
    #[arg(long, env = "ANNALS_QUERY_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    max_request_bytes: usize,
    /// Per-request timeout, in seconds.
    #[arg(long, env = "ANNALS_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    request_timeout_secs: u64,
    /// Most concurrent requests per client connection.
    #[arg(long, env = "ANNALS_CONCURRENCY_PER_CONNECTION", default_value_t = 64)]
    concurrency_per_connection: usize,
    /// How long a verified bearer token is trusted without a lookup, in seconds: the longest a
    /// revoked token keeps working (0 looks every request up).
    #[arg(long, env = "ANNALS_TOKEN_CACHE_SECS", default_value_t = 5)]
    token_cache_secs: u64,
    /// Most tokens kept in memory (valid and refused ones, each).
    #[arg(long, env = "ANNALS_TOKEN_CACHE_CAPACITY", default_value_t = 10_000)]
    token_cache_capacity: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let pool = PgPoolOptions::new()
        .max_connections(cli.pool_size)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings a connection on every acquire by default: a round trip per statement, as
        // many as the one-statement reads themselves. A connection that died idle fails one
        // request instead (UNAVAILABLE, which clients retry) and is dropped from the pool.
        .test_before_acquire(false)
        .connect(&cli.database_url)
        .await
        .context("connecting to Postgres")?;
    let access = event_store::ServiceAccess {
        migrate_url: cli.migrate_url.clone(),
        allow_owner: cli.allow_owner,
    };
    event_store::prepare_service(&pool, &access)
        .await
        .context("preparing the database (--allow-owner accepts an owner login)")?;
    match cli.command {
        Command::Serve(args) => serve(args, pool).await,
    }
}

async fn serve(args: ServeArgs, pool: sqlx::PgPool) -> anyhow::Result<()> {
    let reader = Reader::new(
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
    query_api::telemetry::install_prometheus(args.metrics_listen)
        .context("starting the metrics endpoint")?;
    query_api::telemetry::describe_metrics();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        metrics = %args.metrics_listen,
        row_level_security = args.row_level_security,
        "annals query API serving"
    );
    let config = ServerConfig {
        max_request_bytes: args.max_request_bytes,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        concurrency_per_connection: args.concurrency_per_connection,
        token_cache: TokenCacheConfig {
            ttl: Duration::from_secs(args.token_cache_secs),
            capacity: args.token_cache_capacity,
            ..TokenCacheConfig::default()
        },
    };
    query_api::serve(
        reader,
        TokenStore::new(pool),
        &config,
        listener,
        query_api::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}
