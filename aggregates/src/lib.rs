//! Pure domain of annals: commands, events, state, `decide`/`evolve` and upcasters.
//!
//! No I/O and no clock: the current time and the actor come in through [`CommandContext`], so a
//! decision is a pure function of (state, command, context) and replays are exact.
//!
//! # Layout
//!
//! | module | contents |
//! |---|---|
//! | [`values`] | validated ids, texts, ranges, money, enums shared by the aggregates |
//! | [`error`] | [`DomainError`] (code + [`ErrorKind`] + message + field) and [`UpcastError`] |
//! | [`problem`] | problem pipeline aggregate (seed 000) |
//! | [`task`] | task aggregate with reminders and recurrence (seed 003) |
//! | [`recurring`] | process manager: recurring `task.completed` -> next `CreateTask` |
//! | [`agent_session`] | agent-session aggregate (seed 002) |
//! | [`governance`] | governance-decision aggregate and [`governance::decide_governed`], the atomic two-stream decision |
//! | [`upcast`] | registry of payload upcasters used by every [`DomainEvent::from_stored`] |
//! | [`testing`] | given/when/then harness |
//!
//! Each aggregate is an uninhabited marker type implementing [`Aggregate`]; its state is
//! `Option<…Data>` (`None` = stream does not exist). Creation commands carry the client-chosen
//! id, so a repeated create is `ALREADY_EXISTS`. Each module's docs hold the authoritative table
//! of which command is allowed when; the lists below name every command and event.
//!
//! # Commands and events
//!
//! **Problem** (`problem`): commands `SubmitProblem`, `AdvanceStage`, `FailProblem`,
//! `CancelProblem`, `DefineFrame`, `AddTreeNode`, `PrioritizeNode`, `CreateAnalysisPlan`,
//! `RecordAnalysisResult`, `AddRecommendation`, `AddDeliverable`, `MarkDeliverableReady`,
//! `MarkDeliverableFailed`, `SubmitFeedback`; events `problem.submitted`,
//! `problem.stage_advanced`, `problem.failed`, `problem.cancelled`, `problem.frame_defined`,
//! `problem.tree_node_added`, `problem.node_prioritized`, `problem.analysis_plan_created`,
//! `problem.analysis_result_recorded`, `problem.recommendation_added`,
//! `problem.deliverable_added`, `problem.deliverable_ready`, `problem.deliverable_failed`,
//! `problem.feedback_submitted`.
//!
//! **Task** (`task`): commands `CreateTask`, `UpdateTask`, `CompleteTask`, `DeleteTask`,
//! `RestoreTask`, `ScheduleReminder`, `RecordReminderSent`, `RecordReminderFailure`,
//! `RetryReminder`; events `task.created` (v2), `task.updated`, `task.completed`,
//! `task.deleted`, `task.restored`, `task.reminder_scheduled`, `task.reminder_sent`,
//! `task.reminder_retry_scheduled`, `task.reminder_failed`, `task.reminder_retried`.
//!
//! **Agent session** (`agent_session`): commands `CreateSession`, `RequestApproval`,
//! `StartSession`, `CompleteSession`, `FailSession`, `CancelSession`, `ActivatePersona`,
//! `DeactivatePersona` (plus the governed commands below); events `agent_session.created`,
//! `agent_session.approval_requested`, `agent_session.governance_applied`,
//! `agent_session.approved`, `agent_session.blocked`, `agent_session.started`,
//! `agent_session.cost_recorded`, `agent_session.completed`, `agent_session.failed`,
//! `agent_session.cancelled`, `agent_session.emergency_stopped`,
//! `agent_session.persona_activated`, `agent_session.persona_deactivated`.
//!
//! **Governance decision** (`governance_decision`): no standalone commands; governed commands
//! `RecordDecision` and `RecordTokenCost` (decided over both streams by
//! [`governance::decide_governed`]); event `governance_decision.recorded`.
//!
//! Every event type is at schema version 1 except `task.created` (2).

pub mod agent_session;
pub mod error;
mod event;
pub mod governance;
pub mod problem;
pub mod recurring;
pub mod task;
pub mod testing;
pub mod upcast;
pub mod values;

pub use error::{DomainError, ErrorKind, UpcastError};

use chrono::{DateTime, Utc};

/// An event-sourced aggregate: `decide` turns a command into events, `evolve` folds them.
pub trait Aggregate {
    /// Stream type in the event store (`problem`, `task`, `agent_session`, `governance_decision`).
    const STREAM_TYPE: &'static str;
    /// Folded state; `Default` is the state of a stream with no events.
    type State: Default + Clone + PartialEq + std::fmt::Debug;
    /// Commands this aggregate accepts.
    type Command;
    /// Events this aggregate emits.
    type Event: DomainEvent;

    /// Validates `command` against `state` and returns the events to append (possibly none).
    fn decide(
        state: &Self::State,
        command: Self::Command,
        ctx: &CommandContext,
    ) -> Result<Vec<Self::Event>, DomainError>;

    /// Applies one event; total (never fails), since stored history is a fact.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Folds a whole history onto the empty state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events
            .into_iter()
            .fold(Self::State::default(), |s, e| Self::evolve(s, e))
    }
}

/// A serialisable domain event with a stable type name and a schema version.
pub trait DomainEvent: serde::Serialize + Sized {
    /// Every `(event type, current schema version)` of this enum.
    const EVENT_TYPES: &'static [(&'static str, u32)];

    /// Stable type name, e.g. `task.created`.
    fn event_type(&self) -> &'static str;

    /// Current schema version of this event type.
    fn schema_version(&self) -> u32;

    /// Parses a stored payload (upcasting older versions first).
    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, UpcastError>;

    /// The payload only (no type tag): what gets stored.
    fn to_payload(&self) -> serde_json::Value;
}

/// Inputs of a decision that are not part of the command: the time and who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// The current time, as seen by the caller (the domain never reads a clock).
    pub now: DateTime<Utc>,
    /// User or service id issuing the command.
    pub actor: String,
}

impl CommandContext {
    /// A context at `now` for `actor`.
    pub fn new(now: DateTime<Utc>, actor: impl Into<String>) -> Self {
        CommandContext {
            now,
            actor: actor.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the crate docs' event lists in step with the code.
    #[test]
    fn crate_docs_name_every_event_type() {
        let docs = include_str!("lib.rs");
        let all = [
            problem::ProblemEvent::EVENT_TYPES,
            task::TaskEvent::EVENT_TYPES,
            agent_session::AgentSessionEvent::EVENT_TYPES,
            governance::GovernanceEvent::EVENT_TYPES,
        ];
        for (event_type, version) in all.into_iter().flatten() {
            assert!(
                docs.contains(&format!("`{event_type}`")),
                "{event_type} is missing from the crate docs"
            );
            assert!(
                *version == 1 || docs.contains(&format!("`{event_type}` (v{version})")),
                "{event_type} v{version} is not documented"
            );
        }
    }

    #[test]
    fn stream_types_are_stable() {
        assert_eq!(problem::Problem::STREAM_TYPE, "problem");
        assert_eq!(task::Task::STREAM_TYPE, "task");
        assert_eq!(agent_session::AgentSession::STREAM_TYPE, "agent_session");
        assert_eq!(
            governance::GovernanceDecision::STREAM_TYPE,
            "governance_decision"
        );
    }
}
