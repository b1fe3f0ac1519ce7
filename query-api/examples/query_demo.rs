//! The query API end to end, after the command demo: runs every projection in-process through
//! the projections crate's runner (store mode, live), starts the query server on 127.0.0.1 (a
//! free port), and reads tenant `acme`'s read models, summaries and audit trail over real gRPC;
//! then writes one task through the aggregate and the store and reads it back at once with
//! `min_position`, replays an agent session as of its first version, and verifies the tenant's
//! hash chains. Run it with `deploy/demo.sh`.

use std::time::Duration;

use aggregates::task::{CreateTask, Priority, Tags, Task, TaskCommand};
use aggregates::values::{TaskId, TaskTitle, UserRef};
use aggregates::{Aggregate, CommandContext, DomainEvent};
use anyhow::Context;
use clap::Parser;
use event_store::{AppendBatch, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use projections::source::StoreSource;
use query_api::{Reader, ServerConfig};
use schemas::auth::{NewToken, Role, TokenStore};
use schemas::v1 as pb;
use schemas::v1::agent_session_queries_client::AgentSessionQueriesClient;
use schemas::v1::audit_queries_client::AuditQueriesClient;
use schemas::v1::governance_queries_client::GovernanceQueriesClient;
use schemas::v1::history_queries_client::HistoryQueriesClient;
use schemas::v1::problem_queries_client::ProblemQueriesClient;
use schemas::v1::summary_queries_client::SummaryQueriesClient;
use schemas::v1::task_queries_client::TaskQueriesClient;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use uuid::Uuid;

/// annals query API demo.
#[derive(Debug, Parser)]
struct Args {
    /// Postgres to use; `deploy/local/postgres.sh` prints a working one.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Tenant whose data is shown (the command demo writes `acme`).
    #[arg(long, default_value = "acme")]
    tenant: String,
}

/// A request carrying the bearer token.
fn auth<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The random tail of a UUID v7 (its head is the timestamp).
fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// At most `n` characters of a JSON text, for one-line output.
fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
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
    // Five live runners hold a listener and a batch connection each.
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    event_store::migrate(&pool).await.context("migrating")?;
    let store = EventStore::new(pool.clone());
    let tokens = TokenStore::new(pool.clone());
    let tenant = args.tenant.as_str();

    println!("== annals query API demo ==");
    let shutdown = CancellationToken::new();
    let mut runners = Vec::new();
    for p in projections::models::all() {
        let runner = projections::Runner::new(store.clone(), p.clone(), Default::default());
        let (token, store) = (shutdown.clone(), store.clone());
        runners.push(tokio::spawn(async move {
            let mut source = StoreSource::new(store, p.checkpoint_name(), p.stream_types(), 500);
            runner.run(&mut source, &token).await
        }));
    }
    println!(
        "1. projections running in-process (problems, tasks, agent_sessions, governance, audit)"
    );

    let (_, token) = tokens
        .create(&NewToken {
            tenant: tenant.into(),
            actor: "demo-auditor".into(),
            actor_type: "user".into(),
            role: Role::Auditor,
            description: "deploy/demo.sh (query API)".into(),
            expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        })
        .await?;
    let reader = Reader::new(pool.clone(), true, Duration::from_secs(5));
    reader
        .probe()
        .await
        .context("row-level security (role annals_reader)")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_tokens = tokens.clone();
    let server = tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        query_api::serve(
            reader,
            server_tokens,
            &ServerConfig::default(),
            listener,
            stopped,
        )
        .await
    });
    println!("2. query server on {addr}; auditor token for tenant {tenant}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;

    // Everything appended so far (by the command demo) is reflected once the projections reach
    // the store's head: pass it as min_position.
    let head = store.head_position().await?.0;
    let mut problems = ProblemQueriesClient::new(channel.clone());
    let listed = problems
        .list_problems(auth(
            &token,
            pb::ListProblemsRequest {
                min_position: head,
                page_size: 3,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    println!(
        "3. ListProblems (min_position {head}) -> position {}, newest {}:",
        listed.position,
        listed.problems.len()
    );
    for p in &listed.problems {
        println!(
            "     {}  {:<14} {:<8} {}",
            short(&p.problem_id),
            p.stage,
            p.urgency,
            p.title
        );
    }
    let tasks = TaskQueriesClient::new(channel.clone())
        .list_tasks(auth(
            &token,
            pb::ListTasksRequest {
                min_position: head,
                page_size: 3,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    println!("   ListTasks:");
    for t in &tasks.tasks {
        println!(
            "     {}  {:<10} tags {:?} {}",
            short(&t.task_id),
            t.status,
            t.tags,
            t.title
        );
    }
    let sessions = AgentSessionQueriesClient::new(channel.clone())
        .list_sessions(auth(
            &token,
            pb::ListSessionsRequest {
                min_position: head,
                page_size: 3,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    println!("   ListSessions:");
    for s in &sessions.sessions {
        println!(
            "     {}  {:<10} cost {:<8} approvals {} rejections {}",
            short(&s.session_id),
            s.status,
            s.token_cost,
            s.approvals,
            s.rejections
        );
    }
    let decisions = GovernanceQueriesClient::new(channel.clone())
        .list_decisions(auth(
            &token,
            pb::ListDecisionsRequest {
                min_position: head,
                page_size: 3,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    println!("   ListDecisions:");
    for d in &decisions.decisions {
        println!(
            "     {}  {:<16} {:<24} approved={} {}",
            short(&d.decision_id),
            d.event_type,
            d.framework_type,
            d.approved,
            d.reason
        );
    }

    let mut summaries = SummaryQueriesClient::new(channel.clone());
    let pipeline = summaries
        .get_problem_pipeline(auth(
            &token,
            pb::GetProblemPipelineRequest { min_position: head },
        ))
        .await?
        .into_inner();
    let stages: Vec<String> = pipeline
        .stages
        .iter()
        .filter(|s| s.problem_count > 0)
        .map(|s| format!("{}={}", s.stage, s.problem_count))
        .collect();
    println!("4. GetProblemPipeline: {}", stages.join(" "));
    let rates = summaries
        .list_approval_rates(auth(
            &token,
            pb::ListApprovalRatesRequest {
                min_position: head,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    for r in rates.rates.iter().take(3) {
        println!(
            "   ListApprovalRates: {} {} {}: {}/{} approved ({})",
            r.day,
            r.framework_type,
            r.event_type,
            r.approved_count,
            r.decision_count,
            r.approval_rate
        );
    }

    let trail = AuditQueriesClient::new(channel.clone())
        .list_audit_trail(auth(
            &token,
            pb::ListAuditTrailRequest {
                min_position: head,
                page_size: 4,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    println!("5. ListAuditTrail (oldest first, 4 of them):");
    for e in &trail.entries {
        println!(
            "     #{} {:<32} by {:<10} {}",
            e.global_position,
            e.action,
            e.actor,
            clip(&e.changes_json, 60)
        );
    }

    // Read-your-writes: append a task through the aggregate and the store, then read it back
    // at once with the position the append returned.
    let task_id = Uuid::now_v7();
    let ctx = CommandContext::new(chrono::Utc::now(), "demo-auditor");
    let events = Task::decide(
        &None,
        TaskCommand::CreateTask(CreateTask {
            task_id: TaskId::new(task_id)?,
            owner: UserRef::parse("dana")?,
            title: TaskTitle::parse("Read my own write")?,
            description: None,
            due_date: None,
            priority: Some(Priority::Medium),
            tags: Tags::parse(["demo"])?,
            reminder_config: None,
            recurrence: None,
            parent_task_id: None,
            occurrence: 1,
        }),
        &ctx,
    )?;
    let written = store
        .append(
            AppendBatch::new(Metadata::new(tenant, "demo-auditor", "user")).stream(
                StreamId::new(task_id.to_string())?,
                Task::STREAM_TYPE,
                ExpectedVersion::NoStream,
                events
                    .iter()
                    .map(|e| NewEvent::new(e.event_type(), e.schema_version(), e.to_payload()))
                    .collect(),
            ),
        )
        .await?;
    let position = written.last_position().0;
    let got = TaskQueriesClient::new(channel.clone())
        .get_task(auth(
            &token,
            pb::GetTaskRequest {
                task_id: task_id.to_string(),
                min_position: position,
            },
        ))
        .await?
        .into_inner();
    println!(
        "6. appended task {} at position {position}; GetTask(min_position) at once -> {:?} (position {})",
        short(&task_id.to_string()),
        got.task.map(|t| t.title).unwrap_or_default(),
        got.position
    );

    let mut history = HistoryQueriesClient::new(channel.clone());
    if let Some(s) = sessions.sessions.first() {
        let first = history
            .get_state_as_of(auth(
                &token,
                pb::GetStateAsOfRequest {
                    stream_id: s.session_id.clone(),
                    as_of: Some(pb::get_state_as_of_request::AsOf::Version(1)),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        let now = history
            .get_state_as_of(auth(
                &token,
                pb::GetStateAsOfRequest {
                    stream_id: s.session_id.clone(),
                    as_of: Some(pb::get_state_as_of_request::AsOf::At(
                        query_api::convert::ts(chrono::Utc::now()),
                    )),
                    ..Default::default()
                },
            ))
            .await?
            .into_inner();
        let status = |j: &str| -> String {
            serde_json::from_str::<serde_json::Value>(j)
                .ok()
                .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
                .unwrap_or_default()
        };
        println!(
            "7. as-of replay of session {}: at v1 status {:?}, now (v{}) status {:?}",
            short(&s.session_id),
            status(&first.state_json),
            now.version,
            status(&now.state_json)
        );
    }
    let verified = history
        .verify_integrity(auth(
            &token,
            pb::VerifyIntegrityRequest {
                scope: Some(pb::verify_integrity_request::Scope::Range(
                    pb::PositionRange::default(),
                )),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    println!(
        "8. VerifyIntegrity over all of {tenant}'s positions: intact={} ({} events, {} streams)",
        verified.intact, verified.events_checked, verified.streams_checked
    );

    let _ = stop.send(());
    server.await??;
    shutdown.cancel();
    for r in runners {
        r.await??;
    }
    println!("== done: query server drained, projections stopped ==");
    Ok(())
}
