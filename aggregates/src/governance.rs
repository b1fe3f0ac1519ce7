//! Governance decisions (seed 002) and the cross-aggregate commands that record them.
//!
//! A decision is its own stream (`governance_decision`, one `governance_decision.recorded`
//! event, immutable afterwards) because auditors query decisions independently of sessions.
//! But a decision is never recorded without its effect on the agent session, and a token cost
//! that passes the limit must produce the `circuit_breaker` decision and the block together.
//!
//! **Choice:** instead of a saga, such commands are decided by one pure function,
//! [`decide_governed`], that takes the states of *both* streams and returns the events for each
//! ([`GovernedEvents`]). The event store appends several streams in one transaction, so the
//! caller appends `decision` to the decision stream (expected version: no stream) and `session`
//! to the session stream (expected version: the one it loaded) atomically — either both facts
//! exist or neither. Empty lists are simply not appended. The decision stream's id is known
//! before loading: [`GovernedCommand::decision_id`].
//!
//! The [`GovernanceDecision`] aggregate therefore has no commands of its own
//! ([`GovernanceCommand`] is uninhabited); it exists for its stream type, state and `evolve`.
//!
//! | governed command | rules | decision events | session events |
//! |---|---|---|---|
//! | [`GovernedCommand::RecordDecision`] | decision is new; session exists and is not terminal; a rejection needs a reason; an approved `emergency_stop` needs a `running` session | `governance_decision.recorded` | `agent_session.governance_applied`, then: approved `pre_agent_spawn`/`consensus_check` on an `initializing`/`pending_approval` session → `agent_session.approved`; approved `emergency_stop` → `agent_session.emergency_stopped`; any other rejection of a non-blocked session → `agent_session.blocked` (a rejected `emergency_stop` request changes nothing) |
//! | [`GovernedCommand::RecordTokenCost`] | session `running`; amount > 0 | `governance_decision.recorded` (`circuit_breaker`, rejected) only when the new total passes `max_cost_limit` | `agent_session.cost_recorded` (+ `agent_session.governance_applied`, `agent_session.blocked` when passed) |
//!
//! | event type | schema version |
//! |---|---|
//! | `governance_decision.recorded` | 1 |

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::agent_session::{
    AgentSessionEvent, AgentSessionState, AgentSessionStatus, CostRecorded, GovernanceApplied,
    SessionBlocked, SessionDecisionEffect, existing, require_not_terminal, require_status,
};
use crate::error::DomainError;
use crate::event::domain_events;
use crate::values::{AgentSessionId, GovernanceDecisionId, JsonObject, Money, Text, string_enum};
use crate::{Aggregate, CommandContext};

string_enum!(
    /// What a governance decision is about (seed `event_type`).
    GovernanceEventType, "event_type", "governance.invalid_event_type" {
        /// Before an agent is spawned; an approval licenses running.
        PreAgentSpawn = "pre_agent_spawn",
        /// After an agent was spawned.
        PostAgentSpawn = "post_agent_spawn",
        /// Before a persona is activated.
        PrePersonaActivation = "pre_persona_activation",
        /// After a persona was activated.
        PostPersonaActivation = "post_persona_activation",
        /// A cost check.
        CostValidation = "cost_validation",
        /// A consensus check; an approval licenses running.
        ConsensusCheck = "consensus_check",
        /// Halt a running session.
        EmergencyStop = "emergency_stop",
        /// The cost limit was passed (recorded by the domain itself).
        CircuitBreaker = "circuit_breaker",
    }
);

impl GovernanceEventType {
    /// Whether an approval of this type allows a session to run.
    pub fn licenses_run(self) -> bool {
        matches!(
            self,
            GovernanceEventType::PreAgentSpawn | GovernanceEventType::ConsensusCheck
        )
    }
}

/// Which governance framework decided (a configurable vocabulary: lowercase snake_case token
/// of 1–50 characters; the seed's values are provided as constants).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FrameworkType(String);

impl FrameworkType {
    /// Seed value `sarah_three_questions`.
    pub const SARAH_THREE_QUESTIONS: &'static str = "sarah_three_questions";
    /// Seed value `alex_3am_test`.
    pub const ALEX_3AM_TEST: &'static str = "alex_3am_test";
    /// Seed value `consensus`.
    pub const CONSENSUS: &'static str = "consensus";
    /// Seed value `emergency` (used for circuit-breaker decisions).
    pub const EMERGENCY: &'static str = "emergency";

    /// Checks `[a-z0-9_]{1,50}` starting with a letter.
    pub fn parse(s: impl AsRef<str>) -> Result<Self, DomainError> {
        let s = s.as_ref().trim();
        let ok = (1..=50).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(DomainError::invalid(
                "governance.invalid_framework_type",
                "framework_type",
                format!(
                    "framework_type must be a snake_case token of 1 to 50 characters (got {s:?})"
                ),
            ));
        }
        Ok(FrameworkType(s.to_owned()))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FrameworkType {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        Self::parse(s)
    }
}

impl From<FrameworkType> for String {
    fn from(f: FrameworkType) -> String {
        f.0
    }
}

impl fmt::Display for FrameworkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// No standalone commands: decisions are recorded through [`decide_governed`].
#[derive(Debug, Clone, PartialEq)]
pub enum GovernanceCommand {}

domain_events! {
    /// Events of the governance-decision aggregate.
    pub enum GovernanceEvent {
        /// A decision was recorded.
        Recorded(DecisionRecorded) => "governance_decision.recorded" v 1,
    }
}

/// Payload of `governance_decision.recorded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecorded {
    /// Decision id.
    pub decision_id: GovernanceDecisionId,
    /// Session the decision is about.
    pub session_id: AgentSessionId,
    /// Kind of decision.
    pub event_type: GovernanceEventType,
    /// Deciding framework.
    pub framework_type: FrameworkType,
    /// Outcome.
    pub approved: bool,
    /// Reason; always present when rejected.
    pub reason: Option<Text>,
    /// Inputs the framework looked at.
    pub validation_context: JsonObject,
    /// The framework's detailed answer.
    pub decision_details: JsonObject,
    /// Whether a fallback path was taken.
    pub fallback_triggered: bool,
    /// Correlation id supplied by the caller.
    pub correlation_id: Option<Uuid>,
    /// `ctx.actor`.
    pub created_by: String,
    /// `ctx.now`.
    pub created_at: DateTime<Utc>,
}

/// State of a governance-decision stream: `None` until recorded, then the decision.
pub type GovernanceDecisionState = Option<DecisionRecorded>;

/// The governance-decision aggregate.
#[derive(Debug, Clone, Copy)]
pub enum GovernanceDecision {}

impl Aggregate for GovernanceDecision {
    const STREAM_TYPE: &'static str = "governance_decision";
    type State = GovernanceDecisionState;
    type Command = GovernanceCommand;
    type Event = GovernanceEvent;

    fn decide(
        _state: &GovernanceDecisionState,
        command: GovernanceCommand,
        _ctx: &CommandContext,
    ) -> Result<Vec<GovernanceEvent>, DomainError> {
        match command {}
    }

    fn evolve(state: GovernanceDecisionState, event: &GovernanceEvent) -> GovernanceDecisionState {
        match event {
            // Decisions are immutable: a second `recorded` (impossible via decide) is ignored.
            GovernanceEvent::Recorded(e) => state.or_else(|| Some(e.clone())),
        }
    }
}

/// Commands that write a governance decision and an agent session together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum GovernedCommand {
    /// Record a decision about a session and apply its effect.
    RecordDecision(RecordDecision),
    /// Add token cost to a running session, tripping the circuit breaker past the limit.
    RecordTokenCost(RecordTokenCost),
}

impl GovernedCommand {
    /// The session stream to load.
    pub fn session_id(&self) -> AgentSessionId {
        match self {
            GovernedCommand::RecordDecision(d) => d.session_id,
            GovernedCommand::RecordTokenCost(c) => c.session_id,
        }
    }

    /// The decision stream to load (it may be written by the command).
    pub fn decision_id(&self) -> GovernanceDecisionId {
        match self {
            GovernedCommand::RecordDecision(d) => d.decision_id,
            GovernedCommand::RecordTokenCost(c) => circuit_breaker_decision_id(c.session_id),
        }
    }
}

/// Payload of [`GovernedCommand::RecordDecision`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordDecision {
    /// New decision's id (client-chosen).
    pub decision_id: GovernanceDecisionId,
    /// Session the decision is about.
    pub session_id: AgentSessionId,
    /// Kind of decision.
    pub event_type: GovernanceEventType,
    /// Deciding framework.
    pub framework_type: FrameworkType,
    /// Outcome.
    pub approved: bool,
    /// Reason; required when `approved` is false.
    pub reason: Option<Text>,
    /// Inputs the framework looked at.
    pub validation_context: JsonObject,
    /// The framework's detailed answer.
    pub decision_details: JsonObject,
    /// Whether a fallback path was taken.
    pub fallback_triggered: bool,
    /// Correlation id.
    pub correlation_id: Option<Uuid>,
}

/// Payload of [`GovernedCommand::RecordTokenCost`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordTokenCost {
    /// Running session.
    pub session_id: AgentSessionId,
    /// Cost of this step (> 0).
    pub amount: Money,
    /// Tokens used, when known.
    pub tokens: Option<u64>,
}

/// Events for both streams of a governed command, to be appended in one atomic append.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GovernedEvents {
    /// For the `governance_decision` stream [`GovernedCommand::decision_id`] (may be empty).
    pub decision: Vec<GovernanceEvent>,
    /// For the `agent_session` stream [`GovernedCommand::session_id`].
    pub session: Vec<AgentSessionEvent>,
}

/// Id of the circuit-breaker decision of a session: derived, because a session is blocked
/// once the breaker trips, so there is at most one, and a retried cost command must not mint
/// a second decision.
pub fn circuit_breaker_decision_id(session: AgentSessionId) -> GovernanceDecisionId {
    GovernanceDecisionId::derived(&format!("agent_session/{session}/circuit_breaker"))
}

/// Decides a governed command against both streams' states (see the module docs).
pub fn decide_governed(
    decision: &GovernanceDecisionState,
    session: &AgentSessionState,
    command: GovernedCommand,
    ctx: &CommandContext,
) -> Result<GovernedEvents, DomainError> {
    match command {
        GovernedCommand::RecordDecision(d) => record_decision(decision, session, d, ctx),
        GovernedCommand::RecordTokenCost(c) => record_cost(decision, session, c, ctx),
    }
}

fn record_decision(
    decision: &GovernanceDecisionState,
    session: &AgentSessionState,
    d: RecordDecision,
    ctx: &CommandContext,
) -> Result<GovernedEvents, DomainError> {
    use AgentSessionStatus as S;
    use GovernanceEventType as T;
    if decision.is_some() {
        return Err(DomainError::already_exists(
            "governance.decision_already_exists",
            format!("governance decision {} already exists", d.decision_id),
        ));
    }
    let s = existing(session, d.session_id)?;
    let reason = match (&d.reason, d.approved) {
        (None, false) => {
            return Err(DomainError::invalid(
                "governance.reason_required",
                "reason",
                "a rejected decision must give a reason",
            ));
        }
        (r, _) => r.clone(),
    };
    require_not_terminal(s, "record a governance decision for")?;
    if d.approved && d.event_type == T::EmergencyStop {
        require_status(s, &[S::Running], "emergency-stop")?;
    }

    let at = ctx.now;
    let mut session_events = vec![AgentSessionEvent::GovernanceApplied(GovernanceApplied {
        session_id: s.id,
        decision_id: d.decision_id,
        event_type: d.event_type,
        approved: d.approved,
        at,
    })];
    let effect = SessionDecisionEffect {
        session_id: s.id,
        decision_id: d.decision_id,
        at,
    };
    match (d.approved, d.event_type) {
        (true, t)
            if t.licenses_run() && matches!(s.status, S::Initializing | S::PendingApproval) =>
        {
            session_events.push(AgentSessionEvent::Approved(effect));
        }
        (true, T::EmergencyStop) => {
            session_events.push(AgentSessionEvent::EmergencyStopped(effect))
        }
        // A denied request to stop is not a reason to block the session it wanted to stop.
        (false, T::EmergencyStop) => {}
        (false, _) if s.status != S::Blocked => {
            if let Some(reason) = reason.clone() {
                session_events.push(AgentSessionEvent::Blocked(SessionBlocked {
                    session_id: s.id,
                    decision_id: d.decision_id,
                    reason,
                    at,
                }));
            }
        }
        _ => {}
    }
    Ok(GovernedEvents {
        decision: vec![GovernanceEvent::Recorded(DecisionRecorded {
            decision_id: d.decision_id,
            session_id: s.id,
            event_type: d.event_type,
            framework_type: d.framework_type,
            approved: d.approved,
            reason,
            validation_context: d.validation_context,
            decision_details: d.decision_details,
            fallback_triggered: d.fallback_triggered,
            correlation_id: d.correlation_id,
            created_by: ctx.actor.clone(),
            created_at: at,
        })],
        session: session_events,
    })
}

fn record_cost(
    decision: &GovernanceDecisionState,
    session: &AgentSessionState,
    c: RecordTokenCost,
    ctx: &CommandContext,
) -> Result<GovernedEvents, DomainError> {
    let s = existing(session, c.session_id)?;
    if c.amount.get() <= Decimal::ZERO {
        return Err(DomainError::invalid(
            "agent_session.cost_not_positive",
            "amount",
            "a recorded token cost must be greater than zero",
        ));
    }
    require_status(s, &[AgentSessionStatus::Running], "record cost for")?;
    let at = ctx.now;
    let total = s.token_cost.plus(c.amount);
    let mut out = GovernedEvents {
        decision: Vec::new(),
        session: vec![AgentSessionEvent::CostRecorded(CostRecorded {
            session_id: s.id,
            amount: c.amount,
            tokens: c.tokens,
            total,
            at,
        })],
    };
    let Some(limit) = s.max_cost_limit else {
        return Ok(out);
    };
    if total <= limit {
        return Ok(out);
    }
    if decision.is_some() {
        return Err(DomainError::already_exists(
            "governance.decision_already_exists",
            "the circuit-breaker decision of this session already exists",
        ));
    }
    let decision_id = circuit_breaker_decision_id(s.id);
    let reason = Text::parse(
        "reason",
        format!("token cost {total} exceeded max_cost_limit {limit}"),
    )?;
    let mut details = JsonObject::new();
    details.insert(
        "token_cost".into(),
        serde_json::Value::String(total.to_string()),
    );
    details.insert(
        "max_cost_limit".into(),
        serde_json::Value::String(limit.to_string()),
    );
    details.insert(
        "amount".into(),
        serde_json::Value::String(c.amount.to_string()),
    );
    out.decision
        .push(GovernanceEvent::Recorded(DecisionRecorded {
            decision_id,
            session_id: s.id,
            event_type: GovernanceEventType::CircuitBreaker,
            framework_type: FrameworkType(FrameworkType::EMERGENCY.to_owned()),
            approved: false,
            reason: Some(reason.clone()),
            validation_context: JsonObject::new(),
            decision_details: details,
            fallback_triggered: false,
            correlation_id: None,
            created_by: ctx.actor.clone(),
            created_at: at,
        }));
    out.session
        .push(AgentSessionEvent::GovernanceApplied(GovernanceApplied {
            session_id: s.id,
            decision_id,
            event_type: GovernanceEventType::CircuitBreaker,
            approved: false,
            at,
        }));
    out.session.push(AgentSessionEvent::Blocked(SessionBlocked {
        session_id: s.id,
        decision_id,
        reason,
        at,
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_session::{
        AgentSession, AgentSessionCommand as C, CreateSession, PersonaActivated, SessionCreated,
        SessionEnded, SessionTransition,
    };
    use crate::testing::{given, given_governed, now};
    use crate::values::{AgentType, PersonaId, UserRef};
    use crate::{DomainEvent, ErrorKind};

    fn sid() -> AgentSessionId {
        AgentSessionId::new(Uuid::from_u128(11)).unwrap()
    }
    fn did(n: u128) -> GovernanceDecisionId {
        GovernanceDecisionId::new(Uuid::from_u128(100 + n)).unwrap()
    }
    fn money(units: i64, scale: u32) -> Money {
        Money::new(Decimal::new(units, scale)).unwrap()
    }
    fn created(limit: Option<Money>) -> AgentSessionEvent {
        AgentSessionEvent::Created(SessionCreated {
            session_id: sid(),
            user: UserRef::parse("u1").unwrap(),
            agent_type: AgentType::parse("coder").unwrap(),
            agent_config: JsonObject::new(),
            estimated_cost: None,
            max_cost_limit: limit,
            created_by: "tester".into(),
            created_at: now(),
        })
    }
    fn tr() -> SessionTransition {
        SessionTransition {
            session_id: sid(),
            at: now(),
        }
    }
    fn applied(n: u128, t: GovernanceEventType, approved: bool) -> AgentSessionEvent {
        AgentSessionEvent::GovernanceApplied(GovernanceApplied {
            session_id: sid(),
            decision_id: did(n),
            event_type: t,
            approved,
            at: now(),
        })
    }
    fn effect(n: u128) -> SessionDecisionEffect {
        SessionDecisionEffect {
            session_id: sid(),
            decision_id: did(n),
            at: now(),
        }
    }
    fn decision_cmd(n: u128, t: GovernanceEventType, approved: bool) -> RecordDecision {
        RecordDecision {
            decision_id: did(n),
            session_id: sid(),
            event_type: t,
            framework_type: FrameworkType::parse(FrameworkType::CONSENSUS).unwrap(),
            approved,
            reason: (!approved).then(|| Text::parse("reason", "too risky").unwrap()),
            validation_context: JsonObject::new(),
            decision_details: JsonObject::new(),
            fallback_triggered: false,
            correlation_id: None,
        }
    }
    fn recorded(c: &RecordDecision) -> GovernanceEvent {
        GovernanceEvent::Recorded(DecisionRecorded {
            decision_id: c.decision_id,
            session_id: c.session_id,
            event_type: c.event_type,
            framework_type: c.framework_type.clone(),
            approved: c.approved,
            reason: c.reason.clone(),
            validation_context: c.validation_context.clone(),
            decision_details: c.decision_details.clone(),
            fallback_triggered: c.fallback_triggered,
            correlation_id: c.correlation_id,
            created_by: "tester".into(),
            created_at: now(),
        })
    }
    /// History of a session that is running under decision 1.
    fn running(limit: Option<Money>) -> Vec<AgentSessionEvent> {
        vec![
            created(limit),
            AgentSessionEvent::ApprovalRequested(tr()),
            applied(1, GovernanceEventType::PreAgentSpawn, true),
            AgentSessionEvent::Approved(effect(1)),
            AgentSessionEvent::Started(tr()),
        ]
    }
    fn cost(amount: Money) -> GovernedCommand {
        GovernedCommand::RecordTokenCost(RecordTokenCost {
            session_id: sid(),
            amount,
            tokens: Some(100),
        })
    }
    fn persona() -> PersonaId {
        PersonaId::parse("sarah").unwrap()
    }

    #[test]
    fn create_and_duplicate() {
        given::<AgentSession>([])
            .when(C::CreateSession(CreateSession {
                session_id: sid(),
                user: UserRef::parse("u1").unwrap(),
                agent_type: AgentType::parse("coder").unwrap(),
                agent_config: JsonObject::new(),
                estimated_cost: None,
                max_cost_limit: None,
            }))
            .then([created(None)]);
        given::<AgentSession>([created(None)])
            .when(C::RequestApproval { session_id: sid() })
            .then([AgentSessionEvent::ApprovalRequested(tr())]);
        let e = given::<AgentSession>([created(None)])
            .when(C::CreateSession(CreateSession {
                session_id: sid(),
                user: UserRef::parse("u1").unwrap(),
                agent_type: AgentType::parse("coder").unwrap(),
                agent_config: JsonObject::new(),
                estimated_cost: None,
                max_cost_limit: None,
            }))
            .then_err("agent_session.already_exists");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        given::<AgentSession>([])
            .when(C::StartSession { session_id: sid() })
            .then_err_kind("agent_session.not_found", ErrorKind::NotFound);
    }

    #[test]
    fn cannot_run_without_approval() {
        given::<AgentSession>([created(None)])
            .when(C::StartSession { session_id: sid() })
            .then_err_kind(
                "agent_session.invalid_status",
                ErrorKind::FailedPrecondition,
            );
        given::<AgentSession>([created(None), AgentSessionEvent::ApprovalRequested(tr())])
            .when(C::StartSession { session_id: sid() })
            .then_err("agent_session.invalid_status");
        // An approved post_agent_spawn decision is not a licence to run.
        given_governed(
            [],
            [created(None), AgentSessionEvent::ApprovalRequested(tr())],
        )
        .when(GovernedCommand::RecordDecision(decision_cmd(
            2,
            GovernanceEventType::PostAgentSpawn,
            true,
        )))
        .then_ok();
    }

    #[test]
    fn approval_then_run_then_complete() {
        for t in [
            GovernanceEventType::PreAgentSpawn,
            GovernanceEventType::ConsensusCheck,
        ] {
            let c = decision_cmd(1, t, true);
            let state = given_governed(
                [],
                [created(None), AgentSessionEvent::ApprovalRequested(tr())],
            )
            .when(GovernedCommand::RecordDecision(c.clone()))
            .then(
                [recorded(&c)],
                [applied(1, t, true), AgentSessionEvent::Approved(effect(1))],
            )
            .unwrap();
            assert_eq!(state.status, AgentSessionStatus::Approved);
        }
        let mut h = running(None);
        h.pop();
        given::<AgentSession>(h)
            .when(C::StartSession { session_id: sid() })
            .then([AgentSessionEvent::Started(tr())]);
        let s = given::<AgentSession>(running(None))
            .when(C::CompleteSession { session_id: sid() })
            .then([AgentSessionEvent::Completed(tr())])
            .unwrap();
        assert_eq!(s.status, AgentSessionStatus::Completed);
        given::<AgentSession>(running(None))
            .when(C::RequestApproval { session_id: sid() })
            .then_err("agent_session.invalid_status");
    }

    #[test]
    fn rejection_needs_reason_and_blocks() {
        let mut c = decision_cmd(2, GovernanceEventType::PreAgentSpawn, false);
        c.reason = None;
        let e = given_governed([], [created(None)])
            .when(GovernedCommand::RecordDecision(c))
            .then_err("governance.reason_required");
        assert_eq!(
            (e.kind(), e.field()),
            (ErrorKind::InvalidArgument, Some("reason"))
        );

        let c = decision_cmd(2, GovernanceEventType::CostValidation, false);
        let s = given_governed([], running(None))
            .when(GovernedCommand::RecordDecision(c.clone()))
            .then(
                [recorded(&c)],
                [
                    applied(2, GovernanceEventType::CostValidation, false),
                    AgentSessionEvent::Blocked(SessionBlocked {
                        session_id: sid(),
                        decision_id: did(2),
                        reason: Text::parse("reason", "too risky").unwrap(),
                        at: now(),
                    }),
                ],
            )
            .unwrap();
        assert_eq!(s.status, AgentSessionStatus::Blocked);
        assert_eq!((s.approvals, s.rejections), (1, 1));
    }

    #[test]
    fn decision_rules() {
        let c = decision_cmd(1, GovernanceEventType::PreAgentSpawn, true);
        given_governed([recorded(&c)], [created(None)])
            .when(GovernedCommand::RecordDecision(c.clone()))
            .then_err("governance.decision_already_exists");
        given_governed([], [])
            .when(GovernedCommand::RecordDecision(c.clone()))
            .then_err("agent_session.not_found");
        let mut done = running(None);
        done.push(AgentSessionEvent::Completed(tr()));
        given_governed([], done)
            .when(GovernedCommand::RecordDecision(c))
            .then_err("agent_session.terminal");
        assert_eq!(
            FrameworkType::parse("Bad Framework").unwrap_err().code(),
            "governance.invalid_framework_type"
        );
        assert_eq!(
            GovernanceEventType::parse("pre_spawn").unwrap_err().code(),
            "governance.invalid_event_type"
        );
    }

    #[test]
    fn emergency_stop_halts_only_running_sessions() {
        let c = decision_cmd(3, GovernanceEventType::EmergencyStop, true);
        let s = given_governed([], running(None))
            .when(GovernedCommand::RecordDecision(c.clone()))
            .then(
                [recorded(&c)],
                [
                    applied(3, GovernanceEventType::EmergencyStop, true),
                    AgentSessionEvent::EmergencyStopped(effect(3)),
                ],
            )
            .unwrap();
        assert_eq!(s.status, AgentSessionStatus::Cancelled);
        given_governed([], [created(None)])
            .when(GovernedCommand::RecordDecision(c))
            .then_err("agent_session.invalid_status");
        // A denied stop request leaves the session running.
        let c = decision_cmd(4, GovernanceEventType::EmergencyStop, false);
        let s = given_governed([], running(None))
            .when(GovernedCommand::RecordDecision(c.clone()))
            .then(
                [recorded(&c)],
                [applied(4, GovernanceEventType::EmergencyStop, false)],
            )
            .unwrap();
        assert_eq!(s.status, AgentSessionStatus::Running);
    }

    #[test]
    fn cost_accumulates_and_circuit_breaker_blocks() {
        let limit = money(100, 2); // 1.00
        let mut h = running(Some(limit));
        let first = given_governed([], h.clone())
            .when(cost(money(60, 2)))
            .then_ok();
        assert!(first.decision.is_empty());
        h.extend(first.session);
        // Exactly at the limit is still allowed ("passing" the limit trips the breaker).
        let second = given_governed([], h.clone())
            .when(cost(money(40, 2)))
            .then_ok();
        assert!(second.decision.is_empty());
        h.extend(second.session);
        let s = AgentSession::replay(&h).unwrap();
        assert_eq!(s.token_cost, money(1, 0));

        let third = given_governed([], h.clone())
            .when(cost(money(1, 4)))
            .then_ok();
        assert_eq!(third.decision.len(), 1);
        let GovernanceEvent::Recorded(d) = &third.decision[0];
        assert_eq!(d.decision_id, circuit_breaker_decision_id(sid()));
        assert_eq!(d.event_type, GovernanceEventType::CircuitBreaker);
        assert!(!d.approved && d.reason.is_some());
        assert_eq!(third.session.len(), 3);
        for e in &third.decision {
            assert_eq!(
                GovernanceEvent::from_stored(e.event_type(), e.schema_version(), e.to_payload())
                    .as_ref(),
                Ok(e)
            );
        }
        h.extend(third.session);
        let s = AgentSession::replay(&h).unwrap();
        assert_eq!(s.status, AgentSessionStatus::Blocked);
        assert_eq!(s.token_cost.get(), Decimal::new(10001, 4));
        given_governed(third.decision, h)
            .when(cost(money(1, 0)))
            .then_err("agent_session.invalid_status");
    }

    #[test]
    fn cost_rules() {
        given_governed([], running(None))
            .when(cost(Money::ZERO))
            .then_err("agent_session.cost_not_positive");
        given_governed([], [created(None)])
            .when(cost(money(1, 0)))
            .then_err("agent_session.invalid_status");
        given_governed([], [])
            .when(cost(money(1, 0)))
            .then_err("agent_session.not_found");
        let cmd = cost(money(1, 0));
        assert_eq!(cmd.decision_id(), circuit_breaker_decision_id(sid()));
        assert_eq!(cmd.session_id(), sid());
    }

    #[test]
    fn personas() {
        let act = |p: PersonaId| C::ActivatePersona {
            session_id: sid(),
            persona_id: p,
            trigger: Text::parse("trigger", "crisis").unwrap(),
        };
        let activated = AgentSessionEvent::PersonaActivated(PersonaActivated {
            session_id: sid(),
            persona_id: persona(),
            trigger: Text::parse("trigger", "crisis").unwrap(),
            at: now(),
        });
        given::<AgentSession>(running(None))
            .when(act(persona()))
            .then([activated.clone()]);
        given::<AgentSession>([created(None)])
            .when(act(persona()))
            .then_err("agent_session.invalid_status");
        let mut h = running(None);
        h.push(activated);
        given::<AgentSession>(h.clone())
            .when(act(persona()))
            .then_err("agent_session.persona_already_active");
        let s = given::<AgentSession>(h.clone())
            .when(C::DeactivatePersona {
                session_id: sid(),
                persona_id: persona(),
            })
            .then_ok();
        assert_eq!(s.len(), 1);
        given::<AgentSession>(running(None))
            .when(C::DeactivatePersona {
                session_id: sid(),
                persona_id: persona(),
            })
            .then_err("agent_session.persona_not_active");
        // Ending a session closes its personas.
        h.push(AgentSessionEvent::Completed(tr()));
        assert!(AgentSession::replay(&h).unwrap().personas_active.is_empty());
    }

    #[test]
    fn fail_and_cancel_from_any_non_terminal() {
        let reason = Text::parse("reason", "stop").unwrap();
        let ended = SessionEnded {
            session_id: sid(),
            reason: reason.clone(),
            at: now(),
        };
        given::<AgentSession>([created(None)])
            .when(C::CancelSession {
                session_id: sid(),
                reason: reason.clone(),
            })
            .then([AgentSessionEvent::Cancelled(ended.clone())]);
        given::<AgentSession>(running(None))
            .when(C::FailSession {
                session_id: sid(),
                error: reason.clone(),
            })
            .then([AgentSessionEvent::Failed(ended.clone())]);
        given::<AgentSession>([created(None), AgentSessionEvent::Cancelled(ended)])
            .when(C::FailSession {
                session_id: sid(),
                error: reason,
            })
            .then_err("agent_session.terminal");
    }
}
