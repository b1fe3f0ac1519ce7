//! The command API over real gRPC: a server on 127.0.0.1 (port 0) over a fresh, migrated
//! Postgres database per test, and real tonic clients (plus a Python grpcio client and the
//! binary itself).
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use command_api::{NewToken, Role, ServerConfig, TokenStore};
use event_store::{EventStore, StreamId};
use schemas::v1 as pb;
use schemas::v1::agent_session_commands_client::AgentSessionCommandsClient;
use schemas::v1::governance_commands_client::GovernanceCommandsClient;
use schemas::v1::problem_commands_client::ProblemCommandsClient;
use schemas::v1::task_commands_client::TaskCommandsClient;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness

struct Api {
    addr: SocketAddr,
    channel: Channel,
    pool: PgPool,
    token: String,
    tokens: TokenStore,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Api {
    async fn start(pool: PgPool) -> Api {
        Self::start_with(pool, ServerConfig::default()).await
    }

    async fn start_with(pool: PgPool, config: ServerConfig) -> Api {
        let tokens = TokenStore::new(pool.clone());
        let token = make_token(&tokens, "acme", "billing-svc", Role::Service).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let store = EventStore::new(pool.clone());
        let server_tokens = tokens.clone();
        let server = tokio::spawn(async move {
            command_api::serve(store, server_tokens, &config, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Api {
            addr,
            channel,
            pool,
            token,
            tokens,
            stop: Some(stop),
            server,
        }
    }

    fn problems(&self) -> ProblemCommandsClient<Channel> {
        ProblemCommandsClient::new(self.channel.clone())
    }
    fn tasks(&self) -> TaskCommandsClient<Channel> {
        TaskCommandsClient::new(self.channel.clone()).max_encoding_message_size(64 * 1024 * 1024)
    }
    fn sessions(&self) -> AgentSessionCommandsClient<Channel> {
        AgentSessionCommandsClient::new(self.channel.clone())
    }
    fn governance(&self) -> GovernanceCommandsClient<Channel> {
        GovernanceCommandsClient::new(self.channel.clone())
    }

    /// A request carrying this harness's service token.
    fn req<T>(&self, msg: T) -> Request<T> {
        with_token(&self.token, msg)
    }

    async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .expect("server drains and stops within 10 s")
            .unwrap();
    }
}

async fn make_token(tokens: &TokenStore, tenant: &str, actor: &str, role: Role) -> String {
    tokens
        .create(&NewToken {
            tenant: tenant.into(),
            actor: actor.into(),
            actor_type: "service".into(),
            role,
            description: "test".into(),
            expires_at: None,
        })
        .await
        .unwrap()
        .1
}

fn with_token<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn env() -> Option<pb::CommandEnvelope> {
    Some(pb::CommandEnvelope {
        command_id: Uuid::now_v7().to_string(),
        ..Default::default()
    })
}

fn env_at(expected_version: u64) -> Option<pb::CommandEnvelope> {
    Some(pb::CommandEnvelope {
        command_id: Uuid::now_v7().to_string(),
        expected_version: Some(expected_version),
        ..Default::default()
    })
}

fn id() -> String {
    Uuid::now_v7().to_string()
}

fn future(days: i64) -> Option<prost_types::Timestamp> {
    let t = chrono::Utc::now() + chrono::Duration::days(days);
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    let status = r.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    status
}

/// The message of a call that must succeed (the status is in the panic message if it did not).
#[track_caller]
fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> T {
    r.unwrap().into_inner()
}

fn task_req(task_id: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        envelope: env(),
        task_id: task_id.into(),
        title: "Write the quarterly report".into(),
        description: Some("numbers and prose".into()),
        due_date: future(7),
        priority: pb::TaskPriority::High as i32,
        tags: vec!["finance".into()],
        ..Default::default()
    }
}

fn session_req(session_id: &str, limit: Option<&str>) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        envelope: env(),
        session_id: session_id.into(),
        agent_type: "research".into(),
        max_cost_limit: limit.map(str::to_owned),
        ..Default::default()
    }
}

fn decision(
    session_id: &str,
    event_type: pb::GovernanceEventType,
    approved: bool,
) -> pb::RecordDecisionRequest {
    pb::RecordDecisionRequest {
        envelope: env(),
        decision_id: id(),
        session_id: session_id.into(),
        event_type: event_type as i32,
        framework_type: "sarah_three_questions".into(),
        approved,
        reason: (!approved).then(|| "too risky".to_owned()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Happy paths

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn problem_pipeline_end_to_end(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut c = api.problems();
    let p = id();
    let r = ok(c
        .submit_problem(api.req(pb::SubmitProblemRequest {
            envelope: env(),
            problem_id: p.clone(),
            raw_text: "Churn rose 4 points in Q3; why?".into(),
            title: Some("Q3 churn".into()),
            urgency: pb::Urgency::High as i32,
            ..Default::default()
        }))
        .await);
    assert_eq!((r.stream_id.as_str(), r.version), (p.as_str(), 1));
    assert_eq!(r.event_ids.len(), 1);
    assert!(r.global_position > 0);

    let advance = |to: pb::ProblemStage| pb::AdvanceStageRequest {
        envelope: env(),
        problem_id: p.clone(),
        to: to as i32,
    };
    c.advance_stage(api.req(advance(pb::ProblemStage::Framing)))
        .await
        .unwrap();
    c.define_frame(api.req(pb::DefineFrameRequest {
        envelope: env(),
        problem_id: p.clone(),
        frame: Some(pb::ProblemFrame {
            goal: "Bring churn back under 5%".into(),
            scope: Some(pb::Scope {
                include: vec!["EU".into()],
                exclude: vec![],
            }),
            kpis: vec![pb::Kpi {
                name: "monthly churn".into(),
                baseline: Some("0.09".into()),
                target: Some("0.05".into()),
                ..Default::default()
            }],
            confidence: pb::Level::Medium as i32,
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.advance_stage(api.req(advance(pb::ProblemStage::TreeGeneration)))
        .await
        .unwrap();
    let node = id();
    c.add_tree_node(api.req(pb::AddTreeNodeRequest {
        envelope: env(),
        problem_id: p.clone(),
        node: Some(pb::TreeNode {
            node_id: node.clone(),
            title: "Is it pricing?".into(),
            hypotheses: vec!["the price rise".into()],
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.advance_stage(api.req(advance(pb::ProblemStage::Prioritizing)))
        .await
        .unwrap();
    c.prioritize_node(api.req(pb::PrioritizeNodeRequest {
        envelope: env(),
        problem_id: p.clone(),
        priority: Some(pb::NodePriority {
            node_id: node.clone(),
            impact: 8,
            feasibility: 6,
            confidence: Some("0.7".into()),
            estimated_cost: Some("1200.50".into()),
            is_recommended: true,
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.advance_stage(api.req(advance(pb::ProblemStage::Planning)))
        .await
        .unwrap();
    let plan = id();
    c.create_analysis_plan(api.req(pb::CreateAnalysisPlanRequest {
        envelope: env(),
        problem_id: p.clone(),
        plan: Some(pb::AnalysisPlan {
            plan_id: plan.clone(),
            question_id: node.clone(),
            title: "Cohort analysis".into(),
            methods: vec!["cohort".into()],
            data_requirements: vec![pb::DataRequirement {
                source: "warehouse".into(),
                columns: vec!["customer_id".into()],
                ..Default::default()
            }],
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.advance_stage(api.req(advance(pb::ProblemStage::Analyzing)))
        .await
        .unwrap();
    c.record_analysis_result(api.req(pb::RecordAnalysisResultRequest {
        envelope: env(),
        problem_id: p.clone(),
        result: Some(pb::AnalysisResult {
            result_id: id(),
            plan_id: plan.clone(),
            summary: Some("pricing explains 3 of 4 points".into()),
            key_findings: vec!["price".into()],
            artifacts: vec![pb::Artifact {
                artifact_id: id(),
                artifact_type: pb::ArtifactType::Chart as i32,
                file_path: "s3://bucket/chart.png".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.advance_stage(api.req(advance(pb::ProblemStage::Synthesizing)))
        .await
        .unwrap();
    c.add_recommendation(api.req(pb::AddRecommendationRequest {
        envelope: env(),
        problem_id: p.clone(),
        recommendation: Some(pb::Recommendation {
            recommendation_id: id(),
            title: "Roll back the price rise in the EU".into(),
            summary: "It pays for itself".into(),
            actions: vec![pb::RecommendationAction {
                step: "announce".into(),
                due_date: future(30),
                ..Default::default()
            }],
            risks: vec![pb::Risk {
                risk: "margin".into(),
                probability: pb::Level::Low as i32,
                impact: pb::Level::Medium as i32,
                ..Default::default()
            }],
            priority: 1,
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    c.advance_stage(api.req(advance(pb::ProblemStage::Presenting)))
        .await
        .unwrap();
    let (ready, failed) = (id(), id());
    for d in [&ready, &failed] {
        c.add_deliverable(api.req(pb::AddDeliverableRequest {
            envelope: env(),
            problem_id: p.clone(),
            deliverable: Some(pb::Deliverable {
                deliverable_id: d.clone(),
                deliverable_type: pb::DeliverableType::Pdf as i32,
                file_path: format!("s3://bucket/{d}.pdf"),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    }
    c.mark_deliverable_ready(api.req(pb::MarkDeliverableReadyRequest {
        envelope: env(),
        problem_id: p.clone(),
        deliverable_id: ready,
    }))
    .await
    .unwrap();
    c.mark_deliverable_failed(api.req(pb::MarkDeliverableFailedRequest {
        envelope: env(),
        problem_id: p.clone(),
        deliverable_id: failed,
        reason: "renderer crashed".into(),
    }))
    .await
    .unwrap();
    c.submit_feedback(api.req(pb::SubmitFeedbackRequest {
        envelope: env(),
        problem_id: p.clone(),
        feedback: Some(pb::Feedback {
            rating: 5,
            text: Some("clear".into()),
            ..Default::default()
        }),
    }))
    .await
    .unwrap();
    let done = ok(c
        .advance_stage(api.req(advance(pb::ProblemStage::Completed)))
        .await);
    assert_eq!(done.version, 20);

    // Fail and cancel, each on its own problem.
    for cancel in [false, true] {
        let q = id();
        c.submit_problem(api.req(pb::SubmitProblemRequest {
            envelope: env(),
            problem_id: q.clone(),
            raw_text: "another".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        let r = if cancel {
            c.cancel_problem(api.req(pb::CancelProblemRequest {
                envelope: env(),
                problem_id: q.clone(),
                reason: "no longer relevant".into(),
            }))
            .await
        } else {
            c.fail_problem(api.req(pb::FailProblemRequest {
                envelope: env(),
                problem_id: q.clone(),
                reason: "data unavailable".into(),
            }))
            .await
        };
        assert_eq!(ok(r).version, 2);
    }

    // The stored metadata carries who, from where, and why.
    let store = EventStore::new(api.pool.clone());
    let events = store
        .read_stream(
            "acme",
            &StreamId::new(p.clone()).unwrap(),
            1,
            event_store::Direction::Forward,
            100,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 20);
    assert_eq!(events[0].stream_type, "problem");
    assert_eq!(events[0].tenant_id, "acme");
    let meta = events[0].metadata().unwrap();
    assert_eq!(meta.actor, "billing-svc");
    assert_eq!(meta.actor_type, "service");
    assert!(meta.command_id.is_some());
    assert_eq!(meta.correlation_id, meta.command_id);
    assert_eq!(meta.client_ip.as_deref(), Some("127.0.0.1"));
    assert!(meta.user_agent.unwrap().contains("tonic"));
    assert_eq!(
        events[0].payload_json().unwrap()["problem"]["submitter"],
        "billing-svc"
    );
    api.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn task_lifecycle_and_reminders(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut c = api.tasks();
    let t = id();
    let created = ok(c.create_task(api.req(task_req(&t))).await);
    assert_eq!(created.version, 1);

    c.update_task(api.req(pb::UpdateTaskRequest {
        envelope: env(),
        task_id: t.clone(),
        title: Some("Write the Q3 report".into()),
        clear_description: true,
        tags: Some(pb::TagList {
            tags: vec!["finance".into(), "q3".into()],
        }),
        recurrence: Some(pb::RecurrenceRule {
            pattern: pb::RecurrencePattern::Weekly as i32,
            interval: 1,
        }),
        ..Default::default()
    }))
    .await
    .unwrap();

    let reminder = id();
    c.schedule_reminder(api.req(pb::ScheduleReminderRequest {
        envelope: env(),
        task_id: t.clone(),
        reminder_id: reminder.clone(),
        trigger_time: future(1),
        delivery_method: pb::DeliveryMethod::Email as i32,
        destination: "alice@example.com".into(),
    }))
    .await
    .unwrap();
    // One failure is retried; three more make the reminder `failed`; then a manual retry.
    for _ in 0..4 {
        c.record_reminder_failure(api.req(pb::RecordReminderFailureRequest {
            envelope: env(),
            task_id: t.clone(),
            reminder_id: reminder.clone(),
            error: "smtp timeout".into(),
        }))
        .await
        .unwrap();
    }
    c.retry_reminder(api.req(pb::RetryReminderRequest {
        envelope: env(),
        task_id: t.clone(),
        reminder_id: reminder.clone(),
    }))
    .await
    .unwrap();
    c.record_reminder_sent(api.req(pb::RecordReminderSentRequest {
        envelope: env(),
        task_id: t.clone(),
        reminder_id: reminder.clone(),
    }))
    .await
    .unwrap();
    c.complete_task(api.req(pb::CompleteTaskRequest {
        envelope: env(),
        task_id: t.clone(),
    }))
    .await
    .unwrap();
    c.restore_task(api.req(pb::RestoreTaskRequest {
        envelope: env(),
        task_id: t.clone(),
    }))
    .await
    .unwrap();
    c.delete_task(api.req(pb::DeleteTaskRequest {
        envelope: env(),
        task_id: t.clone(),
    }))
    .await
    .unwrap();
    let restored = ok(c
        .restore_task(api.req(pb::RestoreTaskRequest {
            envelope: env(),
            task_id: t.clone(),
        }))
        .await);
    assert_eq!(restored.version, 13);
    assert_eq!(api.event_count().await, 13);
    api.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn agent_session_lifecycle(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut s = api.sessions();
    let mut g = api.governance();
    let sid = id();
    s.create_session(api.req(session_req(&sid, Some("10.00"))))
        .await
        .unwrap();
    s.request_approval(api.req(pb::RequestApprovalRequest {
        envelope: env(),
        session_id: sid.clone(),
    }))
    .await
    .unwrap();
    g.record_decision(api.req(decision(&sid, pb::GovernanceEventType::PreAgentSpawn, true)))
        .await
        .unwrap();
    s.activate_persona(api.req(pb::ActivatePersonaRequest {
        envelope: env(),
        session_id: sid.clone(),
        persona_id: "sarah".into(),
        trigger: "kickoff".into(),
    }))
    .await
    .unwrap();
    s.start_session(api.req(pb::StartSessionRequest {
        envelope: env(),
        session_id: sid.clone(),
    }))
    .await
    .unwrap();
    s.deactivate_persona(api.req(pb::DeactivatePersonaRequest {
        envelope: env(),
        session_id: sid.clone(),
        persona_id: "sarah".into(),
    }))
    .await
    .unwrap();
    let cost = ok(s
        .record_token_cost(api.req(pb::RecordTokenCostRequest {
            envelope: env(),
            session_id: sid.clone(),
            amount: "2.5".into(),
            tokens: Some(1200),
        }))
        .await);
    assert_eq!(cost.stream_id, sid);
    assert_eq!(
        cost.streams.len(),
        1,
        "below the limit only the session changes"
    );
    s.complete_session(api.req(pb::CompleteSessionRequest {
        envelope: env(),
        session_id: sid.clone(),
    }))
    .await
    .unwrap();

    for cancel in [false, true] {
        let other = id();
        s.create_session(api.req(session_req(&other, None)))
            .await
            .unwrap();
        let r = if cancel {
            s.cancel_session(api.req(pb::CancelSessionRequest {
                envelope: env(),
                session_id: other,
                reason: "not needed".into(),
            }))
            .await
        } else {
            s.fail_session(api.req(pb::FailSessionRequest {
                envelope: env(),
                session_id: other,
                error: "model unavailable".into(),
            }))
            .await
        };
        assert_eq!(ok(r).version, 2);
    }
    api.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_session_runs_only_with_an_approval_and_an_emergency_stop_halts_it(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut s = api.sessions();
    let mut g = api.governance();
    let sid = id();
    s.create_session(api.req(session_req(&sid, None)))
        .await
        .unwrap();
    let start = || pb::StartSessionRequest {
        envelope: env(),
        session_id: sid.clone(),
    };
    let refused = expect_code(
        s.start_session(api.req(start())).await,
        Code::FailedPrecondition,
    );
    assert!(refused.metadata().get("annals-error-code").is_some());

    let before = api.event_count().await;
    let approved = ok(g
        .record_decision(api.req(decision(&sid, pb::GovernanceEventType::PreAgentSpawn, true)))
        .await);
    // Decision and session were appended together.
    assert_eq!(approved.streams.len(), 2);
    assert!(approved.streams.iter().any(|v| v.stream_id == sid));
    assert_eq!(approved.version, 1, "the decision stream is new");
    assert_eq!(
        api.event_count().await,
        before + approved.events.len() as i64
    );

    let running = ok(s.start_session(api.req(start())).await);
    assert!(running.version > 1);
    let stop = ok(g
        .emergency_stop(api.req(pb::EmergencyStopRequest {
            envelope: env(),
            decision_id: id(),
            session_id: sid.clone(),
            reason: "runaway tool calls".into(),
            ..Default::default()
        }))
        .await);
    assert_eq!(stop.streams.len(), 2);
    // Halted: no more cost, no restart.
    expect_code(
        s.record_token_cost(api.req(pb::RecordTokenCostRequest {
            envelope: env(),
            session_id: sid.clone(),
            amount: "1".into(),
            tokens: None,
        }))
        .await,
        Code::FailedPrecondition,
    );
    expect_code(
        s.start_session(api.req(start())).await,
        Code::FailedPrecondition,
    );
    api.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn passing_the_cost_limit_blocks_the_session_atomically(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut s = api.sessions();
    let sid = id();
    s.create_session(api.req(session_req(&sid, Some("5"))))
        .await
        .unwrap();
    api.governance()
        .record_decision(api.req(decision(
            &sid,
            pb::GovernanceEventType::ConsensusCheck,
            true,
        )))
        .await
        .unwrap();
    s.start_session(api.req(pb::StartSessionRequest {
        envelope: env(),
        session_id: sid.clone(),
    }))
    .await
    .unwrap();
    let tripped = ok(s
        .record_token_cost(api.req(pb::RecordTokenCostRequest {
            envelope: env(),
            session_id: sid.clone(),
            amount: "6".into(),
            tokens: None,
        }))
        .await);
    assert_eq!(
        tripped.streams.len(),
        2,
        "circuit-breaker decision + session"
    );
    let breaker: String = sqlx::query_scalar(
        "SELECT payload->>'event_type' FROM events WHERE stream_type = 'governance_decision' \
         ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(breaker, "circuit_breaker");
    expect_code(
        s.complete_session(api.req(pb::CompleteSessionRequest {
            envelope: env(),
            session_id: sid,
        }))
        .await,
        Code::FailedPrecondition,
    );
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Idempotency

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_retried_command_id_returns_the_same_answer_and_appends_nothing(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut c = api.tasks();
    let t = id();
    let create = task_req(&t);
    let first = ok(c.create_task(api.req(create.clone())).await);
    assert!(!first.replayed);
    let count = api.event_count().await;

    // A create retried: decide alone would now say ALREADY_EXISTS.
    let again = ok(c.create_task(api.req(create.clone())).await);
    assert!(again.replayed);
    assert_eq!(again.version, first.version);
    assert_eq!(again.global_position, first.global_position);
    assert_eq!(again.event_ids, first.event_ids);
    assert_eq!(again.events, first.events);
    assert_eq!(api.event_count().await, count);

    // A non-create retried after the stream moved on: still the original answer.
    let complete = pb::CompleteTaskRequest {
        envelope: env(),
        task_id: t.clone(),
    };
    let done = ok(c.complete_task(api.req(complete.clone())).await);
    let count = api.event_count().await;
    let done_again = ok(c.complete_task(api.req(complete)).await);
    assert!(done_again.replayed);
    assert_eq!(done_again.global_position, done.global_position);
    assert_eq!(api.event_count().await, count);

    // Governed commands too (two streams).
    let mut s = api.sessions();
    let sid = id();
    s.create_session(api.req(session_req(&sid, None)))
        .await
        .unwrap();
    let d = decision(&sid, pb::GovernanceEventType::PreAgentSpawn, true);
    let one = ok(api.governance().record_decision(api.req(d.clone())).await);
    let count = api.event_count().await;
    let two = ok(api.governance().record_decision(api.req(d)).await);
    assert!(two.replayed);
    assert_eq!((two.stream_id, two.streams), (one.stream_id, one.streams));
    assert_eq!(api.event_count().await, count);

    // The same id for a different request is refused, and writes nothing.
    let mut other = task_req(&id());
    other.envelope = create.envelope.clone();
    let refused = expect_code(c.create_task(api.req(other)).await, Code::AlreadyExists);
    assert!(refused.message().contains("command_id"), "{refused:?}");
    assert_eq!(api.event_count().await, count);
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Every error code from a real request

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn each_error_code_from_a_real_request(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut c = api.tasks();
    let t = id();

    // UNAUTHENTICATED: no token, unknown token, revoked token.
    expect_code(
        c.create_task(Request::new(task_req(&t))).await,
        Code::Unauthenticated,
    );
    expect_code(
        c.create_task(with_token("annals_deadbeef", task_req(&t)))
            .await,
        Code::Unauthenticated,
    );
    let revoked = make_token(&api.tokens, "acme", "old-svc", Role::Service).await;
    let id_of_revoked = api
        .tokens
        .list(Some("acme"))
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.actor == "old-svc")
        .unwrap()
        .token_id;
    assert!(api.tokens.revoke(id_of_revoked).await.unwrap());
    expect_code(
        c.create_task(with_token(&revoked, task_req(&t))).await,
        Code::Unauthenticated,
    );

    // PERMISSION_DENIED: reading roles may not write.
    for role in [Role::Viewer, Role::Analyst, Role::Auditor] {
        let token = make_token(&api.tokens, "acme", "reader", role).await;
        expect_code(
            c.create_task(with_token(&token, task_req(&t))).await,
            Code::PermissionDenied,
        );
    }
    let admin = make_token(&api.tokens, "acme", "root", Role::Admin).await;

    // INVALID_ARGUMENT: field-level messages.
    let mut bad = task_req(&t);
    bad.task_id = "not-a-uuid".into();
    let s = expect_code(c.create_task(api.req(bad)).await, Code::InvalidArgument);
    assert_eq!(s.message(), "task.task_id: must be a UUID");
    let mut bad = task_req(&t);
    bad.envelope = None;
    let s = expect_code(c.create_task(api.req(bad)).await, Code::InvalidArgument);
    assert_eq!(s.message(), "envelope: is required");
    let mut bad = task_req(&t);
    bad.due_date = future(-1);
    let s = expect_code(c.create_task(api.req(bad)).await, Code::InvalidArgument);
    assert!(s.message().starts_with("task.due_date:"), "{s:?}");
    assert_eq!(api.event_count().await, 0, "nothing written by refusals");

    // An admin may write.
    let created = ok(c.create_task(with_token(&admin, task_req(&t))).await);

    // ALREADY_EXISTS: a second create of the same id under a new command id.
    expect_code(
        c.create_task(api.req(task_req(&t))).await,
        Code::AlreadyExists,
    );

    // NOT_FOUND: an unknown task.
    expect_code(
        c.complete_task(api.req(pb::CompleteTaskRequest {
            envelope: env(),
            task_id: id(),
        }))
        .await,
        Code::NotFound,
    );

    // ABORTED: a stale expected version names the current one.
    let s = expect_code(
        c.complete_task(api.req(pb::CompleteTaskRequest {
            envelope: env_at(created.version + 5),
            task_id: t.clone(),
        }))
        .await,
        Code::Aborted,
    );
    assert!(s.message().contains("current version is 1"), "{s:?}");
    // The right expected version is accepted.
    c.complete_task(api.req(pb::CompleteTaskRequest {
        envelope: env_at(created.version),
        task_id: t.clone(),
    }))
    .await
    .unwrap();

    // FAILED_PRECONDITION: completing a completed task.
    let s = expect_code(
        c.complete_task(api.req(pb::CompleteTaskRequest {
            envelope: env(),
            task_id: t.clone(),
        }))
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        s.metadata().get("annals-error-code").unwrap(),
        "task.not_active"
    );
    api.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn concurrent_writers_conflict_with_aborted_never_a_partial_write(pool: PgPool) {
    let api = Api::start(pool).await;
    let t = id();
    api.tasks()
        .create_task(api.req(task_req(&t)))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..8 {
        let mut c = api.tasks();
        let req = api.req(pb::UpdateTaskRequest {
            envelope: env_at(1),
            task_id: t.clone(),
            title: Some(format!("title {i}")),
            ..Default::default()
        });
        handles.push(tokio::spawn(async move { c.update_task(req).await }));
    }
    let mut won = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => won += 1,
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one writer at version 1 wins");
    assert_eq!(api.event_count().await, 2);
    api.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn one_aggregate_id_and_command_id_in_two_tenants_are_two_independent_things(pool: PgPool) {
    let api = Api::start(pool).await;
    let store = EventStore::new(api.pool.clone());
    let t = id();
    let command = Uuid::now_v7().to_string();
    let mut create = task_req(&t);
    create.envelope.as_mut().unwrap().command_id = command.clone();
    let acme = ok(api.tasks().create_task(api.req(create.clone())).await);
    assert_eq!((acme.version, acme.replayed), (1, false));

    // globex: the same task id and the same command id are free. The create succeeds as globex's
    // own task; it is not a replay of acme's command.
    let globex = make_token(&api.tokens, "globex", "billing-svc", Role::Service).await;
    let theirs = ok(api
        .tasks()
        .create_task(with_token(&globex, create.clone()))
        .await);
    assert_eq!((theirs.version, theirs.replayed), (1, false));
    assert_ne!(theirs.event_ids, acme.event_ids);
    // Its retry is a replay of globex's command, not acme's.
    let again = ok(api
        .tasks()
        .create_task(with_token(&globex, create.clone()))
        .await);
    assert!(again.replayed);
    assert_eq!(again.event_ids, theirs.event_ids);

    // Each tenant's commands act on its own task only.
    let done = ok(api
        .tasks()
        .complete_task(with_token(
            &globex,
            pb::CompleteTaskRequest {
                envelope: env(),
                task_id: t.clone(),
            },
        ))
        .await);
    assert_eq!(done.version, 2);
    let renamed = ok(api
        .tasks()
        .update_task(api.req(pb::UpdateTaskRequest {
            envelope: env(),
            task_id: t.clone(),
            title: Some("acme's own title".into()),
            ..Default::default()
        }))
        .await);
    assert_eq!(
        renamed.version, 2,
        "acme's task was not completed by globex"
    );
    let stream = StreamId::new(t.clone()).unwrap();
    for (tenant, types) in [
        ("acme", ["task.created", "task.updated"]),
        ("globex", ["task.created", "task.completed"]),
    ] {
        let events = store
            .read_stream(tenant, &stream, 1, event_store::Direction::Forward, 10)
            .await
            .unwrap();
        assert!(events.iter().all(|e| e.tenant_id == tenant));
        let got: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(got, types, "{tenant}");
        assert!(
            store
                .verify_stream(tenant, &stream)
                .await
                .unwrap()
                .is_intact(),
            "{tenant}"
        );
    }
    // A tenant that has no such task is told it does not exist.
    let initech = make_token(&api.tokens, "initech", "billing-svc", Role::Service).await;
    let s = expect_code(
        api.tasks()
            .complete_task(with_token(
                &initech,
                pb::CompleteTaskRequest {
                    envelope: env(),
                    task_id: t.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );
    assert_eq!(s.message(), format!("task {t} does not exist"));
    assert_eq!(api.event_count().await, 4);
    api.stop().await;
}

/// A command's answer with what the server generates blanked out (event ids, positions,
/// recording time), encoded: equal bytes mean an equal answer.
fn answer_bytes(r: &Result<tonic::Response<pb::CommandResult>, tonic::Status>) -> Vec<u8> {
    use prost::Message;
    match r {
        Ok(r) => {
            let mut r = r.get_ref().clone();
            r.global_position = 0;
            r.event_ids.clear();
            r.recorded_at = None;
            for e in &mut r.events {
                e.event_id.clear();
                e.global_position = 0;
            }
            [b"ok:".as_slice(), &r.encode_to_vec()].concat()
        }
        Err(s) => {
            let code = s.metadata().get("annals-error-code").map(|v| v.as_bytes());
            format!("{:?}|{}|{:?}", s.code(), s.message(), code).into_bytes()
        }
    }
}

/// One tenant's conversation about task `t`, with fixed command ids: each answer, comparable.
async fn conversation(api: &Api, token: &str, t: &str, commands: &[String; 4]) -> Vec<Vec<u8>> {
    let complete = |command: &str| pb::CompleteTaskRequest {
        envelope: Some(pb::CommandEnvelope {
            command_id: command.to_owned(),
            ..Default::default()
        }),
        task_id: t.to_owned(),
    };
    let mut create = task_req(t);
    create.due_date = Some(prost_types::Timestamp {
        seconds: 4_102_444_800, // 2100-01-01: the same request in every conversation
        nanos: 0,
    });
    create.envelope.as_mut().unwrap().command_id = commands[1].clone();
    let mut again = create.clone();
    again.envelope.as_mut().unwrap().command_id = commands[2].clone();
    let mut tasks = api.tasks();
    vec![
        // A command on the id before the tenant has it.
        answer_bytes(
            &tasks
                .complete_task(with_token(token, complete(&commands[0])))
                .await,
        ),
        // The create, its retry, a second create of the id under a new command id.
        answer_bytes(&tasks.create_task(with_token(token, create.clone())).await),
        answer_bytes(&tasks.create_task(with_token(token, create.clone())).await),
        answer_bytes(&tasks.create_task(with_token(token, again)).await),
        // The create's command id reused for another request.
        answer_bytes(
            &tasks
                .complete_task(with_token(token, complete(&commands[1])))
                .await,
        ),
        // And a command that works.
        answer_bytes(
            &tasks
                .complete_task(with_token(token, complete(&commands[3])))
                .await,
        ),
    ]
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn no_answer_depends_on_another_tenants_ids(pool: PgPool) {
    let api = Api::start(pool).await;
    let t = id();
    let commands: [String; 4] = std::array::from_fn(|_| Uuid::now_v7().to_string());
    let before = make_token(&api.tokens, "initech", "billing-svc", Role::Service).await;
    let after = make_token(&api.tokens, "umbrella", "billing-svc", Role::Service).await;

    // initech talks about task t while no tenant has it.
    let alone = conversation(&api, &before, &t, &commands).await;
    // acme then holds task t, created under the very command ids the others use.
    for (i, command) in commands.iter().enumerate() {
        let mut create = task_req(&t);
        create.envelope.as_mut().unwrap().command_id = command.clone();
        let r = api.tasks().create_task(api.req(create)).await;
        if i == 0 {
            r.unwrap();
        }
    }
    // umbrella's conversation is the same, answer by answer, byte for byte.
    let beside = conversation(&api, &after, &t, &commands).await;
    assert_eq!(alone.len(), beside.len());
    for (n, (a, b)) in alone.iter().zip(&beside).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b),
            "answer {n} differs"
        );
    }
    // The conversation covered every kind of answer a foreign id used to change.
    let codes: Vec<String> = alone
        .iter()
        .map(|a| {
            String::from_utf8_lossy(a)
                .split('|')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(codes[0].starts_with("NotFound"), "{codes:?}");
    assert!(codes[1].starts_with("ok:"), "{codes:?}");
    assert!(codes[3].starts_with("AlreadyExists"), "{codes:?}");
    assert!(codes[4].starts_with("AlreadyExists"), "{codes:?}");
    assert!(codes[5].starts_with("ok:"), "{codes:?}");
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Limits

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn oversized_requests_and_overlong_titles_write_nothing(pool: PgPool) {
    let config = ServerConfig {
        max_request_bytes: 16 * 1024,
        ..ServerConfig::default()
    };
    let api = Api::start_with(pool, config).await;
    let mut c = api.tasks();
    let t = id();
    c.create_task(api.req(task_req(&t))).await.unwrap();
    let before = api.event_count().await;

    let mut huge = task_req(&id());
    huge.description = Some("x".repeat(20 * 1024));
    let s = expect_code(c.create_task(api.req(huge)).await, Code::ResourceExhausted);
    assert_eq!(s.message(), "request: is larger than the 16384-byte limit");

    let mut long = task_req(&id());
    long.title = "é".repeat(501);
    let s = expect_code(c.create_task(api.req(long)).await, Code::InvalidArgument);
    assert_eq!(
        s.message(),
        "task.title: must have at most 500 characters (got 501)"
    );

    let mut tags = task_req(&id());
    tags.tags = (0..11).map(|i| format!("t{i}")).collect();
    let s = expect_code(c.create_task(api.req(tags)).await, Code::InvalidArgument);
    assert!(s.message().starts_with("task.tags:"), "{s:?}");

    let update = pb::UpdateTaskRequest {
        envelope: env(),
        task_id: t.clone(),
        title: Some("y".repeat(501)),
        ..Default::default()
    };
    expect_code(c.update_task(api.req(update)).await, Code::InvalidArgument);

    assert_eq!(api.event_count().await, before, "the store is unchanged");
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Operations: health, reflection from a foreign client, metrics, the binary

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn health_reports_every_service(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    for service in [
        "",
        "annals.v1.ProblemCommands",
        "annals.v1.TaskCommands",
        "annals.v1.AgentSessionCommands",
        "annals.v1.GovernanceCommands",
    ] {
        let r = ok(health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await);
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }
    api.stop().await;
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn reflection_v1_lists_the_command_services(pool: PgPool) {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let api = Api::start(pool).await;
    let mut client = ServerReflectionClient::new(api.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ok(client
        .server_reflection_info(tokio_stream::iter([request]))
        .await);
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "annals.v1.ProblemCommands",
        "annals.v1.TaskCommands",
        "annals.v1.AgentSessionCommands",
        "annals.v1.GovernanceCommands",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not in {names:?}"
        );
    }
    api.stop().await;
}

/// The Python interpreter with grpcio: `ANNALS_PYTHON`, else the venv `deploy/test.sh` builds.
fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ANNALS_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "no Python with grpcio: run deploy/test.sh (it creates target/pyenv) or set ANNALS_PYTHON"
    );
    venv
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn a_python_grpcio_client_uses_reflection_and_sends_a_command(pool: PgPool) {
    let api = Api::start(pool).await;
    let t = id();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/reflection_client.py"
    );
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script)
        .arg(api.addr.to_string())
        .arg(&api.token)
        .arg(&t)
        .arg(Uuid::now_v7().to_string());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in [
        "annals.v1.ProblemCommands",
        "annals.v1.TaskCommands",
        "annals.v1.AgentSessionCommands",
        "annals.v1.GovernanceCommands",
        "grpc.health.v1.Health",
    ] {
        assert!(stdout.contains(&format!("service {service}\n")), "{stdout}");
    }
    let result = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(result).unwrap();
    assert_eq!(result["streamId"], t.as_str());
    let ua: String = sqlx::query_scalar("SELECT metadata->>'user_agent' FROM events")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert!(ua.contains("grpc-python"), "{ua}");
    api.stop().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn metrics_count_commands_by_type_and_outcome(pool: PgPool) {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    command_api::telemetry::install_prometheus(metrics).unwrap();
    let api = Api::start(pool).await;
    let mut c = api.tasks();
    c.create_task(api.req(task_req(&id()))).await.unwrap();
    expect_code(
        c.create_task(Request::new(task_req(&id()))).await,
        Code::Unauthenticated,
    );
    let text = http_get(metrics, "/metrics").await;
    // Other tests may run in this process (cargo test), so counts are at least, not exactly.
    for outcome in ["ok", "unauthenticated"] {
        let series =
            format!(r#"annals_commands_total{{command="CreateTask",outcome="{outcome}"}} "#);
        assert!(text.contains(&series), "{series} missing from:\n{text}");
    }
    assert!(text.contains("annals_append_duration_seconds_bucket"));
    assert!(text.contains("annals_command_duration_seconds_bucket"));
    api.stop().await;
}

/// Kills a spawned server if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `DATABASE_URL` pointed at this test's database (sqlx::test creates one per test).
fn url_of(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{db}")
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn the_binary_manages_tokens_serves_and_stops_gracefully(pool: PgPool) {
    /// `--token-cache-secs` of the served binary: how late a revocation may take effect.
    const CACHE_SECS: u64 = 1;
    let bin = env!("CARGO_BIN_EXE_annals-command-api");
    let url = url_of(&pool);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env("DATABASE_URL", &url)
            // The test's login owns the tables (tests/roles.rs covers the refusal).
            .env("ANNALS_ALLOW_OWNER", "true")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let token = run(&[
        "token", "create", "--tenant", "acme", "--actor", "cli-svc", "--role", "service",
    ])
    .trim()
    .to_owned();
    assert!(token.starts_with("annals_"));
    let listed = run(&["token", "list", "--tenant", "acme"]);
    assert!(
        listed.contains("cli-svc") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "secrets are never listed");

    let (grpc, metrics) = (free_port(), free_port());
    let mut server = KillOnDrop(
        std::process::Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--token-cache-secs", &CACHE_SECS.to_string()])
            .env("DATABASE_URL", &url)
            .env("ANNALS_ALLOW_OWNER", "true")
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}")).unwrap();
    let mut channel = None;
    for _ in 0..100 {
        if let Ok(ch) = endpoint.connect().await {
            channel = Some(ch);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = TaskCommandsClient::new(channel.expect("the binary serves within 10 s"));
    let t = id();
    c.create_task(with_token(&token, task_req(&t)))
        .await
        .unwrap();
    assert!(
        http_get(format!("127.0.0.1:{metrics}").parse().unwrap(), "/metrics")
            .await
            .contains("annals_commands_total")
    );

    let token_id = listed
        .lines()
        .find(|l| l.contains("cli-svc"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    // Accepted right before the revocation (and so cached by the server)...
    c.create_task(with_token(&token, task_req(&id())))
        .await
        .unwrap();
    run(&["token", "revoke", &token_id]);
    // ...and refused within the cache's bound (plus margin for a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(CACHE_SECS + 3);
    loop {
        match c.create_task(with_token(&token, task_req(&id()))).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "a revoked token still works {CACHE_SECS} s after its revocation"
            ),
            Err(other) => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: drain and exit 0.
    let pid = server.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    for _ in 0..150 {
        status = server.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = status else {
        panic!("the server did not exit within 15 s of SIGTERM");
    };
    assert!(status.success(), "{status:?}");
}
