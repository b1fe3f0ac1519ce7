//! `annals-command-api`: the gRPC command service and its token management.
//!
//! ```text
//! annals-command-api serve                       # listen on 0.0.0.0:50051, metrics on :9464
//! annals-command-api token create --tenant acme --actor billing-svc --role service
//! annals-command-api token list [--tenant acme]
//! annals-command-api token revoke <token-id>
//! ```
//!
//! Every flag also reads an environment variable (shown by `--help`); the library never does.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use command_api::auth::TokenCacheConfig;
use command_api::{NewToken, Role, ServerConfig, TokenStore};
use event_store::EventStore;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// annals gRPC command service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct DbArgs {
    /// Postgres URL of the event store (`deploy/local/postgres.sh` prints a local one).
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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC command API (applies migrations first).
    Serve(ServeArgs),
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "ANNALS_COMMAND_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Prometheus metrics listen address (`GET /metrics`).
    #[arg(
        long,
        env = "ANNALS_COMMAND_METRICS_LISTEN",
        default_value = "0.0.0.0:9464"
    )]
    metrics_listen: SocketAddr,
    /// Largest accepted request message, in bytes.
    #[arg(long, env = "ANNALS_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
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

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        /// Tenant the token acts in.
        #[arg(long)]
        tenant: String,
        /// User or service id recorded as the actor of every event.
        #[arg(long)]
        actor: String,
        /// admin | service | analyst | auditor | viewer (commands need admin or service).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Kind of actor recorded in event metadata.
        #[arg(long, default_value = "service")]
        actor_type: String,
        /// Free text shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Expire after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this tenant's tokens.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by id; running servers refuse it within their `--token-cache-secs`.
    Revoke {
        /// The token id printed by `create` and `list`.
        token_id: Uuid,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        let all: Vec<_> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {s:?}; one of {}", all.join(", "))
    })
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
        .max_connections(cli.db.pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cli.db.database_url)
        .await
        .context("connecting to Postgres")?;
    let access = event_store::ServiceAccess {
        migrate_url: cli.db.migrate_url.clone(),
        allow_owner: cli.db.allow_owner,
    };
    event_store::prepare_service(&pool, &access)
        .await
        .context("preparing the database (--allow-owner accepts an owner login)")?;
    let tokens = TokenStore::new(pool.clone());
    match cli.command {
        Command::Serve(args) => serve(args, EventStore::new(pool), tokens).await,
        Command::Token(cmd) => token(cmd, &tokens).await,
    }
}

async fn serve(args: ServeArgs, store: EventStore, tokens: TokenStore) -> anyhow::Result<()> {
    command_api::telemetry::install_prometheus(args.metrics_listen)
        .context("starting the metrics endpoint")?;
    command_api::telemetry::describe_metrics();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        metrics = %args.metrics_listen,
        "annals command API serving"
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
    command_api::serve(
        store,
        tokens,
        &config,
        listener,
        command_api::shutdown_signal(),
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn token(cmd: TokenCommand, tokens: &TokenStore) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            tenant,
            actor,
            role,
            actor_type,
            description,
            expires_in_days,
        } => {
            let new = NewToken {
                tenant,
                actor,
                actor_type,
                role,
                description,
                expires_at: expires_in_days
                    .map(|d| Utc::now() + chrono::Duration::days(i64::from(d))),
            };
            let (info, secret) = tokens.create(&new).await?;
            eprintln!(
                "created token {} for tenant {} actor {} role {} (shown once; store it now):",
                info.token_id, info.tenant, info.actor, info.role
            );
            println!("{secret}");
        }
        TokenCommand::List { tenant } => {
            println!(
                "{:<36}  {:<16}  {:<20}  {:<8}  {:<8}  description",
                "token_id", "tenant", "actor", "role", "state"
            );
            for t in tokens.list(tenant.as_deref()).await? {
                let state = match (t.revoked_at, t.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= Utc::now() => "expired",
                    _ => "active",
                };
                println!(
                    "{:<36}  {:<16}  {:<20}  {:<8}  {:<8}  {}",
                    t.token_id, t.tenant, t.actor, t.role, state, t.description
                );
            }
        }
        TokenCommand::Revoke { token_id } => {
            if tokens.revoke(token_id).await? {
                println!("revoked {token_id}");
            } else {
                anyhow::bail!("no active token with id {token_id}");
            }
        }
    }
    Ok(())
}
