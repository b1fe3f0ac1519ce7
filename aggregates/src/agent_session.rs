//! The agent-session aggregate (seed 002): the lifecycle of one AI agent run under governance.
//!
//! Status machine: `initializing -> pending_approval -> approved -> running -> completed`;
//! `failed` and `cancelled` from any non-terminal status; `blocked` when a governance decision
//! is rejected or the cost limit is passed. A blocked session stays blocked (no unblocking in
//! the seed): it can only be failed or cancelled.
//!
//! Governance decisions and token costs change this stream *and* the `governance_decision`
//! stream, so they are not commands of this aggregate: see [`crate::governance::decide_governed`].
//!
//! | command | allowed when | events |
//! |---|---|---|
//! | [`AgentSessionCommand::CreateSession`] | session does not exist | `agent_session.created` |
//! | [`AgentSessionCommand::RequestApproval`] | `initializing` | `agent_session.approval_requested` |
//! | [`AgentSessionCommand::StartSession`] | `approved`, with an approved `pre_agent_spawn` or `consensus_check` decision | `agent_session.started` |
//! | [`AgentSessionCommand::CompleteSession`] | `running` | `agent_session.completed` |
//! | [`AgentSessionCommand::FailSession`] | any non-terminal status | `agent_session.failed` |
//! | [`AgentSessionCommand::CancelSession`] | any non-terminal status | `agent_session.cancelled` |
//! | [`AgentSessionCommand::ActivatePersona`] | `approved` or `running`, persona not active | `agent_session.persona_activated` |
//! | [`AgentSessionCommand::DeactivatePersona`] | non-terminal, persona active | `agent_session.persona_deactivated` |
//! | (governed) record decision | see [`crate::governance`] | `agent_session.governance_applied`, then `agent_session.approved`, `agent_session.blocked` or `agent_session.emergency_stopped` |
//! | (governed) record token cost | `running` | `agent_session.cost_recorded` (+ `agent_session.governance_applied`, `agent_session.blocked` when the limit is passed) |
//!
//! Every event type is at schema version 1. Terminal events (`completed`, `failed`,
//! `cancelled`, `emergency_stopped`) implicitly deactivate all active personas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::error::DomainError;
use crate::event::domain_events;
use crate::governance::GovernanceEventType;
use crate::values::{
    AgentSessionId, AgentType, GovernanceDecisionId, JsonObject, Money, PersonaId, Text, UserRef,
    string_enum,
};
use crate::{Aggregate, CommandContext};

string_enum!(
    /// Lifecycle status of an agent session.
    AgentSessionStatus, "status", "agent_session.invalid_status" {
        /// Created, not yet submitted for approval.
        Initializing = "initializing",
        /// Waiting for a governance decision.
        PendingApproval = "pending_approval",
        /// Approved to run.
        Approved = "approved",
        /// Running.
        Running = "running",
        /// Finished successfully (terminal).
        Completed = "completed",
        /// Finished with an error (terminal).
        Failed = "failed",
        /// Stopped by a user or an emergency stop (terminal).
        Cancelled = "cancelled",
        /// Stopped by governance (rejection or circuit breaker).
        Blocked = "blocked",
    }
);

impl AgentSessionStatus {
    /// `completed`, `failed` or `cancelled`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AgentSessionStatus::Completed
                | AgentSessionStatus::Failed
                | AgentSessionStatus::Cancelled
        )
    }
}

/// Commands of the agent-session aggregate (governed ones live in [`crate::governance`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AgentSessionCommand {
    /// Create a session (the client chooses the id).
    CreateSession(CreateSession),
    /// Submit the session for governance approval.
    RequestApproval {
        /// Target session.
        session_id: AgentSessionId,
    },
    /// Start running an approved session.
    StartSession {
        /// Target session.
        session_id: AgentSessionId,
    },
    /// Finish a running session successfully.
    CompleteSession {
        /// Target session.
        session_id: AgentSessionId,
    },
    /// Finish a session with an error.
    FailSession {
        /// Target session.
        session_id: AgentSessionId,
        /// Error details.
        error: Text,
    },
    /// Cancel a session.
    CancelSession {
        /// Target session.
        session_id: AgentSessionId,
        /// Why.
        reason: Text,
    },
    /// Activate a persona in the session.
    ActivatePersona {
        /// Target session.
        session_id: AgentSessionId,
        /// Persona to activate.
        persona_id: PersonaId,
        /// What triggered the activation (seed `activation_trigger`).
        trigger: Text,
    },
    /// Deactivate an active persona.
    DeactivatePersona {
        /// Target session.
        session_id: AgentSessionId,
        /// Persona to deactivate.
        persona_id: PersonaId,
    },
}

impl AgentSessionCommand {
    /// The stream the command addresses.
    pub fn session_id(&self) -> AgentSessionId {
        match self {
            AgentSessionCommand::CreateSession(c) => c.session_id,
            AgentSessionCommand::RequestApproval { session_id }
            | AgentSessionCommand::StartSession { session_id }
            | AgentSessionCommand::CompleteSession { session_id }
            | AgentSessionCommand::FailSession { session_id, .. }
            | AgentSessionCommand::CancelSession { session_id, .. }
            | AgentSessionCommand::ActivatePersona { session_id, .. }
            | AgentSessionCommand::DeactivatePersona { session_id, .. } => *session_id,
        }
    }
}

/// Payload of [`AgentSessionCommand::CreateSession`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateSession {
    /// New session's id.
    pub session_id: AgentSessionId,
    /// Owning user.
    pub user: UserRef,
    /// Kind of agent.
    pub agent_type: AgentType,
    /// Agent configuration.
    pub agent_config: JsonObject,
    /// Expected cost.
    pub estimated_cost: Option<Money>,
    /// Cost above which the circuit breaker blocks the session.
    pub max_cost_limit: Option<Money>,
}

domain_events! {
    /// Events of the agent-session aggregate (all schema version 1).
    pub enum AgentSessionEvent {
        /// A session was created (`initializing`).
        Created(SessionCreated) => "agent_session.created" v 1,
        /// Approval was requested (`pending_approval`).
        ApprovalRequested(SessionTransition) => "agent_session.approval_requested" v 1,
        /// A governance decision about this session was recorded (link to the decision stream).
        GovernanceApplied(GovernanceApplied) => "agent_session.governance_applied" v 1,
        /// An approving spawn/consensus decision made the session `approved`.
        Approved(SessionDecisionEffect) => "agent_session.approved" v 1,
        /// A rejection or the circuit breaker made the session `blocked`.
        Blocked(SessionBlocked) => "agent_session.blocked" v 1,
        /// The session started `running`.
        Started(SessionTransition) => "agent_session.started" v 1,
        /// Token cost was incurred.
        CostRecorded(CostRecorded) => "agent_session.cost_recorded" v 1,
        /// The session `completed`.
        Completed(SessionTransition) => "agent_session.completed" v 1,
        /// The session `failed`.
        Failed(SessionEnded) => "agent_session.failed" v 1,
        /// The session was `cancelled`.
        Cancelled(SessionEnded) => "agent_session.cancelled" v 1,
        /// An emergency-stop decision halted the running session (`cancelled`).
        EmergencyStopped(SessionDecisionEffect) => "agent_session.emergency_stopped" v 1,
        /// A persona was activated.
        PersonaActivated(PersonaActivated) => "agent_session.persona_activated" v 1,
        /// A persona was deactivated.
        PersonaDeactivated(PersonaDeactivated) => "agent_session.persona_deactivated" v 1,
    }
}

/// Payload of `agent_session.created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// Session id.
    pub session_id: AgentSessionId,
    /// Owning user.
    pub user: UserRef,
    /// Kind of agent.
    pub agent_type: AgentType,
    /// Agent configuration.
    pub agent_config: JsonObject,
    /// Expected cost.
    pub estimated_cost: Option<Money>,
    /// Circuit-breaker limit.
    pub max_cost_limit: Option<Money>,
    /// Who issued the command.
    pub created_by: String,
    /// `ctx.now`.
    pub created_at: DateTime<Utc>,
}

/// Payload of simple status transitions (`approval_requested`, `started`, `completed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTransition {
    /// Session id.
    pub session_id: AgentSessionId,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `agent_session.governance_applied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GovernanceApplied {
    /// Session id.
    pub session_id: AgentSessionId,
    /// The decision (stream id in `governance_decision`).
    pub decision_id: GovernanceDecisionId,
    /// Kind of decision.
    pub event_type: GovernanceEventType,
    /// Outcome.
    pub approved: bool,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `agent_session.approved` and `agent_session.emergency_stopped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDecisionEffect {
    /// Session id.
    pub session_id: AgentSessionId,
    /// The decision that caused it.
    pub decision_id: GovernanceDecisionId,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `agent_session.blocked`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionBlocked {
    /// Session id.
    pub session_id: AgentSessionId,
    /// The rejecting or circuit-breaker decision.
    pub decision_id: GovernanceDecisionId,
    /// The decision's reason.
    pub reason: Text,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `agent_session.cost_recorded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostRecorded {
    /// Session id.
    pub session_id: AgentSessionId,
    /// Cost of this step.
    pub amount: Money,
    /// Tokens used, when known.
    pub tokens: Option<u64>,
    /// Running total after this step (for read models; equals the sum of amounts).
    pub total: Money,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `agent_session.failed` and `agent_session.cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEnded {
    /// Session id.
    pub session_id: AgentSessionId,
    /// Error details or cancellation reason.
    pub reason: Text,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `agent_session.persona_activated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonaActivated {
    /// Session id.
    pub session_id: AgentSessionId,
    /// Persona.
    pub persona_id: PersonaId,
    /// Activation trigger.
    pub trigger: Text,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// Payload of `agent_session.persona_deactivated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonaDeactivated {
    /// Session id.
    pub session_id: AgentSessionId,
    /// Persona.
    pub persona_id: PersonaId,
    /// `ctx.now`.
    pub at: DateTime<Utc>,
}

/// An agent session as folded from events.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSessionData {
    /// Session id.
    pub id: AgentSessionId,
    /// Owning user.
    pub user: UserRef,
    /// Kind of agent.
    pub agent_type: AgentType,
    /// Status.
    pub status: AgentSessionStatus,
    /// Active personas.
    pub personas_active: BTreeSet<PersonaId>,
    /// Sum of all recorded costs.
    pub token_cost: Money,
    /// Expected cost.
    pub estimated_cost: Option<Money>,
    /// Circuit-breaker limit.
    pub max_cost_limit: Option<Money>,
    /// Approved `pre_agent_spawn` / `consensus_check` decisions: the licence to run.
    pub run_approvals: BTreeSet<GovernanceDecisionId>,
    /// Every decision applied to this session.
    pub decisions: BTreeSet<GovernanceDecisionId>,
    /// Number of approving decisions.
    pub approvals: u32,
    /// Number of rejecting decisions.
    pub rejections: u32,
    /// Why the session is blocked, while blocked.
    pub block_reason: Option<Text>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it started running.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    pub ended_at: Option<DateTime<Utc>>,
}

/// State of an agent-session stream: `None` until `agent_session.created`.
pub type AgentSessionState = Option<AgentSessionData>;

/// The agent-session aggregate.
#[derive(Debug, Clone, Copy)]
pub enum AgentSession {}

impl Aggregate for AgentSession {
    const STREAM_TYPE: &'static str = "agent_session";
    type State = AgentSessionState;
    type Command = AgentSessionCommand;
    type Event = AgentSessionEvent;

    fn decide(
        state: &AgentSessionState,
        command: AgentSessionCommand,
        ctx: &CommandContext,
    ) -> Result<Vec<AgentSessionEvent>, DomainError> {
        use AgentSessionStatus as S;
        let now = ctx.now;
        if let AgentSessionCommand::CreateSession(c) = command {
            if state.is_some() {
                return Err(DomainError::already_exists(
                    "agent_session.already_exists",
                    format!("agent session {} already exists", c.session_id),
                ));
            }
            return Ok(vec![AgentSessionEvent::Created(SessionCreated {
                session_id: c.session_id,
                user: c.user,
                agent_type: c.agent_type,
                agent_config: c.agent_config,
                estimated_cost: c.estimated_cost,
                max_cost_limit: c.max_cost_limit,
                created_by: ctx.actor.clone(),
                created_at: now,
            })]);
        }
        let s = existing(state, command.session_id())?;
        let session_id = s.id;
        let transition = SessionTransition {
            session_id,
            at: now,
        };
        let event = match command {
            AgentSessionCommand::CreateSession(c) => {
                return Err(DomainError::already_exists(
                    "agent_session.already_exists",
                    format!("agent session {} already exists", c.session_id),
                ));
            }
            AgentSessionCommand::RequestApproval { .. } => {
                require_status(s, &[S::Initializing], "request approval")?;
                AgentSessionEvent::ApprovalRequested(transition)
            }
            AgentSessionCommand::StartSession { .. } => {
                require_status(s, &[S::Approved], "start")?;
                // Status `approved` implies an approval today; checking the licence itself keeps
                // the rule true even if a future event approves by another path.
                if s.run_approvals.is_empty() {
                    return Err(DomainError::precondition(
                        "agent_session.approval_required",
                        "a session can only run after an approved pre_agent_spawn or consensus_check decision",
                    ));
                }
                AgentSessionEvent::Started(transition)
            }
            AgentSessionCommand::CompleteSession { .. } => {
                require_status(s, &[S::Running], "complete")?;
                AgentSessionEvent::Completed(transition)
            }
            AgentSessionCommand::FailSession { error, .. } => {
                require_not_terminal(s, "fail")?;
                AgentSessionEvent::Failed(SessionEnded {
                    session_id,
                    reason: error,
                    at: now,
                })
            }
            AgentSessionCommand::CancelSession { reason, .. } => {
                require_not_terminal(s, "cancel")?;
                AgentSessionEvent::Cancelled(SessionEnded {
                    session_id,
                    reason,
                    at: now,
                })
            }
            AgentSessionCommand::ActivatePersona {
                persona_id,
                trigger,
                ..
            } => {
                require_status(s, &[S::Approved, S::Running], "activate a persona")?;
                if s.personas_active.contains(&persona_id) {
                    return Err(DomainError::precondition(
                        "agent_session.persona_already_active",
                        format!("persona {persona_id} is already active"),
                    ));
                }
                AgentSessionEvent::PersonaActivated(PersonaActivated {
                    session_id,
                    persona_id,
                    trigger,
                    at: now,
                })
            }
            AgentSessionCommand::DeactivatePersona { persona_id, .. } => {
                require_not_terminal(s, "deactivate a persona")?;
                if !s.personas_active.contains(&persona_id) {
                    return Err(DomainError::precondition(
                        "agent_session.persona_not_active",
                        format!("persona {persona_id} is not active"),
                    ));
                }
                AgentSessionEvent::PersonaDeactivated(PersonaDeactivated {
                    session_id,
                    persona_id,
                    at: now,
                })
            }
        };
        Ok(vec![event])
    }

    fn evolve(state: AgentSessionState, event: &AgentSessionEvent) -> AgentSessionState {
        use AgentSessionStatus as S;
        if let AgentSessionEvent::Created(e) = event {
            return Some(AgentSessionData {
                id: e.session_id,
                user: e.user.clone(),
                agent_type: e.agent_type.clone(),
                status: S::Initializing,
                personas_active: BTreeSet::new(),
                token_cost: Money::ZERO,
                estimated_cost: e.estimated_cost,
                max_cost_limit: e.max_cost_limit,
                run_approvals: BTreeSet::new(),
                decisions: BTreeSet::new(),
                approvals: 0,
                rejections: 0,
                block_reason: None,
                created_at: e.created_at,
                started_at: None,
                ended_at: None,
            });
        }
        // See task::evolve: events before creation cannot come from decide; ignore them.
        let mut s = state?;
        fn end(s: &mut AgentSessionData, status: AgentSessionStatus, at: DateTime<Utc>) {
            s.status = status;
            s.ended_at = Some(at);
            s.personas_active.clear();
        }
        match event {
            AgentSessionEvent::Created(_) => {}
            AgentSessionEvent::ApprovalRequested(_) => s.status = S::PendingApproval,
            AgentSessionEvent::GovernanceApplied(e) => {
                s.decisions.insert(e.decision_id);
                if e.approved {
                    s.approvals += 1;
                    if e.event_type.licenses_run() {
                        s.run_approvals.insert(e.decision_id);
                    }
                } else {
                    s.rejections += 1;
                }
            }
            AgentSessionEvent::Approved(_) => s.status = S::Approved,
            AgentSessionEvent::Blocked(e) => {
                s.status = S::Blocked;
                s.block_reason = Some(e.reason.clone());
            }
            AgentSessionEvent::Started(e) => {
                s.status = S::Running;
                s.started_at = Some(e.at);
            }
            AgentSessionEvent::CostRecorded(e) => s.token_cost = s.token_cost.plus(e.amount),
            AgentSessionEvent::Completed(e) => end(&mut s, S::Completed, e.at),
            AgentSessionEvent::Failed(e) => end(&mut s, S::Failed, e.at),
            AgentSessionEvent::Cancelled(e) => end(&mut s, S::Cancelled, e.at),
            AgentSessionEvent::EmergencyStopped(e) => end(&mut s, S::Cancelled, e.at),
            AgentSessionEvent::PersonaActivated(e) => {
                s.personas_active.insert(e.persona_id.clone());
            }
            AgentSessionEvent::PersonaDeactivated(e) => {
                s.personas_active.remove(&e.persona_id);
            }
        }
        Some(s)
    }
}

pub(crate) fn existing(
    state: &AgentSessionState,
    id: AgentSessionId,
) -> Result<&AgentSessionData, DomainError> {
    match state {
        Some(s) if s.id == id => Ok(s),
        Some(s) => Err(DomainError::precondition(
            "agent_session.stream_mismatch",
            format!(
                "command for session {id} was decided against session {}",
                s.id
            ),
        )),
        None => Err(DomainError::not_found(
            "agent_session.not_found",
            format!("agent session {id} does not exist"),
        )),
    }
}

pub(crate) fn require_status(
    s: &AgentSessionData,
    allowed: &[AgentSessionStatus],
    action: &str,
) -> Result<(), DomainError> {
    if !allowed.contains(&s.status) {
        let list: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
        return Err(DomainError::precondition(
            "agent_session.invalid_status",
            format!(
                "cannot {action} a session that is {}; allowed in: {}",
                s.status,
                list.join(", ")
            ),
        ));
    }
    Ok(())
}

pub(crate) fn require_not_terminal(s: &AgentSessionData, action: &str) -> Result<(), DomainError> {
    if s.status.is_terminal() {
        return Err(DomainError::precondition(
            "agent_session.terminal",
            format!("cannot {action} a session that is already {}", s.status),
        ));
    }
    Ok(())
}
