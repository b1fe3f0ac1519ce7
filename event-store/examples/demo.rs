//! End-to-end walk through the event store: append, idempotent retry, a refused concurrent
//! write, an atomic two-stream append, stream and global reads, a live subscription, and chain
//! verification. Run it with `deploy/demo.sh` (which starts Postgres when needed).

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

    println!("== annals event store demo ==");
    let mut meta = Metadata::new("acme", "alice", "user");
    meta.correlation_id = Some(Uuid::now_v7());
    let task = StreamId::new(format!("task-{}", Uuid::now_v7()))?;

    let command_id = Uuid::now_v7();
    let created = AppendBatch::new(meta.clone())
        .stream(
            task.clone(),
            "task",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                "task.created",
                2,
                json!({ "title": "Write the quarterly report", "priority": "high", "tags": ["finance"] }),
            )],
        )
        .idempotent(command_id);
    let first = store.append(created.clone()).await?;
    println!(
        "1. appended task.created to {task}: version {}, position {}",
        first.streams[0].version,
        first.last_position()
    );
    let retry = store.append(created).await?;
    println!(
        "2. retried command {command_id}: replayed={}, same position: {}",
        retry.replayed,
        retry.last_position() == first.last_position()
    );

    let stale = AppendBatch::new(meta.clone()).stream(
        task.clone(),
        "task",
        ExpectedVersion::NoStream,
        vec![NewEvent::new(
            "task.updated",
            1,
            json!({ "title": "Someone else's edit" }),
        )],
    );
    match store.append(stale).await {
        Err(e @ StoreError::WrongExpectedVersion { .. }) => {
            println!("3. stale writer refused: {e}")
        }
        other => anyhow::bail!("expected a concurrency conflict, got {other:?}"),
    }
    store
        .append(AppendBatch::new(meta.clone()).stream(
            task.clone(),
            "task",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new(
                "task.completed",
                1,
                json!({ "completed_by": "alice" }),
            )],
        ))
        .await?;

    let session = StreamId::new(format!("agent-session-{}", Uuid::now_v7()))?;
    let decision = StreamId::new(format!("governance-decision-{}", Uuid::now_v7()))?;
    let both = store
        .append(
            AppendBatch::new(Metadata::new("acme", "policy-engine", "service"))
                .stream(
                    decision.clone(),
                    "governance_decision",
                    ExpectedVersion::NoStream,
                    vec![NewEvent::new(
                        "governance.decision_recorded",
                        1,
                        json!({ "event_type": "pre_agent_spawn", "approved": true }),
                    )],
                )
                .stream(
                    session.clone(),
                    "agent_session",
                    ExpectedVersion::Any,
                    vec![NewEvent::new(
                        "agent_session.approved",
                        1,
                        json!({ "decision": decision.as_str() }),
                    )],
                ),
        )
        .await?;
    println!(
        "4. decision and its effect on the session committed atomically: {} streams, {} events",
        both.streams.len(),
        both.events.len()
    );

    println!("5. stream {task}, forward:");
    for e in store.read_stream(&task, 1, Direction::Forward, 100).await? {
        println!(
            "   v{} {:<16} at {} by {} hash {}…",
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

    for stream in [&task, &session, &decision] {
        let report = store.verify_stream(stream).await?;
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
