//! Test support shared by the integration tests of this crate and of `query-api`: commands run
//! through the real aggregates (`decide`/`evolve`) into the real store
//! ([`EventStore::append`]) under a chosen tenant, scenario builders that take a problem or an
//! agent session through its whole life, projections caught up through the real [`Runner`], and
//! row hashes of every read-model table.
//!
//! Compiled only with the `testkit` feature (see this crate's `Cargo.toml`); never part of a
//! production build.
//!
//! Every helper panics on failure (`unwrap`/`expect`) instead of returning errors: it is test
//! support, where a failed step is a failed test and a panic with its location is the most
//! useful report, hence the module-wide allowance of `clippy::unwrap_used`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::runner::CheckpointMove;
use crate::{BatchStats, Projection, Runner, RunnerOptions};
use aggregates::agent_session::{AgentSession, AgentSessionCommand, CreateSession};
use aggregates::governance::{
    FrameworkType, GovernanceDecision, GovernanceEventType, GovernedCommand, RecordDecision,
    RecordTokenCost, decide_governed,
};
use aggregates::problem::*;
use aggregates::task::{
    CreateTask, Priority, RecurrencePattern, RecurrenceRule, Tags, TaskCommand,
};
use aggregates::values::*;
use aggregates::{Aggregate, CommandContext, DomainEvent};
use chrono::{DateTime, Duration, TimeZone, Utc};
use event_store::{
    AppendBatch, AppendResult, Direction, EventStore, ExpectedVersion, Metadata, NewEvent,
    Position, RecordedEvent, StreamId,
};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// The tenant most tests write and read under.
pub const TENANT: &str = "tenant-a";
/// A second tenant, for tests of tenant isolation.
pub const OTHER: &str = "tenant-b";

/// A fixed clock: 2030-03-01T09:00:00Z (the far future keeps "due date after now" rules easy).
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 1, 9, 0, 0).unwrap()
}

/// [`t0`] plus `n` minutes.
pub fn minutes(n: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(n)
}

/// A deterministic id: the UUID whose 128 bits are `n`.
pub fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Append metadata for `actor` (a user) under `tenant`, with a fresh correlation id and fixed
/// client ip and user agent.
pub fn meta(tenant: &str, actor: &str) -> Metadata {
    let mut m = Metadata::new(tenant, actor, "user");
    m.correlation_id = Some(Uuid::now_v7());
    m.client_ip = Some("10.0.0.7".into());
    m.user_agent = Some("annals-tests/1".into());
    m
}

fn to_new<E: DomainEvent>(events: &[E]) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent::new(e.event_type(), e.schema_version(), e.to_payload()))
        .collect()
}

async fn load<A: Aggregate>(
    store: &EventStore,
    tenant: &str,
    stream: &StreamId,
) -> (A::State, u64) {
    let history = store
        .read_stream(tenant, stream, 1, Direction::Forward, 100_000)
        .await
        .unwrap();
    let state = history.iter().fold(A::State::default(), |s, e| {
        let ev = A::Event::from_stored(&e.event_type, e.schema_version, e.payload_json().unwrap())
            .unwrap();
        A::evolve(s, &ev)
    });
    (state, history.last().map_or(0, |e| e.stream_version))
}

fn expected(v: u64) -> ExpectedVersion {
    if v == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(v)
    }
}

/// Decides `cmd` on the stream's current state and appends the events under `tenant`.
pub async fn exec<A: Aggregate>(
    store: &EventStore,
    tenant: &str,
    stream: impl ToString,
    cmd: A::Command,
    now: DateTime<Utc>,
    actor: &str,
) -> AppendResult {
    let stream = StreamId::new(stream.to_string()).unwrap();
    let (state, v) = load::<A>(store, tenant, &stream).await;
    let events = A::decide(&state, cmd, &CommandContext::new(now, actor)).unwrap();
    store
        .append(AppendBatch::new(meta(tenant, actor)).stream(
            stream,
            A::STREAM_TYPE,
            expected(v),
            to_new(&events),
        ))
        .await
        .unwrap()
}

/// Decides a governed command over both streams and appends them atomically under `tenant`.
pub async fn exec_governed(
    store: &EventStore,
    tenant: &str,
    cmd: GovernedCommand,
    now: DateTime<Utc>,
    actor: &str,
) {
    let sid = StreamId::new(cmd.session_id().to_string()).unwrap();
    let did = StreamId::new(cmd.decision_id().to_string()).unwrap();
    let (session, sv) = load::<AgentSession>(store, tenant, &sid).await;
    let (decision, dv) = load::<GovernanceDecision>(store, tenant, &did).await;
    let out = decide_governed(&decision, &session, cmd, &CommandContext::new(now, actor)).unwrap();
    let mut batch = AppendBatch::new(meta(tenant, actor));
    if !out.decision.is_empty() {
        batch = batch.stream(
            did,
            GovernanceDecision::STREAM_TYPE,
            expected(dv),
            to_new(&out.decision),
        );
    }
    if !out.session.is_empty() {
        batch = batch.stream(
            sid,
            AgentSession::STREAM_TYPE,
            expected(sv),
            to_new(&out.session),
        );
    }
    store.append(batch).await.unwrap();
}

/// A [`Text`] value (panics if `s` is not valid text).
pub fn text(s: &str) -> Text {
    Text::parse("text", s).unwrap()
}

/// [`text`] of every item.
pub fn texts(items: &[&str]) -> Vec<Text> {
    items.iter().map(|s| text(s)).collect()
}

/// A [`Decimal`] parsed from `s`.
pub fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A problem taken through the whole pipeline under `tenant`, one command every 10 minutes from
/// minute `start`; `n` makes its ids distinct from other scenarios'.
/// Returns the ids used (problem, node, plan, result, recommendation, deliverable, artifact).
pub async fn problem_scenario(store: &EventStore, tenant: &str, n: u128, start: i64) -> [Uuid; 7] {
    let pid = ProblemId::new(uuid(0x1000 + n)).unwrap();
    let node = NodeId::new(uuid(0x2000 + n)).unwrap();
    let plan = PlanId::new(uuid(0x3000 + n)).unwrap();
    let result = ResultId::new(uuid(0x4000 + n)).unwrap();
    let rec = RecommendationId::new(uuid(0x5000 + n)).unwrap();
    let deliv = DeliverableId::new(uuid(0x6000 + n)).unwrap();
    let art = ArtifactId::new(uuid(0x7000 + n)).unwrap();
    let mut m = JsonObject::new();
    m.insert("source".into(), serde_json::json!("web"));
    let cmds = vec![
        ProblemCommand::SubmitProblem(SubmitProblem {
            problem_id: pid,
            raw_text: RawText::parse("Churn rose 4% in Q3").unwrap(),
            title: Some(ProblemTitle::parse("Churn up").unwrap()),
            submitter: UserRef::parse("alice").unwrap(),
            urgency: Urgency::High,
            metadata: m,
            organization_id: Some(OrganizationId::new(uuid(77)).unwrap()),
        }),
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::Framing,
        },
        ProblemCommand::DefineFrame {
            problem_id: pid,
            frame: ProblemFrame {
                goal: text("Reduce churn to 2%"),
                scope: Scope {
                    include: texts(&["EU"]),
                    exclude: texts(&["B2B"]),
                },
                kpis: vec![Kpi {
                    name: text("churn"),
                    baseline: Some(dec("0.06")),
                    target: Some(dec("0.02")),
                    window: Some(text("quarter")),
                    unit: None,
                }],
                stakeholders: texts(&["CFO"]),
                assumptions: texts(&["pricing unchanged"]),
                constraints: texts(&["no new hires"]),
                confidence: Level::Medium,
                clarifying_questions: vec![ClarifyingQuestion {
                    question: text("Which segment?"),
                    category: None,
                    required: true,
                    answer: None,
                }],
            },
        },
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::TreeGeneration,
        },
        ProblemCommand::AddTreeNode {
            problem_id: pid,
            node: TreeNode {
                node_id: node,
                parent_id: None,
                title: text("Why do customers leave?"),
                hypotheses: texts(&["price", "support"]),
                required_data: texts(&["tickets"]),
                priority_hint: Some(Level::High),
                notes: None,
            },
        },
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::Prioritizing,
        },
        ProblemCommand::PrioritizeNode {
            problem_id: pid,
            priority: NodePriority {
                node_id: node,
                impact: Impact::new(8).unwrap(),
                feasibility: Feasibility::new(7).unwrap(),
                rationale: Some(text("big and doable")),
                estimated_hours: Some(12),
                estimated_cost: Some(Money::new(dec("1500.25")).unwrap()),
                confidence: Some(Confidence::new(dec("0.8")).unwrap()),
                is_recommended: true,
            },
        },
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::Planning,
        },
        ProblemCommand::CreateAnalysisPlan {
            problem_id: pid,
            plan: AnalysisPlan {
                plan_id: plan,
                question_id: node,
                title: ProblemTitle::parse("Cohort analysis").unwrap(),
                methods: texts(&["cohort"]),
                data_requirements: vec![DataRequirement {
                    source: text("warehouse"),
                    table: Some(text("subscriptions")),
                    columns: texts(&["user_id", "ended_at"]),
                    filters: None,
                    sample_size: Some(10_000),
                }],
                estimated_hours: Some(6),
                owner: Some(UserRef::parse("bob").unwrap()),
                dependencies: vec![],
                acceptance_criteria: texts(&["p < 0.05"]),
            },
        },
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::Analyzing,
        },
        ProblemCommand::RecordAnalysisResult {
            problem_id: pid,
            result: AnalysisResult {
                result_id: result,
                plan_id: plan,
                summary: Some(text("Price-driven")),
                key_findings: texts(&["annual plans churn less"]),
                metrics: JsonObject::new(),
                confidence: Some(Confidence::new(dec("0.9")).unwrap()),
                execution_time_secs: Some(42),
                artifacts: vec![Artifact {
                    artifact_id: art,
                    artifact_type: ArtifactType::Chart,
                    file_path: FilePath::parse("s3://x/chart.png").unwrap(),
                    file_size: Some(2048),
                    mime_type: Some(MimeType::parse("image/png").unwrap()),
                    description: None,
                }],
            },
        },
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::Synthesizing,
        },
        ProblemCommand::AddRecommendation {
            problem_id: pid,
            recommendation: Recommendation {
                recommendation_id: rec,
                title: ProblemTitle::parse("Push annual plans").unwrap(),
                summary: text("Discount annual plans"),
                evidence: texts(&["cohort chart"]),
                actions: vec![],
                expected_impact: None,
                risks: vec![],
                confidence: Some(Confidence::new(dec("0.75")).unwrap()),
                priority: RecommendationPriority::new(1).unwrap(),
            },
        },
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::Presenting,
        },
        ProblemCommand::AddDeliverable {
            problem_id: pid,
            deliverable: Deliverable {
                deliverable_id: deliv,
                deliverable_type: DeliverableType::Pdf,
                file_path: FilePath::parse("s3://x/report.pdf").unwrap(),
                file_size: None,
                mime_type: None,
                expires_at: None,
            },
        },
        ProblemCommand::MarkDeliverableReady {
            problem_id: pid,
            deliverable_id: deliv,
        },
        ProblemCommand::SubmitFeedback {
            problem_id: pid,
            feedback: Feedback {
                user: UserRef::parse("carol").unwrap(),
                rating: Rating::new(5).unwrap(),
                text: Some(text("great")),
                improvement_suggestions: vec![],
                category: None,
            },
        },
        ProblemCommand::AdvanceStage {
            problem_id: pid,
            to: ProblemStage::Completed,
        },
    ];
    for (i, cmd) in cmds.into_iter().enumerate() {
        exec::<Problem>(
            store,
            tenant,
            pid,
            cmd,
            minutes(start + 10 * i as i64),
            "alice",
        )
        .await;
    }
    [
        pid.as_uuid(),
        node.as_uuid(),
        plan.as_uuid(),
        result.as_uuid(),
        rec.as_uuid(),
        deliv.as_uuid(),
        art.as_uuid(),
    ]
}

/// A `CreateTask` command for task `id` owned by `owner`: high priority, tagged `work` and `q3`,
/// due at `due`, recurring daily if `recurring`.
pub fn create_task(
    id: Uuid,
    owner: &str,
    due: Option<DateTime<Utc>>,
    recurring: bool,
) -> TaskCommand {
    TaskCommand::CreateTask(CreateTask {
        task_id: TaskId::new(id).unwrap(),
        owner: UserRef::parse(owner).unwrap(),
        title: TaskTitle::parse(format!("task {id}")).unwrap(),
        description: Some(text("desc")),
        due_date: due,
        priority: Some(Priority::High),
        tags: Tags::parse(["work", "q3"]).unwrap(),
        reminder_config: None,
        recurrence: recurring.then(|| RecurrenceRule {
            pattern: RecurrencePattern::Daily,
            interval: RecurrenceInterval::new(1).unwrap(),
        }),
        parent_task_id: None,
        occurrence: 1,
    })
}

/// `id` as a [`TaskId`].
pub fn task_id(id: Uuid) -> TaskId {
    TaskId::new(id).unwrap()
}

/// A session of `user` under `tenant` with id `id`, created at minute 0 (an `analyst`, with
/// `costs` = (estimated cost, cost limit) if given) and waiting for approval from minute 1.
pub async fn pending_session(
    store: &EventStore,
    tenant: &str,
    id: Uuid,
    user: &str,
    costs: Option<(&str, &str)>,
) -> AgentSessionId {
    let sid = AgentSessionId::new(id).unwrap();
    let money = |amount| Money::new(dec(amount)).unwrap();
    exec::<AgentSession>(
        store,
        tenant,
        sid,
        AgentSessionCommand::CreateSession(CreateSession {
            session_id: sid,
            user: UserRef::parse(user).unwrap(),
            agent_type: AgentType::parse("analyst").unwrap(),
            agent_config: JsonObject::new(),
            estimated_cost: costs.map(|(estimated, _)| money(estimated)),
            max_cost_limit: costs.map(|(_, limit)| money(limit)),
        }),
        minutes(0),
        user,
    )
    .await;
    exec::<AgentSession>(
        store,
        tenant,
        sid,
        AgentSessionCommand::RequestApproval { session_id: sid },
        minutes(1),
        user,
    )
    .await;
    sid
}

/// A session of `user` under `tenant`: created, approved by governance, started, with costs and
/// a persona; plus a rejected cost-validation decision. `n` makes its ids distinct. Returns (session, approving decision).
pub async fn session_scenario(
    store: &EventStore,
    tenant: &str,
    n: u128,
    user: &str,
) -> (Uuid, Uuid) {
    let sid = pending_session(store, tenant, uuid(0x8000 + n), user, Some(("5", "100"))).await;
    let approve = GovernanceDecisionId::new(uuid(0x9000 + n)).unwrap();
    let reject = GovernanceDecisionId::new(uuid(0xa000 + n)).unwrap();
    exec_governed(
        store,
        tenant,
        GovernedCommand::RecordDecision(RecordDecision {
            decision_id: approve,
            session_id: sid,
            event_type: GovernanceEventType::PreAgentSpawn,
            framework_type: FrameworkType::parse(FrameworkType::SARAH_THREE_QUESTIONS).unwrap(),
            approved: true,
            reason: None,
            validation_context: JsonObject::new(),
            decision_details: JsonObject::new(),
            fallback_triggered: false,
            correlation_id: Some(uuid(0xc0ffee)),
        }),
        minutes(2),
        "governor",
    )
    .await;
    exec::<AgentSession>(
        store,
        tenant,
        sid,
        AgentSessionCommand::StartSession { session_id: sid },
        minutes(3),
        user,
    )
    .await;
    exec::<AgentSession>(
        store,
        tenant,
        sid,
        AgentSessionCommand::ActivatePersona {
            session_id: sid,
            persona_id: PersonaId::parse("sarah").unwrap(),
            trigger: text("kickoff"),
        },
        minutes(4),
        user,
    )
    .await;
    for (i, amount) in ["1.1000", "2.2000", "0.0001"].iter().enumerate() {
        exec_governed(
            store,
            tenant,
            GovernedCommand::RecordTokenCost(RecordTokenCost {
                session_id: sid,
                amount: Money::new(dec(amount)).unwrap(),
                tokens: Some(1000),
            }),
            minutes(5 + i as i64),
            user,
        )
        .await;
    }
    exec_governed(
        store,
        tenant,
        GovernedCommand::RecordDecision(RecordDecision {
            decision_id: reject,
            session_id: sid,
            event_type: GovernanceEventType::CostValidation,
            framework_type: FrameworkType::parse(FrameworkType::ALEX_3AM_TEST).unwrap(),
            approved: false,
            reason: Some(text("too expensive")),
            validation_context: JsonObject::new(),
            decision_details: JsonObject::new(),
            fallback_triggered: true,
            correlation_id: None,
        }),
        minutes(10),
        "governor",
    )
    .await;
    (sid.as_uuid(), approve.as_uuid())
}

/// Catches `projection` up with the store through the runner (store mode, with checkpoint).
pub async fn catch_up(
    store: &EventStore,
    projection: Arc<dyn Projection>,
    batch: u32,
) -> BatchStats {
    let runner = Runner::new(
        store.clone(),
        projection.clone(),
        RunnerOptions {
            retry_backoff: std::time::Duration::from_millis(1),
            ..RunnerOptions::default()
        },
    );
    let types: Option<Vec<String>> = projection
        .stream_types()
        .map(|t| t.iter().map(|s| s.to_string()).collect());
    let mut total = BatchStats::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let from = store
            .load_checkpoint(&projection.checkpoint_name())
            .await
            .unwrap();
        let b = match &types {
            Some(t) => store.read_all_of_types(from, batch, t).await.unwrap(),
            None => store.read_all(from, batch).await.unwrap(),
        };
        if b.events.is_empty() {
            // Other tests' open transactions (xmin is cluster-wide) can hold delivery back.
            if b.held_back {
                assert!(
                    std::time::Instant::now() < deadline,
                    "held back for too long"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
            return total;
        }
        let to = b.next_after(from);
        let s = runner
            .process(&b.events, Some(CheckpointMove { expected: from, to }))
            .await
            .unwrap();
        total.applied += s.applied;
        total.duplicates += s.duplicates;
        total.dead_lettered += s.dead_lettered;
        total.parked += s.parked;
        total.gap_filled += s.gap_filled;
    }
}

/// Catches every projection of [`crate::models::all`] up with the store, 500 events a batch.
pub async fn catch_up_all(store: &EventStore) {
    for p in crate::models::all() {
        catch_up(store, p, 500).await;
    }
}

/// Every event in the store, in global order.
pub async fn all_events(store: &EventStore) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut after = Position::START;
    loop {
        let b = store.read_all(after, 5000).await.unwrap();
        if b.events.is_empty() {
            if b.held_back {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
            return out;
        }
        after = b.next_after(after);
        out.extend(b.events);
    }
}

/// Read-model tables compared between builds (plus the runner's per-stream versions).
pub const COMPARED: &[&str] = &[
    "problems",
    "problem_frames",
    "problem_tree_nodes",
    "problem_node_priorities",
    "problem_analysis_plans",
    "problem_analysis_results",
    "problem_artifacts",
    "problem_recommendations",
    "problem_deliverables",
    "problem_feedback",
    "problem_pipeline_summary",
    "tasks",
    "task_reminders",
    "task_user_summary",
    "agent_sessions",
    "agent_session_personas",
    "user_activity",
    "cost_daily",
    "governance_decisions",
    "governance_daily",
    "audit_log",
    "audit_resource_state",
    "projection_streams",
];

/// `table -> md5 of all rows` (rows as text, sorted), for every compared table.
pub async fn model_hashes(pool: &PgPool) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for table in COMPARED {
        // Table names come from the fixed list above.
        let (n, h): (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push(((*table).to_owned(), n, h));
    }
    out
}
