//! `annals.v1.AgentSessionCommands` requests -> [`AgentSessionCommand`]s (and the governed
//! `RecordTokenCost`). Field paths start with `session.`.

use aggregates::agent_session::{AgentSessionCommand, CreateSession};
use aggregates::governance::{GovernedCommand, RecordTokenCost};
use aggregates::values::{AgentSessionId, AgentType, PersonaId};
use schemas::v1 as pb;

use super::{at, id, json_object, money, opt_bigint, opt_money, text, user_or};
use crate::error::ApiError;

pub(crate) fn session_id(s: &str) -> Result<AgentSessionId, ApiError> {
    id("session.session_id", s, AgentSessionId::new)
}

fn persona(s: &str) -> Result<PersonaId, ApiError> {
    at("session.persona_id", PersonaId::parse(s))
}

/// `CreateSession`; the user defaults to the caller.
pub(crate) fn create(
    r: &pb::CreateSessionRequest,
    actor: &str,
) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::CreateSession(CreateSession {
        session_id: session_id(&r.session_id)?,
        user: user_or("session.user", &r.user, actor)?,
        agent_type: at("session.agent_type", AgentType::parse(&r.agent_type))?,
        agent_config: json_object("session.agent_config", r.agent_config.as_ref())?,
        estimated_cost: opt_money("session.estimated_cost", r.estimated_cost.as_ref())?,
        max_cost_limit: opt_money("session.max_cost_limit", r.max_cost_limit.as_ref())?,
    }))
}

/// `RequestApproval`.
pub(crate) fn request_approval(
    r: &pb::RequestApprovalRequest,
) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::RequestApproval {
        session_id: session_id(&r.session_id)?,
    })
}

/// `StartSession`.
pub(crate) fn start(r: &pb::StartSessionRequest) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::StartSession {
        session_id: session_id(&r.session_id)?,
    })
}

/// `CompleteSession`.
pub(crate) fn complete(r: &pb::CompleteSessionRequest) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::CompleteSession {
        session_id: session_id(&r.session_id)?,
    })
}

/// `FailSession`.
pub(crate) fn fail(r: &pb::FailSessionRequest) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::FailSession {
        session_id: session_id(&r.session_id)?,
        error: text("session.error", &r.error)?,
    })
}

/// `CancelSession`.
pub(crate) fn cancel(r: &pb::CancelSessionRequest) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::CancelSession {
        session_id: session_id(&r.session_id)?,
        reason: text("session.reason", &r.reason)?,
    })
}

/// `ActivatePersona`.
pub(crate) fn activate_persona(
    r: &pb::ActivatePersonaRequest,
) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::ActivatePersona {
        session_id: session_id(&r.session_id)?,
        persona_id: persona(&r.persona_id)?,
        trigger: text("session.trigger", &r.trigger)?,
    })
}

/// `DeactivatePersona`.
pub(crate) fn deactivate_persona(
    r: &pb::DeactivatePersonaRequest,
) -> Result<AgentSessionCommand, ApiError> {
    Ok(AgentSessionCommand::DeactivatePersona {
        session_id: session_id(&r.session_id)?,
        persona_id: persona(&r.persona_id)?,
    })
}

/// `RecordTokenCost` (governed: may also record a circuit-breaker decision).
pub(crate) fn token_cost(r: &pb::RecordTokenCostRequest) -> Result<GovernedCommand, ApiError> {
    Ok(GovernedCommand::RecordTokenCost(RecordTokenCost {
        session_id: session_id(&r.session_id)?,
        amount: money("session.amount", &r.amount)?,
        tokens: opt_bigint("session.tokens", r.tokens)?,
    }))
}
