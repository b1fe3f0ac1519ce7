//! End-to-end walk through the event store on a small ledger (not one of the annals domains,
//! which go through the command API): append, idempotent retry, a refused concurrent write, an
//! atomic two-stream transfer, stream reads, a live subscription, and chain verification.
//! Run it with `deploy/demo.sh` (which starts Postgres when needed).

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use event_store::{
    AppendBatch, Direction, EventStore, ExpectedVersion, Metadata, NewEvent, StoreError, StreamId,
    SubscriptionOptions,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// annals event store demo.
#[derive(Debug, Parser)]
struct Args {
    /// Postgres to use; `deploy/local/postgres.sh` prints a working one.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    event_store::migrate(&pool).await.context("migrating")?;
    let store = EventStore::new(pool);
    let start = store.head_position().await?;
    let mut live = store.subscribe(start, SubscriptionOptions::default());

    println!("== annals event store demo (a two-account ledger) ==");
    let mut meta = Metadata::new("acme", "alice", "user");
    meta.correlation_id = Some(Uuid::now_v7());
    let alice = StreamId::new(format!("account-{}", Uuid::now_v7()))?;
    let bob = StreamId::new(format!("account-{}", Uuid::now_v7()))?;
    let opened = |owner: &str| {
        vec![NewEvent::new(
            "ledger.account_opened",
            1,
            json!({ "owner": owner, "currency": "EUR", "balance": "100.00" }),
        )]
    };

    let command_id = Uuid::now_v7();
    let open_alice = AppendBatch::new(meta.clone())
        .stream(
            alice.clone(),
            "ledger_account",
            ExpectedVersion::NoStream,
            opened("alice"),
        )
        .idempotent(command_id);
    let first = store.append(open_alice.clone()).await?;
    println!(
        "1. opened {alice}: version {}, position {}",
        first.streams[0].version,
        first.last_position()
    );
    let retry = store.append(open_alice).await?;
    println!(
        "2. retried command {command_id}: replayed={}, same position: {}",
        retry.replayed,
        retry.last_position() == first.last_position()
    );
    store
        .append(AppendBatch::new(meta.clone()).stream(
            bob.clone(),
            "ledger_account",
            ExpectedVersion::NoStream,
            opened("bob"),
        ))
        .await?;

    let stale = AppendBatch::new(meta.clone()).stream(
        alice.clone(),
        "ledger_account",
        ExpectedVersion::NoStream,
        opened("mallory"),
    );
    match store.append(stale).await {
        Err(e @ StoreError::WrongExpectedVersion { .. }) => {
            println!("3. stale writer refused: {e}")
        }
        other => anyhow::bail!("expected a concurrency conflict, got {other:?}"),
    }

    // A transfer touches both accounts: both events commit together or not at all.
    let transfer = Uuid::now_v7();
    let both = store
        .append(
            AppendBatch::new(meta.clone())
                .stream(
                    alice.clone(),
                    "ledger_account",
                    ExpectedVersion::Exact(1),
                    vec![NewEvent::new(
                        "ledger.debited",
                        1,
                        json!({ "amount": "25.00", "transfer": transfer }),
                    )],
                )
                .stream(
                    bob.clone(),
                    "ledger_account",
                    ExpectedVersion::Exact(1),
                    vec![NewEvent::new(
                        "ledger.credited",
                        1,
                        json!({ "amount": "25.00", "transfer": transfer }),
                    )],
                ),
        )
        .await?;
    println!(
        "4. transfer committed atomically: {} streams, {} events",
        both.streams.len(),
        both.events.len()
    );

    println!("5. stream {alice}, forward:");
    for e in store
        .read_stream("acme", &alice, 1, Direction::Forward, 100)
        .await?
    {
        println!(
            "   v{} {:<22} at {} by {} hash {}…",
            e.stream_version,
            e.event_type,
            e.recorded_at.format("%H:%M:%S%.3f"),
            e.metadata()?.actor,
            &hex::encode(e.hash)[..16]
        );
    }

    let mut seen = 0;
    while seen < 4 {
        let batch = tokio::time::timeout(Duration::from_secs(10), live.next_batch())
            .await
            .context("live subscription stalled")??;
        for e in &batch {
            println!(
                "6. live subscription got #{} {} ({})",
                e.global_position, e.event_type, e.stream_type
            );
        }
        seen += batch.len();
    }

    for stream in [&alice, &bob] {
        let report = store.verify_stream("acme", stream).await?;
        println!(
            "7. hash chain of {stream}: {} ({} events)",
            if report.is_intact() {
                "intact"
            } else {
                "TAMPERED"
            },
            report.events_checked
        );
    }
    println!("done.");
    Ok(())
}
