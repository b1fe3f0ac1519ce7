//! The command API end to end: starts the server in-process on 127.0.0.1 (a free port),
//! creates a service token, and sends real gRPC commands with a tonic client for all four
//! aggregates, including a refused start without approval, an emergency stop and a retried
//! command id; finally verifies the hash chains of every stream written. Run it with
//! `deploy/demo.sh` (which starts Postgres when needed).

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use command_api::{NewToken, Role, ServerConfig, TokenStore};
use event_store::EventStore;
use schemas::v1 as pb;
use schemas::v1::agent_session_commands_client::AgentSessionCommandsClient;
use schemas::v1::governance_commands_client::GovernanceCommandsClient;
use schemas::v1::problem_commands_client::ProblemCommandsClient;
use schemas::v1::task_commands_client::TaskCommandsClient;
use sqlx::postgres::PgPoolOptions;
use tonic::Request;
use uuid::Uuid;

/// annals command API demo.
#[derive(Debug, Parser)]
struct Args {
    /// Postgres to use; `deploy/local/postgres.sh` prints a working one.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
}

fn envelope() -> Option<pb::CommandEnvelope> {
    Some(pb::CommandEnvelope {
        command_id: Uuid::now_v7().to_string(),
        ..Default::default()
    })
}

fn show(what: &str, r: &pb::CommandResult) {
    let streams: Vec<String> = r
        .streams
        .iter()
        .map(|s| format!("{}@v{}", short(&s.stream_id), s.version))
        .collect();
    println!(
        "   ok  {what:<44} -> {} v{} at position {}{} [{}]",
        short(&r.stream_id),
        r.version,
        r.global_position,
        if r.replayed { " (replayed)" } else { "" },
        streams.join(", ")
    );
}

fn refused(what: &str, s: &tonic::Status) {
    println!("   no  {what:<44} -> {:?}: {}", s.code(), s.message());
}

/// A request carrying the bearer token.
fn auth<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// The random tail of a UUID v7 (its head is the timestamp, the same for the whole demo).
fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
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
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres")?;
    event_store::migrate(&pool).await.context("migrating")?;
    let store = EventStore::new(pool.clone());
    let tokens = TokenStore::new(pool.clone());

    println!("== annals command API demo ==");
    let (info, token) = tokens
        .create(&NewToken {
            tenant: "acme".into(),
            actor: "demo-svc".into(),
            actor_type: "service".into(),
            role: Role::Service,
            description: "deploy/demo.sh".into(),
            expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        })
        .await?;
    println!(
        "1. token {} for tenant {} actor {} role {} (stored as SHA-256 only)",
        info.token_id, info.tenant, info.actor, info.role
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (server_store, server_tokens) = (store.clone(), tokens.clone());
    let server = tokio::spawn(async move {
        let config = ServerConfig::default();
        let stopped = async {
            let _ = stopped.await;
        };
        command_api::serve(server_store, server_tokens, &config, listener, stopped).await
    });
    println!("2. gRPC server on {addr} (health + reflection: try grpcurl -plaintext {addr} list)");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut problems = ProblemCommandsClient::new(channel.clone());
    let mut tasks = TaskCommandsClient::new(channel.clone());
    let mut sessions = AgentSessionCommandsClient::new(channel.clone());
    let mut governance = GovernanceCommandsClient::new(channel.clone());

    println!("3. a problem");
    let problem_id = Uuid::now_v7().to_string();
    let r = problems
        .submit_problem(auth(
            &token,
            pb::SubmitProblemRequest {
                envelope: envelope(),
                problem_id: problem_id.clone(),
                raw_text: "Churn rose 4 points in Q3. Why, and what do we do?".into(),
                title: Some("Q3 churn".into()),
                urgency: pb::Urgency::High as i32,
                ..Default::default()
            },
        ))
        .await?;
    show("SubmitProblem", r.get_ref());
    let r = problems
        .advance_stage(auth(
            &token,
            pb::AdvanceStageRequest {
                envelope: envelope(),
                problem_id: problem_id.clone(),
                to: pb::ProblemStage::Framing as i32,
            },
        ))
        .await?;
    show("AdvanceStage -> framing", r.get_ref());
    match problems
        .advance_stage(auth(
            &token,
            pb::AdvanceStageRequest {
                envelope: envelope(),
                problem_id: problem_id.clone(),
                to: pb::ProblemStage::TreeGeneration as i32,
            },
        ))
        .await
    {
        Ok(r) => show("AdvanceStage -> tree_generation", r.get_ref()),
        Err(s) => refused("AdvanceStage -> tree_generation (no frame)", &s),
    }

    println!("4. a task");
    let task_id = Uuid::now_v7().to_string();
    let r = tasks
        .create_task(auth(
            &token,
            pb::CreateTaskRequest {
                envelope: envelope(),
                task_id: task_id.clone(),
                title: "Write the churn memo".into(),
                tags: vec!["q3".into()],
                ..Default::default()
            },
        ))
        .await?;
    show("CreateTask", r.get_ref());
    match tasks
        .create_task(auth(
            &token,
            pb::CreateTaskRequest {
                envelope: envelope(),
                task_id: Uuid::now_v7().to_string(),
                title: "x".repeat(501),
                ..Default::default()
            },
        ))
        .await
    {
        Ok(r) => show("CreateTask with a 501-character title", r.get_ref()),
        Err(s) => refused("CreateTask with a 501-character title", &s),
    }
    let r = tasks
        .complete_task(auth(
            &token,
            pb::CompleteTaskRequest {
                envelope: envelope(),
                task_id: task_id.clone(),
            },
        ))
        .await?;
    show("CompleteTask", r.get_ref());

    println!("5. an agent session under governance");
    let session_id = Uuid::now_v7().to_string();
    let r = sessions
        .create_session(auth(
            &token,
            pb::CreateSessionRequest {
                envelope: envelope(),
                session_id: session_id.clone(),
                agent_type: "research".into(),
                max_cost_limit: Some("25.00".into()),
                ..Default::default()
            },
        ))
        .await?;
    show("CreateSession (max cost 25.00)", r.get_ref());
    let start = || pb::StartSessionRequest {
        envelope: envelope(),
        session_id: session_id.clone(),
    };
    match sessions.start_session(auth(&token, start())).await {
        Ok(r) => show("StartSession without approval", r.get_ref()),
        Err(s) => refused("StartSession without approval", &s),
    }
    let r = governance
        .record_decision(auth(
            &token,
            pb::RecordDecisionRequest {
                envelope: envelope(),
                decision_id: Uuid::now_v7().to_string(),
                session_id: session_id.clone(),
                event_type: pb::GovernanceEventType::PreAgentSpawn as i32,
                framework_type: "sarah_three_questions".into(),
                approved: true,
                ..Default::default()
            },
        ))
        .await?;
    show("RecordDecision pre_agent_spawn approved", r.get_ref());
    let r = sessions.start_session(auth(&token, start())).await?;
    show("StartSession", r.get_ref());
    let r = sessions
        .record_token_cost(auth(
            &token,
            pb::RecordTokenCostRequest {
                envelope: envelope(),
                session_id: session_id.clone(),
                amount: "3.75".into(),
                tokens: Some(15_000),
            },
        ))
        .await?;
    show("RecordTokenCost 3.75", r.get_ref());
    let stop_request = pb::EmergencyStopRequest {
        envelope: envelope(),
        decision_id: Uuid::now_v7().to_string(),
        session_id: session_id.clone(),
        reason: "runaway tool calls".into(),
        ..Default::default()
    };
    let first = governance
        .emergency_stop(auth(&token, stop_request.clone()))
        .await?;
    show("EmergencyStop", first.get_ref());

    println!("6. the same command id again (a client retry after a lost answer)");
    let before = store.head_position().await?;
    let again = governance
        .emergency_stop(auth(&token, stop_request))
        .await?;
    show("EmergencyStop (retried)", again.get_ref());
    println!(
        "   same positions: {}, events appended by the retry: {}",
        again.get_ref().events == first.get_ref().events,
        if store.head_position().await? == before {
            0
        } else {
            1
        }
    );
    match sessions.start_session(auth(&token, start())).await {
        Ok(r) => show("StartSession after the emergency stop", r.get_ref()),
        Err(s) => refused("StartSession after the emergency stop", &s),
    }

    println!("7. hash chains");
    for (name, id) in [
        ("problem", &problem_id),
        ("task", &task_id),
        ("agent session", &session_id),
    ] {
        let report = store
            .verify_stream(&info.tenant, &event_store::StreamId::new(id.clone())?)
            .await?;
        println!(
            "   {name:<14} {}: {} ({} events)",
            short(id),
            if report.is_intact() {
                "intact"
            } else {
                "TAMPERED"
            },
            report.events_checked
        );
    }
    let all = store.verify_all().await?;
    println!(
        "   whole store: {} streams, {} events, {}",
        all.streams_checked,
        all.events_checked,
        if all.is_intact() {
            "intact"
        } else {
            "TAMPERED"
        }
    );

    let _ = stop.send(());
    server.await??;
    tokens.revoke(info.token_id).await?;
    println!("== done: server drained and stopped, demo token revoked ==");
    Ok(())
}
