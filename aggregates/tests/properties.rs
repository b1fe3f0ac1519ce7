//! Property tests: random command sequences keep every aggregate's invariants, and the events
//! they produce replay to the same state and survive the stored-payload round trip.

// Helpers and strategies here are test code too, but sit outside `#[test]` functions, where
// clippy.toml's allow-unwrap-in-tests does not reach.
#![allow(clippy::unwrap_used)]

use aggregates::agent_session::{
    AgentSession, AgentSessionCommand, AgentSessionEvent, AgentSessionStatus, CreateSession,
};
use aggregates::governance::{
    FrameworkType, GovernanceDecision, GovernanceEvent, GovernanceEventType, GovernedCommand,
    RecordDecision, RecordTokenCost, decide_governed,
};
use aggregates::problem::{
    Deliverable, DeliverableType, Problem, ProblemCommand, ProblemFrame, ProblemStage, Scope,
    SubmitProblem, TreeNode, Urgency,
};
use aggregates::task::{
    CreateTask, DeliveryMethod, Priority, RecurrencePattern, RecurrenceRule, ReminderTarget,
    ScheduleReminder, Tags, Task, TaskCommand, TaskStatus, UpdateTask,
};
use aggregates::values::*;
use aggregates::{Aggregate, CommandContext, DomainEvent, recurring};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn ctx(minutes: i64) -> CommandContext {
    CommandContext::new(t0() + Duration::minutes(minutes), "prop")
}

fn assert_roundtrip<E: DomainEvent + PartialEq + std::fmt::Debug>(e: &E) {
    let back = E::from_stored(e.event_type(), e.schema_version(), e.to_payload())
        .expect("stored payload parses");
    assert_eq!(&back, e);
    assert!(E::EVENT_TYPES.contains(&(e.event_type(), e.schema_version())));
}

/// Applies `cmds` in order (rejected ones change nothing), checking the round trip of every
/// produced event, and returns the final state and the whole history.
fn run<A: Aggregate>(cmds: Vec<(A::Command, i64)>) -> (A::State, Vec<A::Event>)
where
    A::Event: PartialEq + std::fmt::Debug,
{
    let mut state = A::State::default();
    let mut history = Vec::new();
    for (cmd, minute) in cmds {
        if let Ok(events) = A::decide(&state, cmd, &ctx(minute)) {
            for e in events {
                assert_roundtrip(&e);
                state = A::evolve(state, &e);
                history.push(e);
            }
        }
    }
    (state, history)
}

// ---------------------------------------------------------------- task

fn task_id() -> TaskId {
    TaskId::new(Uuid::from_u128(1)).unwrap()
}

fn task_cmd() -> impl Strategy<Value = TaskCommand> {
    let id = task_id();
    prop_oneof![
        (0i64..3000, any::<bool>(), 0usize..4, 1u32..4).prop_map(
            move |(due, recurring, ntags, interval)| {
                TaskCommand::CreateTask(CreateTask {
                    task_id: id,
                    owner: UserRef::parse("u").unwrap(),
                    title: TaskTitle::parse("t").unwrap(),
                    description: None,
                    due_date: Some(t0() + Duration::minutes(due)),
                    priority: Some(Priority::Medium),
                    tags: Tags::parse((0..ntags).map(|i| format!("tag{i}"))).unwrap(),
                    reminder_config: None,
                    recurrence: recurring.then(|| RecurrenceRule {
                        pattern: RecurrencePattern::Daily,
                        interval: RecurrenceInterval::new(interval).unwrap(),
                    }),
                    parent_task_id: None,
                    occurrence: 1,
                })
            }
        ),
        (0i64..3000).prop_map(move |due| {
            let mut u = UpdateTask::new(id);
            u.due_date = Patch::Set(t0() + Duration::minutes(due));
            u.priority = Patch::Clear;
            TaskCommand::UpdateTask(u)
        }),
        Just(TaskCommand::CompleteTask { task_id: id }),
        Just(TaskCommand::DeleteTask { task_id: id }),
        Just(TaskCommand::RestoreTask { task_id: id }),
        (1u128..3, 0i64..3000).prop_map(move |(r, at)| {
            TaskCommand::ScheduleReminder(ScheduleReminder {
                task_id: id,
                reminder_id: ReminderId::new(Uuid::from_u128(r)).unwrap(),
                trigger_time: t0() + Duration::minutes(at),
                target: ReminderTarget::new(DeliveryMethod::Push, "token").unwrap(),
            })
        }),
        (1u128..3).prop_map(move |r| TaskCommand::RecordReminderSent {
            task_id: id,
            reminder_id: ReminderId::new(Uuid::from_u128(r)).unwrap(),
        }),
        (1u128..3).prop_map(move |r| TaskCommand::RecordReminderFailure {
            task_id: id,
            reminder_id: ReminderId::new(Uuid::from_u128(r)).unwrap(),
            error: Text::parse("error", "down").unwrap(),
        }),
        (1u128..3).prop_map(move |r| TaskCommand::RetryReminder {
            task_id: id,
            reminder_id: ReminderId::new(Uuid::from_u128(r)).unwrap(),
        }),
    ]
}

proptest! {
    #[test]
    fn task_sequences_keep_invariants(cmds in prop::collection::vec((task_cmd(), 0i64..2000), 0..40)) {
        let (state, history) = run::<Task>(cmds);
        prop_assert_eq!(Task::replay(&history), state.clone());
        if let Some(t) = &state {
            prop_assert!(TaskStatus::ALL.contains(&t.status));
            prop_assert!(t.tags.as_slice().len() <= 10);
            prop_assert_eq!(t.completed_at.is_some(), t.status == TaskStatus::Completed);
            if let Some(r) = &t.reminder {
                prop_assert!(r.retry_count <= aggregates::task::MAX_REMINDER_RETRIES);
            }
        }
        // The process manager is deterministic and yields one create per recurring completion.
        for e in &history {
            prop_assert_eq!(recurring::on_task_event(e), recurring::on_task_event(e));
            if let aggregates::task::TaskEvent::Completed(c) = e {
                prop_assert_eq!(recurring::on_task_event(e).is_some(), c.recurring.is_some());
            }
        }
    }
}

// ---------------------------------------------------------------- agent session + governance

#[derive(Debug, Clone)]
enum SessionStep {
    Session(AgentSessionCommand),
    Governed(GovernedCommand),
}

fn session_id() -> AgentSessionId {
    AgentSessionId::new(Uuid::from_u128(7)).unwrap()
}

fn session_step() -> impl Strategy<Value = SessionStep> {
    let id = session_id();
    let event_type = prop::sample::select(GovernanceEventType::ALL.to_vec());
    prop_oneof![
        prop::option::of(1i64..500).prop_map(move |limit| {
            SessionStep::Session(AgentSessionCommand::CreateSession(CreateSession {
                session_id: id,
                user: UserRef::parse("u").unwrap(),
                agent_type: AgentType::parse("coder").unwrap(),
                agent_config: JsonObject::new(),
                estimated_cost: None,
                max_cost_limit: limit.map(|l| Money::new(Decimal::new(l, 2)).unwrap()),
            }))
        }),
        Just(SessionStep::Session(AgentSessionCommand::RequestApproval {
            session_id: id
        })),
        Just(SessionStep::Session(AgentSessionCommand::StartSession {
            session_id: id
        })),
        Just(SessionStep::Session(AgentSessionCommand::CompleteSession {
            session_id: id
        })),
        Just(SessionStep::Session(AgentSessionCommand::CancelSession {
            session_id: id,
            reason: Text::parse("reason", "x").unwrap()
        })),
        (0u8..2).prop_map(
            move |p| SessionStep::Session(AgentSessionCommand::ActivatePersona {
                session_id: id,
                persona_id: PersonaId::parse(format!("p{p}")).unwrap(),
                trigger: Text::parse("trigger", "x").unwrap(),
            })
        ),
        (0u8..2).prop_map(
            move |p| SessionStep::Session(AgentSessionCommand::DeactivatePersona {
                session_id: id,
                persona_id: PersonaId::parse(format!("p{p}")).unwrap(),
            })
        ),
        (1u128..20, event_type, any::<bool>()).prop_map(move |(d, t, approved)| {
            SessionStep::Governed(GovernedCommand::RecordDecision(RecordDecision {
                decision_id: GovernanceDecisionId::new(Uuid::from_u128(100 + d)).unwrap(),
                session_id: id,
                event_type: t,
                framework_type: FrameworkType::parse("consensus").unwrap(),
                approved,
                reason: (!approved).then(|| Text::parse("reason", "no").unwrap()),
                validation_context: JsonObject::new(),
                decision_details: JsonObject::new(),
                fallback_triggered: false,
                correlation_id: None,
            }))
        }),
        (0i64..200).prop_map(
            move |c| SessionStep::Governed(GovernedCommand::RecordTokenCost(RecordTokenCost {
                session_id: id,
                amount: Money::new(Decimal::new(c, 2)).unwrap(),
                tokens: None,
            }))
        ),
    ]
}

proptest! {
    #[test]
    fn session_sequences_keep_invariants(steps in prop::collection::vec(session_step(), 0..60)) {
        let mut session = None;
        let mut history: Vec<AgentSessionEvent> = Vec::new();
        let mut decisions: BTreeMap<GovernanceDecisionId, Vec<GovernanceEvent>> = BTreeMap::new();
        for (i, step) in steps.into_iter().enumerate() {
            let c = ctx(i as i64);
            let (session_events, decision_events) = match step {
                SessionStep::Session(cmd) => match AgentSession::decide(&session, cmd, &c) {
                    Ok(ev) => (ev, vec![]),
                    Err(_) => continue,
                },
                SessionStep::Governed(cmd) => {
                    let did = cmd.decision_id();
                    let dstate = GovernanceDecision::replay(decisions.get(&did).into_iter().flatten());
                    match decide_governed(&dstate, &session, cmd, &c) {
                        Ok(out) => {
                            let ids: Vec<_> = out.decision.iter().map(|GovernanceEvent::Recorded(r)| r.decision_id).collect();
                            prop_assert!(ids.iter().all(|x| *x == did), "decision events go to the named stream");
                            (out.session, out.decision)
                        }
                        Err(_) => continue,
                    }
                }
            };
            for e in &decision_events {
                assert_roundtrip(e);
                let GovernanceEvent::Recorded(r) = e;
                prop_assert!(r.approved || r.reason.is_some(), "a rejection has a reason");
                decisions.entry(r.decision_id).or_default().push(e.clone());
            }
            for e in session_events {
                assert_roundtrip(&e);
                if let AgentSessionEvent::Started(_) = e {
                    let s = session.as_ref().expect("started after creation");
                    prop_assert!(!s.run_approvals.is_empty(), "running without approval");
                    // The approval is a real, approved spawn/consensus decision on its stream.
                    let licensed = s.run_approvals.iter().any(|d| {
                        matches!(
                            GovernanceDecision::replay(decisions.get(d).into_iter().flatten()),
                            Some(r) if r.approved && r.event_type.licenses_run()
                        )
                    });
                    prop_assert!(licensed, "the approval is a recorded licensing decision");
                }
                session = AgentSession::evolve(session, &e);
                history.push(e);
            }
        }
        prop_assert_eq!(AgentSession::replay(&history), session.clone());
        for evs in decisions.values() {
            prop_assert_eq!(evs.len(), 1, "a decision is recorded once");
        }
        if let Some(s) = session {
            let sum = history.iter().fold(Money::ZERO, |acc, e| match e {
                AgentSessionEvent::CostRecorded(c) => acc.plus(c.amount),
                _ => acc,
            });
            prop_assert_eq!(s.token_cost, sum);
            if s.status == AgentSessionStatus::Running {
                prop_assert!(!s.run_approvals.is_empty());
            }
            if let Some(limit) = s.max_cost_limit {
                // Passing the limit always leaves the session blocked (or already ended).
                if s.token_cost > limit {
                    prop_assert!(s.status == AgentSessionStatus::Blocked || s.status.is_terminal());
                }
            }
        }
    }
}

// ---------------------------------------------------------------- problem

fn problem_id() -> ProblemId {
    ProblemId::new(Uuid::from_u128(3)).unwrap()
}

fn problem_cmd() -> impl Strategy<Value = ProblemCommand> {
    let id = problem_id();
    let stage = prop::sample::select(ProblemStage::ALL.to_vec());
    let text = |s: &str| Text::parse("text", s).unwrap();
    prop_oneof![
        Just(ProblemCommand::SubmitProblem(SubmitProblem {
            problem_id: id,
            raw_text: RawText::parse("raw").unwrap(),
            title: None,
            submitter: UserRef::parse("s").unwrap(),
            urgency: Urgency::Low,
            metadata: JsonObject::new(),
            organization_id: None,
        })),
        stage.prop_map(move |to| ProblemCommand::AdvanceStage { problem_id: id, to }),
        Just(ProblemCommand::DefineFrame {
            problem_id: id,
            frame: ProblemFrame {
                goal: text("goal"),
                scope: Scope::default(),
                kpis: vec![],
                stakeholders: vec![],
                assumptions: vec![],
                constraints: vec![],
                confidence: Level::Low,
                clarifying_questions: vec![],
            },
        }),
        (1u128..5, prop::option::of(1u128..5)).prop_map(move |(n, parent)| {
            ProblemCommand::AddTreeNode {
                problem_id: id,
                node: TreeNode {
                    node_id: NodeId::new(Uuid::from_u128(n)).unwrap(),
                    parent_id: parent.map(|p| NodeId::new(Uuid::from_u128(p)).unwrap()),
                    title: text("n"),
                    hypotheses: vec![],
                    required_data: vec![],
                    priority_hint: None,
                    notes: None,
                },
            }
        }),
        Just(ProblemCommand::AddDeliverable {
            problem_id: id,
            deliverable: Deliverable {
                deliverable_id: DeliverableId::new(Uuid::from_u128(1)).unwrap(),
                deliverable_type: DeliverableType::Pdf,
                file_path: FilePath::parse("f").unwrap(),
                file_size: None,
                mime_type: None,
                expires_at: None,
            },
        }),
        Just(ProblemCommand::CancelProblem {
            problem_id: id,
            reason: text("r")
        }),
    ]
}

proptest! {
    #[test]
    fn problem_sequences_keep_invariants(cmds in prop::collection::vec((problem_cmd(), 0i64..100), 0..40)) {
        let (state, history) = run::<Problem>(cmds);
        prop_assert_eq!(Problem::replay(&history), state.clone());
        let mut rank = 0usize;
        for e in &history {
            if let aggregates::problem::ProblemEvent::StageAdvanced(a) = e {
                prop_assert_eq!(a.from.next(), Some(a.to), "stages advance one at a time");
                let r = ProblemStage::ALL.iter().position(|s| *s == a.to).unwrap();
                prop_assert!(r > rank);
                rank = r;
            }
        }
        if let Some(p) = state {
            for (id, info) in &p.nodes {
                match info.parent_id {
                    None => prop_assert_eq!(info.level, 0),
                    Some(parent) => {
                        let pl = p.nodes.get(&parent).map(|x| x.level);
                        prop_assert_eq!(pl.map(|l| l + 1), Some(info.level), "node {} level", id);
                    }
                }
            }
        }
    }
}
