//! `annals.v1.GovernanceCommands` requests -> [`GovernedCommand`]s. Field paths start with
//! `decision.`.

use aggregates::governance::{FrameworkType, GovernanceEventType, GovernedCommand, RecordDecision};
use aggregates::values::GovernanceDecisionId;
use schemas::v1 as pb;
use uuid::Uuid;

use super::agent_session::session_id;
use super::{at, enum_value, id, json_object, opt_text, text};
use crate::error::ApiError;

fn event_type(path: &str, v: i32) -> Result<GovernanceEventType, ApiError> {
    use GovernanceEventType as T;
    use pb::GovernanceEventType as P;
    Ok(match enum_value::<P>(path, v)? {
        P::PreAgentSpawn | P::Unspecified => T::PreAgentSpawn,
        P::PostAgentSpawn => T::PostAgentSpawn,
        P::PrePersonaActivation => T::PrePersonaActivation,
        P::PostPersonaActivation => T::PostPersonaActivation,
        P::CostValidation => T::CostValidation,
        P::ConsensusCheck => T::ConsensusCheck,
        P::EmergencyStop => T::EmergencyStop,
        P::CircuitBreaker => T::CircuitBreaker,
    })
}

fn decision_id(s: &str) -> Result<GovernanceDecisionId, ApiError> {
    id("decision.decision_id", s, GovernanceDecisionId::new)
}

/// `RecordDecision`; the decision's correlation id is the envelope's.
pub(crate) fn record(
    r: &pb::RecordDecisionRequest,
    correlation_id: Uuid,
) -> Result<GovernedCommand, ApiError> {
    Ok(GovernedCommand::RecordDecision(RecordDecision {
        decision_id: decision_id(&r.decision_id)?,
        session_id: session_id(&r.session_id)?,
        event_type: event_type("decision.event_type", r.event_type)?,
        framework_type: at(
            "decision.framework_type",
            FrameworkType::parse(&r.framework_type),
        )?,
        approved: r.approved,
        reason: opt_text("decision.reason", r.reason.as_ref())?,
        validation_context: json_object(
            "decision.validation_context",
            r.validation_context.as_ref(),
        )?,
        decision_details: json_object("decision.decision_details", r.decision_details.as_ref())?,
        fallback_triggered: r.fallback_triggered,
        correlation_id: Some(correlation_id),
    }))
}

/// `EmergencyStop`: an approved `emergency_stop` decision (framework defaults to `emergency`).
pub(crate) fn emergency_stop(
    r: &pb::EmergencyStopRequest,
    correlation_id: Uuid,
) -> Result<GovernedCommand, ApiError> {
    let framework = if r.framework_type.trim().is_empty() {
        FrameworkType::EMERGENCY
    } else {
        r.framework_type.as_str()
    };
    Ok(GovernedCommand::RecordDecision(RecordDecision {
        decision_id: decision_id(&r.decision_id)?,
        session_id: session_id(&r.session_id)?,
        event_type: GovernanceEventType::EmergencyStop,
        framework_type: at("decision.framework_type", FrameworkType::parse(framework))?,
        approved: true,
        reason: Some(text("decision.reason", &r.reason)?),
        validation_context: Default::default(),
        decision_details: Default::default(),
        fallback_triggered: false,
        correlation_id: Some(correlation_id),
    }))
}
