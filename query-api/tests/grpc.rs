//! The query API over real gRPC: events produced through the real aggregates and
//! `EventStore::append`, projected by the real projections runner, served by a server on
//! 127.0.0.1 (port 0) over a fresh, migrated Postgres database per test, read with real tonic
//! clients.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::time::Duration;

use aggregates::task::{Task, TaskCommand, UpdateTask};
use aggregates::values::{Patch, TaskTitle};
use aggregates::{Aggregate, DomainEvent};
use chrono::{TimeZone, Utc};
use event_store::{Direction, EventStore, MIGRATOR, StreamId};
use projections::source::StoreSource;
use projections::testkit::*;
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
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness

struct Api {
    channel: Channel,
    tokens: TokenStore,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Api {
    async fn start(pool: PgPool) -> Api {
        Self::start_with(pool, Duration::from_secs(5)).await
    }

    async fn start_with(pool: PgPool, wait: Duration) -> Api {
        let tokens = TokenStore::new(pool.clone());
        let reader = Reader::new(pool.clone(), true, wait);
        reader.probe().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_tokens = tokens.clone();
        let server = tokio::spawn(async move {
            query_api::serve(
                reader,
                server_tokens,
                &ServerConfig::default(),
                listener,
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Api {
            channel,
            tokens,
            stop: Some(stop),
            server,
        }
    }

    async fn token(&self, tenant: &str, role: Role) -> String {
        self.tokens
            .create(&NewToken {
                tenant: tenant.into(),
                actor: format!("{role}-1"),
                actor_type: "user".into(),
                role,
                description: String::new(),
                expires_at: None,
            })
            .await
            .unwrap()
            .1
    }

    fn problems(&self) -> ProblemQueriesClient<Channel> {
        ProblemQueriesClient::new(self.channel.clone())
    }
    fn tasks(&self) -> TaskQueriesClient<Channel> {
        TaskQueriesClient::new(self.channel.clone())
    }
    fn sessions(&self) -> AgentSessionQueriesClient<Channel> {
        AgentSessionQueriesClient::new(self.channel.clone())
    }
    fn governance(&self) -> GovernanceQueriesClient<Channel> {
        GovernanceQueriesClient::new(self.channel.clone())
    }
    fn summaries(&self) -> SummaryQueriesClient<Channel> {
        SummaryQueriesClient::new(self.channel.clone())
    }
    fn audit(&self) -> AuditQueriesClient<Channel> {
        AuditQueriesClient::new(self.channel.clone())
    }
    fn history(&self) -> HistoryQueriesClient<Channel> {
        HistoryQueriesClient::new(self.channel.clone())
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

fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r.set_timeout(Duration::from_secs(20));
    r
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    let status = r.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    status
}

/// The message of a call that must succeed (the status is in the panic message if it did not).
#[track_caller]
fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> T {
    r.unwrap().into_inner()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// A task created with the clock at `now`, due `due` (overdue when `due` is in the real past).
async fn task_at(
    store: &EventStore,
    tenant: &str,
    id: Uuid,
    owner: &str,
    now: chrono::DateTime<Utc>,
    due: Option<chrono::DateTime<Utc>>,
) -> i64 {
    exec::<Task>(
        store,
        tenant,
        id,
        create_task(id, owner, due, false),
        now,
        owner,
    )
    .await
    .last_position()
    .0
}

// ---------------------------------------------------------------------------------------------
// Every RPC returns what the events say

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_rpc_returns_what_the_events_say(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let [pid, node, _plan, _result, rec, _deliv, _art] =
        problem_scenario(&store, TENANT, 1, 0).await;
    let (sid, approve) = session_scenario(&store, TENANT, 1, "erin").await;
    // A session waiting for approval is live (the scenario's session ends blocked).
    let pending = pending_session(&store, TENANT, uuid(0xbb01), "finn", None)
        .await
        .as_uuid();
    let t_open = uuid(0xaa01);
    let t_overdue = uuid(0xaa02);
    task_at(&store, TENANT, t_open, "dana", t0(), Some(minutes(60 * 24))).await;
    let long_ago = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    task_at(
        &store,
        TENANT,
        t_overdue,
        "dana",
        long_ago,
        Some(long_ago + chrono::Duration::days(1)),
    )
    .await;
    let target =
        aggregates::task::ReminderTarget::new(aggregates::task::DeliveryMethod::Push, "device-1")
            .unwrap();
    let reminder = uuid(0xe1);
    exec::<Task>(
        &store,
        TENANT,
        t_overdue,
        TaskCommand::ScheduleReminder(aggregates::task::ScheduleReminder {
            task_id: task_id(t_overdue),
            reminder_id: aggregates::values::ReminderId::new(reminder).unwrap(),
            trigger_time: long_ago + chrono::Duration::hours(2),
            target,
        }),
        long_ago,
        "dana",
    )
    .await;
    catch_up_all(&store).await;

    let api = Api::start(pool.clone()).await;
    let tok = api.token(TENANT, Role::Analyst).await;

    // Problems.
    let got = ok(api
        .problems()
        .get_problem(req(
            &tok,
            pb::GetProblemRequest {
                problem_id: pid.to_string(),
                ..Default::default()
            },
        ))
        .await);
    let head = store.head_position().await.unwrap().0;
    assert_eq!(got.position, head, "caught up: reflects the whole store");
    let p = got.problem.unwrap();
    assert_eq!(p.title, "Churn up");
    assert_eq!(p.stage, "completed");
    assert_eq!(p.urgency, "high");
    assert_eq!(p.submitter, "alice");
    assert_eq!(p.version, 18);
    assert_eq!(json(&p.metadata_json)["source"], "web");
    assert_eq!(got.frame.unwrap().goal, "Reduce churn to 2%");

    let list = ok(api
        .problems()
        .list_problems(req(
            &tok,
            pb::ListProblemsRequest {
                stage: "completed".into(),
                urgency: "high".into(),
                submitter: "alice".into(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(list.problems.len(), 1);
    assert!(list.next_page_token.is_empty());
    let none = ok(api
        .problems()
        .list_problems(req(
            &tok,
            pb::ListProblemsRequest {
                stage: "framing".into(),
                ..Default::default()
            },
        ))
        .await);
    assert!(none.problems.is_empty());
    let bad = api
        .problems()
        .list_problems(req(
            &tok,
            pb::ListProblemsRequest {
                stage: "nonsense".into(),
                ..Default::default()
            },
        ))
        .await;
    let status = expect_code(bad, Code::InvalidArgument);
    assert!(status.message().starts_with("stage: unknown value"));

    let tree = ok(api
        .problems()
        .get_issue_tree(req(
            &tok,
            pb::GetIssueTreeRequest {
                problem_id: pid.to_string(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(tree.nodes.len(), 1);
    let n = &tree.nodes[0];
    assert_eq!(n.node_id, node.to_string());
    assert_eq!(n.title, "Why do customers leave?");
    let prio = n.priority.as_ref().unwrap();
    assert_eq!((prio.impact, prio.feasibility), (8, 7));
    assert_eq!(prio.estimated_cost, "1500.2500");
    assert!(prio.is_recommended);

    let recs = ok(api
        .problems()
        .list_recommendations(req(
            &tok,
            pb::ListRecommendationsRequest {
                problem_id: pid.to_string(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(recs.recommendations.len(), 1);
    assert_eq!(recs.recommendations[0].recommendation_id, rec.to_string());
    assert_eq!(recs.recommendations[0].priority, 1);
    assert_eq!(recs.recommendations[0].title, "Push annual plans");

    // Tasks.
    let t = ok(api
        .tasks()
        .get_task(req(
            &tok,
            pb::GetTaskRequest {
                task_id: t_overdue.to_string(),
                ..Default::default()
            },
        ))
        .await);
    let task = t.task.unwrap();
    assert!(task.overdue);
    assert_eq!(task.status, "active");
    assert_eq!(task.tags, vec!["work", "q3"]);
    assert_eq!(t.reminders.len(), 1);
    assert_eq!(t.reminders[0].reminder_id, reminder.to_string());
    assert_eq!(t.reminders[0].status, "pending");

    let overdue = ok(api
        .tasks()
        .list_tasks(req(
            &tok,
            pb::ListTasksRequest {
                overdue_only: true,
                ..Default::default()
            },
        ))
        .await);
    let ids: Vec<_> = overdue.tasks.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(ids, vec![t_overdue.to_string()]);
    let by_tag = ok(api
        .tasks()
        .list_tasks(req(
            &tok,
            pb::ListTasksRequest {
                owner: "dana".into(),
                tag: "q3".into(),
                status: "active".into(),
                due_from: Some(convert_ts(t0())),
                ..Default::default()
            },
        ))
        .await);
    let ids: Vec<_> = by_tag.tasks.iter().map(|t| t.task_id.clone()).collect();
    assert_eq!(ids, vec![t_open.to_string()]);

    let due = ok(api
        .tasks()
        .list_due_reminders(req(&tok, pb::ListDueRemindersRequest::default()))
        .await);
    assert_eq!(due.reminders.len(), 1);
    assert_eq!(due.reminders[0].task_id, t_overdue.to_string());

    // Sessions and governance.
    let s = ok(api
        .sessions()
        .get_session(req(
            &tok,
            pb::GetSessionRequest {
                session_id: sid.to_string(),
                ..Default::default()
            },
        ))
        .await);
    let session = s.session.unwrap();
    // The rejected cost validation blocked it.
    assert_eq!(session.status, "blocked");
    assert_eq!(session.token_cost, "3.3001");
    assert_eq!((session.approvals, session.rejections), (1, 1));
    assert_eq!(s.personas.len(), 1);
    assert_eq!(s.personas[0].persona_id, "sarah");

    let listed = ok(api
        .sessions()
        .list_sessions(req(
            &tok,
            pb::ListSessionsRequest {
                user: "erin".into(),
                status: "blocked".into(),
                agent_type: "analyst".into(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(listed.sessions.len(), 1);
    let active = ok(api
        .sessions()
        .list_active_sessions(req(&tok, pb::ListActiveSessionsRequest::default()))
        .await);
    let ids: Vec<_> = active
        .sessions
        .iter()
        .map(|s| s.session_id.clone())
        .collect();
    assert_eq!(ids, vec![pending.to_string()]);
    assert_eq!(active.sessions[0].status, "pending_approval");
    assert_eq!(active.sessions[0].approvals, 0);

    let decisions = ok(api
        .governance()
        .list_decisions(req(
            &tok,
            pb::ListDecisionsRequest {
                session_id: sid.to_string(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(decisions.decisions.len(), 2);
    let approved = ok(api
        .governance()
        .list_decisions(req(
            &tok,
            pb::ListDecisionsRequest {
                approved: Some(true),
                event_type: "pre_agent_spawn".into(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(approved.decisions.len(), 1);
    assert_eq!(approved.decisions[0].decision_id, approve.to_string());
    let rejected = ok(api
        .governance()
        .list_decisions(req(
            &tok,
            pb::ListDecisionsRequest {
                approved: Some(false),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(rejected.decisions[0].reason, "too expensive");

    // Summaries.
    let pipeline = ok(api
        .summaries()
        .get_problem_pipeline(req(&tok, pb::GetProblemPipelineRequest::default()))
        .await);
    let completed = pipeline
        .stages
        .iter()
        .find(|s| s.stage == "completed")
        .unwrap();
    assert_eq!(completed.problem_count, 1);
    assert_eq!(pipeline.stages.first().unwrap().stage, "created");
    let framing = pipeline
        .stages
        .iter()
        .find(|s| s.stage == "framing")
        .unwrap();
    assert_eq!(framing.exited_count, 1);
    assert_eq!(framing.mean_seconds_in_stage, "1200.000");

    let summaries = ok(api
        .summaries()
        .list_task_summaries(req(&tok, pb::ListTaskSummariesRequest::default()))
        .await);
    assert_eq!(summaries.summaries.len(), 1);
    let dana = &summaries.summaries[0];
    assert_eq!(
        (dana.owner.as_str(), dana.active_count, dana.overdue_count),
        ("dana", 2, 1)
    );

    let activity = ok(api
        .summaries()
        .list_user_activity(req(
            &tok,
            pb::ListUserActivityRequest {
                user: "erin".into(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(activity.users.len(), 1);
    assert_eq!(activity.users[0].total_cost, "3.3001");

    let rates = ok(api
        .summaries()
        .list_approval_rates(req(&tok, pb::ListApprovalRatesRequest::default()))
        .await);
    let total: u64 = rates.rates.iter().map(|r| r.decision_count).sum();
    let approved: u64 = rates.rates.iter().map(|r| r.approved_count).sum();
    assert_eq!((total, approved), (2, 1));

    let costs = ok(api
        .summaries()
        .list_daily_costs(req(
            &tok,
            pb::ListDailyCostsRequest {
                user: "erin".into(),
                ..Default::default()
            },
        ))
        .await);
    let cost: Vec<_> = costs.costs.iter().map(|c| c.total_cost.as_str()).collect();
    assert_eq!(cost, vec!["3.3001"]);
    assert_eq!(costs.costs[0].tokens_used, 3000);

    // Audit trail: one entry per event; by resource, actor, correlation id.
    let trail = ok(api
        .audit()
        .list_audit_trail(req(
            &tok,
            pb::ListAuditTrailRequest {
                page_size: 500,
                filter: Some(pb::AuditFilter {
                    resource_id: pid.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(trail.entries.len(), 18);
    assert_eq!(trail.entries[0].action, "problem.submitted");
    assert_eq!(trail.entries[0].actor, "alice");
    assert_eq!(trail.entries[0].client_ip, "10.0.0.7");
    let governor = ok(api
        .audit()
        .list_audit_trail(req(
            &tok,
            pb::ListAuditTrailRequest {
                filter: Some(pb::AuditFilter {
                    actor: "governor".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await);
    assert!(!governor.entries.is_empty());
    assert!(governor.entries.iter().all(|e| e.actor == "governor"));
    let correlation = governor.entries[0].correlation_id.clone();
    let correlated = ok(api
        .audit()
        .list_audit_trail(req(
            &tok,
            pb::ListAuditTrailRequest {
                filter: Some(pb::AuditFilter {
                    correlation_id: correlation.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await);
    assert!(
        correlated
            .entries
            .iter()
            .all(|e| e.correlation_id == correlation)
    );
    // Governance decisions append the decision and the session stream under one correlation.
    assert!(correlated.entries.len() >= 2);

    api.stop().await;
}

fn convert_ts(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    query_api::convert::ts(t)
}

// ---------------------------------------------------------------------------------------------
// Pagination

#[sqlx::test(migrator = "MIGRATOR")]
async fn pages_over_a_thousand_rows_return_each_row_exactly_once(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let owners = ["ann", "ben", "cat"];
    for i in 0..1000u128 {
        let owner = owners[(i % 3) as usize];
        task_at(&store, TENANT, uuid(0x10_0000 + i), owner, t0(), None).await;
    }
    catch_up_all(&store).await;
    let api = Api::start(pool.clone()).await;
    let tok = api.token(TENANT, Role::Analyst).await;

    // Page through all tasks with an odd page size; insert new tasks after the first page: the
    // original thousand are each returned exactly once, in a stable order.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = ok(api
            .tasks()
            .list_tasks(req(
                &tok,
                pb::ListTasksRequest {
                    page_size: 37,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await);
        assert!(page.tasks.len() <= 37);
        seen.extend(page.tasks.into_iter().map(|t| t.task_id));
        pages += 1;
        if pages == 1 {
            for i in 0..20u128 {
                task_at(&store, TENANT, uuid(0x20_0000 + i), "ann", t0(), None).await;
            }
            catch_up_all(&store).await;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 100, "pagination does not end");
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    for i in 0..1000u128 {
        assert!(unique.contains(&uuid(0x10_0000 + i).to_string()));
    }

    // A filter pages exactly its rows.
    let mut ben = HashSet::new();
    let mut token = String::new();
    loop {
        let page = ok(api
            .tasks()
            .list_tasks(req(
                &tok,
                pb::ListTasksRequest {
                    owner: "ben".into(),
                    page_size: 100,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await);
        for t in page.tasks {
            assert_eq!(t.owner, "ben");
            assert!(ben.insert(t.task_id));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ben.len(), 333);

    // Default 50, max 500, more refused; foreign or broken tokens refused.
    let page = ok(api
        .tasks()
        .list_tasks(req(&tok, pb::ListTasksRequest::default()))
        .await);
    assert_eq!(page.tasks.len(), 50);
    let too_big = api
        .tasks()
        .list_tasks(req(
            &tok,
            pb::ListTasksRequest {
                page_size: 501,
                ..Default::default()
            },
        ))
        .await;
    expect_code(too_big, Code::InvalidArgument);
    let foreign = api
        .problems()
        .list_problems(req(
            &tok,
            pb::ListProblemsRequest {
                page_token: page.next_page_token.clone(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(foreign, Code::InvalidArgument);
    let broken = api
        .tasks()
        .list_tasks(req(
            &tok,
            pb::ListTasksRequest {
                page_token: "!!!".into(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(broken, Code::InvalidArgument);

    // The audit trail pages (500 at a time) and the streamed export return the same entries.
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = ok(api
            .audit()
            .list_audit_trail(req(
                &tok,
                pb::ListAuditTrailRequest {
                    page_size: 500,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await);
        listed.extend(page.entries.into_iter().map(|e| e.global_position));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed.len(), 1020);
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
    let mut stream = ok(api
        .audit()
        .export_audit_trail(req(&tok, pb::ExportAuditTrailRequest::default()))
        .await);
    let mut exported = Vec::new();
    while let Some(entry) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        exported.push(entry.global_position);
    }
    assert_eq!(exported, listed);
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Read-your-writes

#[sqlx::test(migrator = "MIGRATOR")]
async fn min_position_reads_the_callers_own_write_with_live_projections(
    _opts: sqlx::pool::PoolOptions<sqlx::Postgres>,
    connect: sqlx::postgres::PgConnectOptions,
) {
    // Five runners with their listeners need more than the test pool's connections.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(30)
        .connect_with(connect)
        .await
        .unwrap();
    let store = EventStore::new(pool.clone());
    let shutdown = CancellationToken::new();
    let mut runners = Vec::new();
    for p in projections::models::all() {
        let runner = projections::Runner::new(store.clone(), p.clone(), Default::default());
        let token = shutdown.clone();
        let store = store.clone();
        runners.push(tokio::spawn(async move {
            let mut source = StoreSource::new(store, p.checkpoint_name(), p.stream_types(), 100);
            runner.run(&mut source, &token).await
        }));
    }
    let api = Api::start(pool.clone()).await;
    let tok = api.token(TENANT, Role::Viewer).await;

    for i in 0..10u128 {
        let id = uuid(0x30_0000 + i);
        let position = task_at(&store, TENANT, id, "dana", t0(), None).await;
        // Immediately: without min_position the row may be missing; with it, it is there.
        let got = ok(api
            .tasks()
            .get_task(req(
                &tok,
                pb::GetTaskRequest {
                    task_id: id.to_string(),
                    min_position: position,
                },
            ))
            .await);
        assert!(got.position >= position);
        assert_eq!(got.task.unwrap().task_id, id.to_string());
        // Another model reflects the same position although it consumes no task events.
        let pipeline = ok(api
            .summaries()
            .get_problem_pipeline(req(
                &tok,
                pb::GetProblemPipelineRequest {
                    min_position: position,
                },
            ))
            .await);
        assert!(pipeline.position >= position);
        // An update is seen too (a change, not just a new row).
        let mut update = UpdateTask::new(task_id(id));
        update.title = Some(TaskTitle::parse(format!("renamed {i}")).unwrap());
        update.description = Patch::Clear;
        let position = exec::<Task>(
            &store,
            TENANT,
            id,
            TaskCommand::UpdateTask(update),
            t0(),
            "dana",
        )
        .await
        .last_position()
        .0;
        let audit = ok(api
            .audit()
            .list_audit_trail(req(
                &tok,
                pb::ListAuditTrailRequest {
                    min_position: position,
                    filter: Some(pb::AuditFilter {
                        resource_id: id.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
            .await);
        assert_eq!(audit.entries.len(), 2);
        let got = ok(api
            .tasks()
            .get_task(req(
                &tok,
                pb::GetTaskRequest {
                    task_id: id.to_string(),
                    min_position: position,
                },
            ))
            .await);
        assert_eq!(got.task.unwrap().title, format!("renamed {i}"));
    }
    shutdown.cancel();
    for r in runners {
        tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    api.stop().await;

    // With no runner, a position that is not reached answers UNAVAILABLE after the deadline,
    // naming where the projection is.
    let api = Api::start_with(pool.clone(), Duration::from_millis(300)).await;
    let tok = api.token(TENANT, Role::Viewer).await;
    let position = task_at(&store, TENANT, uuid(0x3f_0000), "dana", t0(), None).await;
    let started = std::time::Instant::now();
    let late = api
        .tasks()
        .list_tasks(req(
            &tok,
            pb::ListTasksRequest {
                min_position: position,
                ..Default::default()
            },
        ))
        .await;
    let status = expect_code(late, Code::Unavailable);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        status.message().contains("tasks has reached position"),
        "{status:?}"
    );
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// History: as-of replay and integrity

#[sqlx::test(migrator = "MIGRATOR")]
async fn state_as_of_an_instant_equals_the_state_of_the_events_recorded_until_then(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = uuid(0x40_0000);
    task_at(&store, TENANT, id, "dana", t0(), Some(minutes(600))).await;
    for i in 0..3 {
        let mut update = UpdateTask::new(task_id(id));
        update.title = Some(TaskTitle::parse(format!("v{i}")).unwrap());
        exec::<Task>(
            &store,
            TENANT,
            id,
            TaskCommand::UpdateTask(update),
            t0(),
            "dana",
        )
        .await;
    }
    exec::<Task>(
        &store,
        TENANT,
        id,
        TaskCommand::CompleteTask {
            task_id: task_id(id),
        },
        minutes(1),
        "dana",
    )
    .await;
    let api = Api::start(pool.clone()).await;
    let auditor = api.token(TENANT, Role::Auditor).await;
    let stream = StreamId::new(id.to_string()).unwrap();
    let events = store
        .read_stream(TENANT, &stream, 1, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 5);

    // Before the first event: no aggregate yet.
    let before = ok(api
        .history()
        .get_state_as_of(req(
            &auditor,
            pb::GetStateAsOfRequest {
                stream_id: id.to_string(),
                as_of: Some(pb::get_state_as_of_request::AsOf::At(convert_ts(
                    events[0].recorded_at - chrono::Duration::microseconds(1),
                ))),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(before.state_json, "null");
    assert_eq!(before.version, 0);

    for k in 0..events.len() {
        // The state the aggregate folds from only the events recorded up to T.
        let mut state = <Task as Aggregate>::State::default();
        for e in events
            .iter()
            .filter(|e| e.recorded_at <= events[k].recorded_at)
        {
            let ev = <Task as Aggregate>::Event::from_stored(
                &e.event_type,
                e.schema_version,
                e.payload_json().unwrap(),
            )
            .unwrap();
            state = Task::evolve(state, &ev);
        }
        let expected = query_api::state::task(state.as_ref().unwrap());
        let at = ok(api
            .history()
            .get_state_as_of(req(
                &auditor,
                pb::GetStateAsOfRequest {
                    stream_id: id.to_string(),
                    as_of: Some(pb::get_state_as_of_request::AsOf::At(convert_ts(
                        events[k].recorded_at,
                    ))),
                    ..Default::default()
                },
            ))
            .await);
        assert_eq!(json(&at.state_json), expected, "as of event {k}");
        assert_eq!(at.version, events[k].stream_version);
        let by_version = ok(api
            .history()
            .get_state_as_of(req(
                &auditor,
                pb::GetStateAsOfRequest {
                    stream_id: id.to_string(),
                    as_of: Some(pb::get_state_as_of_request::AsOf::Version(
                        events[k].stream_version,
                    )),
                    ..Default::default()
                },
            ))
            .await);
        assert_eq!(by_version.state_json, at.state_json);
    }
    let last = ok(api
        .history()
        .get_state_as_of(req(
            &auditor,
            pb::GetStateAsOfRequest {
                stream_id: id.to_string(),
                as_of: Some(pb::get_state_as_of_request::AsOf::Version(99)),
                ..Default::default()
            },
        ))
        .await);
    let last = json(&last.state_json);
    assert_eq!(last["status"], "completed");
    assert_eq!(last["title"], "v2");

    // The stream's events, upcast to the current schema (task.created is v2).
    let read = ok(api
        .history()
        .read_stream(req(
            &auditor,
            pb::ReadStreamRequest {
                stream_id: id.to_string(),
                max_count: 2,
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(read.events.len(), 2);
    assert_eq!(read.next_from_version, 3);
    assert_eq!(read.events[0].event_type, "task.created");
    assert_eq!(read.events[0].schema_version, 2);
    assert_eq!(json(&read.events[0].payload_json)["tags"][0], "work");
    assert_eq!(read.events[0].hash, hex::encode(events[0].hash));

    // History is for auditors and admins.
    let analyst = api.token(TENANT, Role::Analyst).await;
    let denied = api
        .history()
        .read_stream(req(
            &analyst,
            pb::ReadStreamRequest {
                stream_id: id.to_string(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(denied, Code::PermissionDenied);
    api.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_tampered_event_is_named_and_untouched_data_verifies(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    problem_scenario(&store, TENANT, 1, 0).await;
    let (sid, _) = session_scenario(&store, TENANT, 1, "erin").await;
    let head = store.head_position().await.unwrap().0;
    let api = Api::start(pool.clone()).await;
    let auditor = api.token(TENANT, Role::Auditor).await;

    let verify = |scope| {
        let mut client = api.history();
        let auditor = auditor.clone();
        async move {
            ok(client
                .verify_integrity(req(
                    &auditor,
                    pb::VerifyIntegrityRequest {
                        scope: Some(scope),
                        ..Default::default()
                    },
                ))
                .await)
        }
    };
    let all = || {
        pb::verify_integrity_request::Scope::Range(pb::PositionRange {
            from_position: 0,
            to_position: 0,
        })
    };
    let clean = verify(all()).await;
    assert!(clean.intact);
    assert!(clean.events_checked > 20);
    let clean = verify(pb::verify_integrity_request::Scope::StreamId(
        sid.to_string(),
    ))
    .await;
    assert!(clean.intact);

    // Tamper with the session's fourth event, as a superuser who bypasses the trigger would.
    let (position, event_id): (i64, Uuid) = sqlx::query_as(
        "SELECT global_position, event_id FROM events WHERE stream_id = $1 AND stream_version = 4",
    )
    .bind(sid.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events SET payload = (payload::jsonb || '{\"tampered\": true}')::json \
          WHERE global_position = $1",
    )
    .bind(position)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    for report in [
        verify(pb::verify_integrity_request::Scope::StreamId(
            sid.to_string(),
        ))
        .await,
        verify(all()).await,
        verify(pb::verify_integrity_request::Scope::Range(
            pb::PositionRange {
                from_position: position,
                to_position: head,
            },
        ))
        .await,
    ] {
        assert!(!report.intact);
        let bad = report.first_bad.unwrap();
        assert_eq!(bad.global_position, position);
        assert_eq!(bad.event_id, event_id.to_string());
        assert_eq!(bad.stream_id, sid.to_string());
        assert_eq!(bad.kind, "hash_mismatch");
        assert_eq!(
            report.tampered.len(),
            1,
            "only the tampered stream is reported"
        );
    }
    // A range that ends before the tampered event verifies.
    let before = verify(pb::verify_integrity_request::Scope::Range(
        pb::PositionRange {
            from_position: 0,
            to_position: position - 1,
        },
    ))
    .await;
    assert!(before.intact);
    api.stop().await;
}

/// An auditor gets an inclusion proof of an own event that checks offline, none for another
/// tenant's event, and verifies the whole store against the newest signed checkpoint, which
/// catches a rewrite whose per-stream hashes were all recomputed.
#[sqlx::test(migrator = "MIGRATOR")]
async fn inclusion_proofs_and_verification_against_a_signed_checkpoint(pool: PgPool) {
    use event_store::checkpoint::generate_key;

    let store = EventStore::new(pool.clone());
    problem_scenario(&store, TENANT, 1, 0).await;
    problem_scenario(&store, OTHER, 2, 0).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Bounded: the safe position may lag while another test database holds a transaction.
    let mut sealed = 0;
    for _ in 0..1_200 {
        store.seal_all(1_000).await.unwrap();
        sealed = store.chain_head().await.unwrap().leaf_count;
        if sealed == total as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sealed, total as u64);
    let key = generate_key();
    let public = hex::encode(key.verifying_key().as_bytes());
    let cp = store.sign_checkpoint(&key).await.unwrap();
    let api = Api::start(pool.clone()).await;
    let auditor = api.token(TENANT, Role::Auditor).await;

    let (own, other): (Uuid, Uuid) = sqlx::query_as(
        "SELECT (SELECT event_id FROM events WHERE tenant_id = $1 ORDER BY global_position DESC LIMIT 1), \
                (SELECT event_id FROM events WHERE tenant_id = $2 LIMIT 1)",
    )
    .bind(TENANT)
    .bind(OTHER)
    .fetch_one(&pool)
    .await
    .unwrap();
    let proof = ok(api
        .history()
        .get_inclusion_proof(req(
            &auditor,
            pb::GetInclusionProofRequest {
                event_id: own.to_string(),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(proof.tree_size, cp.leaf_count);
    assert_eq!(
        proof.checkpoint.unwrap().root_hash,
        hex::encode(cp.root_hash)
    );
    let offline: event_store::InclusionProof = serde_json::from_str(&proof.proof_json).unwrap();
    offline.check(&key.verifying_key()).unwrap();
    assert_eq!(
        offline
            .audit_path
            .iter()
            .map(hex::encode)
            .collect::<Vec<_>>(),
        proof.audit_path
    );
    let refused = api
        .history()
        .get_inclusion_proof(req(
            &auditor,
            pb::GetInclusionProofRequest {
                event_id: other.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);

    let verify = || {
        let mut client = api.history();
        let (auditor, public) = (auditor.clone(), public.clone());
        async move {
            ok(client
                .verify_integrity(req(
                    &auditor,
                    pb::VerifyIntegrityRequest {
                        scope: Some(pb::verify_integrity_request::Scope::CheckpointPublicKey(
                            public,
                        )),
                        ..Default::default()
                    },
                ))
                .await)
        }
    };
    let clean = verify().await;
    assert!(clean.intact, "{clean:?}");
    assert_eq!(clean.events_checked, total as u64);

    // The owner rewrites the newest own event and recomputes its hash: per-stream
    // verification cannot tell, the signed checkpoint can.
    let position: i64 =
        sqlx::query_scalar("SELECT global_position FROM events WHERE event_id = $1")
            .bind(own)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER USER; \
         UPDATE events e SET payload = '{{\"rewritten\":true}}', \
                hash = annals_event_hash(coalesce((SELECT p.hash FROM events p \
                         WHERE p.stream_id = e.stream_id AND p.stream_version = e.stream_version - 1), \
                         decode(repeat('00', 32), 'hex')), \
                       e.global_position, e.event_id, e.stream_id, e.stream_type, e.stream_version, \
                       e.tenant_id, e.event_type, e.schema_version, '{{\"rewritten\":true}}', \
                       e.metadata::text, e.recorded_at) \
          WHERE global_position = {position}; \
         UPDATE streams s SET last_hash = e.hash FROM events e \
          WHERE e.global_position = {position} AND s.stream_id = e.stream_id \
            AND s.version = e.stream_version;"
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert!(store.verify_all().await.unwrap().is_intact());
    let caught = verify().await;
    assert!(!caught.intact);
    let bad = caught.first_bad.unwrap();
    assert_eq!(bad.global_position, position);
    assert_eq!(bad.event_id, own.to_string());
    assert_eq!(bad.kind, "not_as_signed");
    api.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Tenants and roles

/// Ids are scoped to the tenant (issue 14): two tenants using the very same aggregate and child
/// ids (problem, tree node, plan, result, recommendation, deliverable, artifact, session,
/// decisions, task) get two independent aggregates, projected without a dead letter, and each
/// tenant reads only its own.
#[sqlx::test(migrator = "MIGRATOR")]
async fn one_id_in_two_tenants_is_two_aggregates_in_every_read(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let ids = problem_scenario(&store, TENANT, 1, 0).await;
    assert_eq!(problem_scenario(&store, OTHER, 1, 0).await, ids);
    let (sid, _) = session_scenario(&store, TENANT, 1, "erin").await;
    assert_eq!(session_scenario(&store, OTHER, 1, "gus").await.0, sid);
    let task = uuid(0x51_0001);
    task_at(&store, TENANT, task, "dana", t0(), None).await;
    task_at(&store, OTHER, task, "olga", t0(), None).await;
    catch_up_all(&store).await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "both tenants' events project");

    let api = Api::start(pool.clone()).await;
    for (tenant, owner, user) in [(TENANT, "dana", "erin"), (OTHER, "olga", "gus")] {
        let tok = api.token(tenant, Role::Admin).await;
        let got = ok(api
            .tasks()
            .get_task(req(
                &tok,
                pb::GetTaskRequest {
                    task_id: task.to_string(),
                    ..Default::default()
                },
            ))
            .await);
        assert_eq!(got.task.unwrap().owner, owner, "{tenant}");
        let session = ok(api
            .sessions()
            .get_session(req(
                &tok,
                pb::GetSessionRequest {
                    session_id: sid.to_string(),
                    ..Default::default()
                },
            ))
            .await);
        assert_eq!(session.session.unwrap().user, user, "{tenant}");
        let problem = ok(api
            .problems()
            .get_problem(req(
                &tok,
                pb::GetProblemRequest {
                    problem_id: ids[0].to_string(),
                    ..Default::default()
                },
            ))
            .await);
        assert!(
            problem.problem.is_some() && problem.frame.is_some(),
            "{tenant}"
        );
        let tree = ok(api
            .problems()
            .get_issue_tree(req(
                &tok,
                pb::GetIssueTreeRequest {
                    problem_id: ids[0].to_string(),
                    ..Default::default()
                },
            ))
            .await);
        assert_eq!(tree.nodes.len(), 1, "{tenant}: the shared node id, once");
        let recs = ok(api
            .problems()
            .list_recommendations(req(
                &tok,
                pb::ListRecommendationsRequest {
                    problem_id: ids[0].to_string(),
                    ..Default::default()
                },
            ))
            .await);
        assert_eq!(recs.recommendations.len(), 1, "{tenant}");

        // History: the tenant's own stream of that id, its own chain.
        let own: Vec<(i64, String)> = sqlx::query_as(
            "SELECT global_position, event_id::text FROM events \
              WHERE tenant_id = $1 AND stream_id = $2 ORDER BY stream_version",
        )
        .bind(tenant)
        .bind(ids[0].to_string())
        .fetch_all(&pool)
        .await
        .unwrap();
        let history = ok(api
            .history()
            .read_stream(req(
                &tok,
                pb::ReadStreamRequest {
                    stream_id: ids[0].to_string(),
                    max_count: 500,
                    ..Default::default()
                },
            ))
            .await);
        let got: Vec<(i64, String)> = history
            .events
            .iter()
            .map(|e| (e.global_position, e.event_id.clone()))
            .collect();
        assert_eq!(got, own, "{tenant}");
        let verified = ok(api
            .history()
            .verify_integrity(req(
                &tok,
                pb::VerifyIntegrityRequest {
                    scope: Some(pb::verify_integrity_request::Scope::StreamId(
                        ids[0].to_string(),
                    )),
                    ..Default::default()
                },
            ))
            .await);
        assert!(verified.intact, "{tenant}");
        assert_eq!(verified.events_checked as usize, own.len(), "{tenant}");
        let state = ok(api
            .history()
            .get_state_as_of(req(
                &tok,
                pb::GetStateAsOfRequest {
                    stream_id: task.to_string(),
                    as_of: Some(pb::get_state_as_of_request::AsOf::Version(1)),
                    ..Default::default()
                },
            ))
            .await);
        assert!(
            state.state_json.contains(owner),
            "{tenant}: {}",
            state.state_json
        );
    }
    api.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_tenant_never_sees_another_tenants_rows(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let [pid_a, ..] = problem_scenario(&store, TENANT, 1, 0).await;
    let [pid_b, ..] = problem_scenario(&store, OTHER, 2, 0).await;
    let (sid_a, _) = session_scenario(&store, TENANT, 1, "erin").await;
    let (sid_b, _) = session_scenario(&store, OTHER, 2, "erin").await;
    task_at(&store, TENANT, uuid(0x50_0001), "dana", t0(), None).await;
    task_at(&store, OTHER, uuid(0x50_0002), "dana", t0(), None).await;
    catch_up_all(&store).await;
    let api = Api::start(pool.clone()).await;
    let a = api.token(TENANT, Role::Admin).await;

    let b_ids: HashSet<String> = [pid_b, sid_b, uuid(0x50_0002)]
        .iter()
        .map(Uuid::to_string)
        .collect();
    let problems = ok(api
        .problems()
        .list_problems(req(&a, pb::ListProblemsRequest::default()))
        .await);
    assert_eq!(problems.problems.len(), 1);
    assert_eq!(problems.problems[0].problem_id, pid_a.to_string());
    let tasks = ok(api
        .tasks()
        .list_tasks(req(&a, pb::ListTasksRequest::default()))
        .await);
    assert_eq!(tasks.tasks.len(), 1);
    let sessions = ok(api
        .sessions()
        .list_sessions(req(&a, pb::ListSessionsRequest::default()))
        .await);
    assert_eq!(sessions.sessions.len(), 1);
    assert_eq!(sessions.sessions[0].session_id, sid_a.to_string());
    let active = ok(api
        .sessions()
        .list_active_sessions(req(&a, pb::ListActiveSessionsRequest::default()))
        .await);
    assert!(
        active
            .sessions
            .iter()
            .all(|s| !b_ids.contains(&s.session_id))
    );
    let decisions = ok(api
        .governance()
        .list_decisions(req(&a, pb::ListDecisionsRequest::default()))
        .await);
    assert_eq!(decisions.decisions.len(), 2);
    assert!(
        decisions
            .decisions
            .iter()
            .all(|d| d.session_id == sid_a.to_string())
    );
    let recs = ok(api
        .problems()
        .list_recommendations(req(
            &a,
            pb::ListRecommendationsRequest {
                problem_id: pid_b.to_string(),
                ..Default::default()
            },
        ))
        .await);
    assert!(recs.recommendations.is_empty());
    let reminders = ok(api
        .tasks()
        .list_due_reminders(req(&a, pb::ListDueRemindersRequest::default()))
        .await);
    assert!(reminders.reminders.is_empty());
    let pipeline = ok(api
        .summaries()
        .get_problem_pipeline(req(&a, pb::GetProblemPipelineRequest::default()))
        .await);
    let total: u64 = pipeline.stages.iter().map(|s| s.problem_count).sum();
    assert_eq!(total, 1, "only tenant A's problem is counted");
    let summaries = ok(api
        .summaries()
        .list_task_summaries(req(&a, pb::ListTaskSummariesRequest::default()))
        .await);
    assert_eq!(summaries.summaries[0].active_count, 1);
    let activity = ok(api
        .summaries()
        .list_user_activity(req(&a, pb::ListUserActivityRequest::default()))
        .await);
    assert_eq!(activity.users[0].session_count, 1);
    let rates = ok(api
        .summaries()
        .list_approval_rates(req(&a, pb::ListApprovalRatesRequest::default()))
        .await);
    assert_eq!(rates.rates.iter().map(|r| r.decision_count).sum::<u64>(), 2);
    let costs = ok(api
        .summaries()
        .list_daily_costs(req(&a, pb::ListDailyCostsRequest::default()))
        .await);
    assert_eq!(costs.costs.len(), 1);
    assert_eq!(costs.costs[0].total_cost, "3.3001");
    let trail = ok(api
        .audit()
        .list_audit_trail(req(
            &a,
            pb::ListAuditTrailRequest {
                page_size: 500,
                ..Default::default()
            },
        ))
        .await);
    assert!(
        trail
            .entries
            .iter()
            .all(|e| !b_ids.contains(&e.resource_id))
    );
    let own_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1")
        .bind(TENANT)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(trail.entries.len() as i64, own_events);

    // Gets and history of the other tenant's ids do not exist for A.
    let r = api
        .problems()
        .get_problem(req(
            &a,
            pb::GetProblemRequest {
                problem_id: pid_b.to_string(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(r, Code::NotFound);
    let r = api
        .problems()
        .get_issue_tree(req(
            &a,
            pb::GetIssueTreeRequest {
                problem_id: pid_b.to_string(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(r, Code::NotFound);
    let r = api
        .sessions()
        .get_session(req(
            &a,
            pb::GetSessionRequest {
                session_id: sid_b.to_string(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(r, Code::NotFound);
    let r = api
        .history()
        .read_stream(req(
            &a,
            pb::ReadStreamRequest {
                stream_id: sid_b.to_string(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(r, Code::NotFound);
    let r = api
        .history()
        .get_state_as_of(req(
            &a,
            pb::GetStateAsOfRequest {
                stream_id: pid_b.to_string(),
                as_of: Some(pb::get_state_as_of_request::AsOf::Version(1)),
                ..Default::default()
            },
        ))
        .await;
    expect_code(r, Code::NotFound);
    let range = ok(api
        .history()
        .verify_integrity(req(
            &a,
            pb::VerifyIntegrityRequest {
                scope: Some(pb::verify_integrity_request::Scope::Range(
                    pb::PositionRange::default(),
                )),
                ..Default::default()
            },
        ))
        .await);
    assert_eq!(range.events_checked as i64, own_events);

    // The second wall: a statement without a tenant filter, inside a request's transaction,
    // still sees only the tenant's rows.
    let reader = Reader::new(pool.clone(), true, Duration::from_secs(1));
    let mut tx = reader.begin(TENANT).await.unwrap();
    for table in [
        "problems",
        "tasks",
        "agent_sessions",
        "governance_decisions",
        "audit_log",
    ] {
        // Table names from the fixed list above.
        let tenants: Vec<String> =
            sqlx::query_scalar(&format!("SELECT DISTINCT tenant_id FROM {table}"))
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        assert_eq!(tenants, vec![TENANT.to_owned()], "{table}");
    }
    let written = sqlx::query("DELETE FROM tasks").execute(&mut *tx).await;
    assert!(written.is_err(), "request transactions are read-only");
    drop(tx);
    api.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn viewers_see_no_personal_audit_fields_and_bad_tokens_see_nothing(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = uuid(0x60_0001);
    task_at(&store, TENANT, id, "dana", t0(), None).await;
    let mut update = UpdateTask::new(task_id(id));
    update.title = Some(TaskTitle::parse("secret title").unwrap());
    exec::<Task>(
        &store,
        TENANT,
        id,
        TaskCommand::UpdateTask(update),
        t0(),
        "dana",
    )
    .await;
    catch_up_all(&store).await;
    let api = Api::start(pool.clone()).await;
    let viewer = api.token(TENANT, Role::Viewer).await;
    let analyst = api.token(TENANT, Role::Analyst).await;

    let list = |token: String| {
        let mut client = api.audit();
        async move {
            ok(client
                .list_audit_trail(req(&token, pb::ListAuditTrailRequest::default()))
                .await)
            .entries
        }
    };
    let full = list(analyst.clone()).await;
    assert_eq!(full.len(), 2);
    assert_eq!(full[1].actor, "dana");
    assert!(full[1].changes_json.contains("secret title"));
    assert!(!full[1].redacted);
    let redacted = list(viewer.clone()).await;
    assert_eq!(redacted.len(), 2);
    for e in &redacted {
        assert!(e.redacted);
        assert!(e.actor.is_empty() && e.actor_type.is_empty());
        assert!(e.client_ip.is_empty() && e.user_agent.is_empty());
        assert!(!e.changes_json.contains("secret"));
    }
    assert_eq!(
        json(&redacted[1].changes_json)["title"],
        serde_json::json!({})
    );
    let mut stream = ok(api
        .audit()
        .export_audit_trail(req(&viewer, pb::ExportAuditTrailRequest::default()))
        .await);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        assert!(e.redacted && e.actor.is_empty());
    }
    let by_actor = api
        .audit()
        .list_audit_trail(req(
            &viewer,
            pb::ListAuditTrailRequest {
                filter: Some(pb::AuditFilter {
                    actor: "dana".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await;
    expect_code(by_actor, Code::PermissionDenied);

    let none = api
        .tasks()
        .list_tasks(Request::new(pb::ListTasksRequest::default()))
        .await;
    expect_code(none, Code::Unauthenticated);
    let wrong = api
        .tasks()
        .list_tasks(req("annals_nope", pb::ListTasksRequest::default()))
        .await;
    expect_code(wrong, Code::Unauthenticated);
    api.stop().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn health_and_reflection_serve_every_query_service(pool: PgPool) {
    let api = Api::start(pool).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    for service in [
        "",
        "annals.v1.ProblemQueries",
        "annals.v1.TaskQueries",
        "annals.v1.AgentSessionQueries",
        "annals.v1.GovernanceQueries",
        "annals.v1.SummaryQueries",
        "annals.v1.AuditQueries",
        "annals.v1.HistoryQueries",
    ] {
        let status = ok(health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await)
        .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    api.stop().await;
}

/// A codec sending message bytes as they are, for requests no generated client would build.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_edge_refuses_negative_positions_two_tokens_and_undecodable_requests(pool: PgPool) {
    // The only test of this binary that installs the recorder, and the only one sending the
    // requests counted below.
    let metrics: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    query_api::telemetry::install_prometheus(metrics).unwrap();
    let api = Api::start(pool).await;
    let token = api.token(TENANT, Role::Analyst).await;

    let s = expect_code(
        api.tasks()
            .list_tasks(req(
                &token,
                pb::ListTasksRequest {
                    min_position: -5,
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(s.message(), "min_position: must not be negative (got -5)");
    let s = expect_code(
        api.tasks()
            .get_task(req(
                &token,
                pb::GetTaskRequest {
                    min_position: -1,
                    task_id: Uuid::now_v7().to_string(),
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().starts_with("min_position:"), "{s:?}");

    let mut two = req(&token, pb::ListTasksRequest::default());
    two.metadata_mut()
        .append("authorization", format!("Bearer {token}").parse().unwrap());
    expect_code(api.tasks().list_tasks(two).await, Code::Unauthenticated);

    // GetSessionRequest.session_id (field 2) holding invalid UTF-8.
    let mut bytes = Vec::new();
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(3, &mut bytes);
    bytes.extend_from_slice(&[0xed, 0xa0, 0x80]);
    let mut grpc = tonic::client::Grpc::new(api.channel.clone());
    grpc.ready().await.unwrap();
    let s = expect_code(
        grpc.unary(
            req(&token, bytes),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/annals.v1.AgentSessionQueries/GetSession",
            ),
            RawCodec,
        )
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        s.message(),
        "request: cannot be decoded (has a string field that is not valid UTF-8)"
    );
    // Over the 64 KiB default limit.
    let mut grpc = tonic::client::Grpc::new(api.channel.clone());
    grpc.ready().await.unwrap();
    let s = expect_code(
        grpc.unary(
            req(&token, vec![0u8; 70 * 1024]),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/annals.v1.TaskQueries/ListTasks",
            ),
            RawCodec,
        )
        .await,
        Code::ResourceExhausted,
    );
    assert_eq!(s.message(), "request: is larger than the 65536-byte limit");

    let text = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    };
    // Other tests of this binary may run meanwhile: at least, not exactly (no other test sends
    // an undecodable or over-size request, so these series exist only through this one).
    for series in [
        r#"annals_queries_total{rpc="GetSession",outcome="invalid_argument"} "#,
        r#"annals_queries_total{rpc="ListTasks",outcome="resource_exhausted"} "#,
    ] {
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(
            count.is_some_and(|c| c >= 1.0),
            "{series} missing from:\n{text}"
        );
    }
    api.stop().await;
}
