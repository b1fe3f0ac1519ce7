//! Given/when/then harness for aggregate tests, usable from other crates' tests too.
//!
//! ```
//! use aggregates::testing::{given, ctx};
//! use aggregates::task::{Task, TaskCommand};
//! # use aggregates::values::TaskId;
//! # let id = TaskId::new(uuid::Uuid::from_u128(1)).unwrap();
//! given::<Task>([]).when(TaskCommand::CompleteTask { task_id: id }).then_err("task.not_found");
//! ```
//!
//! Every `then*` also checks that each produced event survives `to_payload` / `from_stored`
//! and can be folded with `evolve`, so a happy-path test doubles as a serialisation test.

use chrono::{DateTime, TimeZone, Utc};
use std::fmt::Debug;

use crate::agent_session::{AgentSession, AgentSessionEvent, AgentSessionState};
use crate::error::{DomainError, ErrorKind};
use crate::governance::{
    GovernanceDecision, GovernanceDecisionState, GovernanceEvent, GovernedCommand, GovernedEvents,
    decide_governed,
};
use crate::{Aggregate, CommandContext, DomainEvent};

/// The fixed "now" of [`ctx`]: 2025-01-27T12:00:00Z.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 27, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

/// A context at [`now`] acting as `tester`.
pub fn ctx() -> CommandContext {
    CommandContext::new(now(), "tester")
}

/// Starts a scenario from the state built by folding `events`.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let state = events
        .into_iter()
        .fold(A::State::default(), |s, e| A::evolve(s, &e));
    Given { state, ctx: ctx() }
}

/// A state and a context, waiting for a command.
#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A::State,
    ctx: CommandContext,
}

impl<A: Aggregate> Given<A> {
    /// Replaces the context (e.g. another `now` or actor).
    pub fn with_ctx(mut self, ctx: CommandContext) -> Self {
        self.ctx = ctx;
        self
    }

    /// The state the command will be decided against.
    pub fn state(&self) -> &A::State {
        &self.state
    }

    /// Decides `command` against the given state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = A::decide(&self.state, command, &self.ctx);
        Then {
            state: self.state,
            result,
        }
    }
}

/// The outcome of a decision, to be asserted.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: A::State,
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> Then<A>
where
    A::Event: Debug + PartialEq + Clone,
{
    /// Asserts success with exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A::State {
        let expected: Vec<_> = expected.into_iter().collect();
        let events = self.then_ok();
        assert_eq!(events, expected, "unexpected events");
        events.iter().fold(self.state, |s, e| A::evolve(s, e))
    }

    /// Asserts success and returns the events (for checks that are not a plain equality).
    #[track_caller]
    pub fn then_ok(&self) -> Vec<A::Event> {
        match &self.result {
            Ok(events) => {
                for e in events {
                    let back =
                        A::Event::from_stored(e.event_type(), e.schema_version(), e.to_payload());
                    assert_eq!(
                        back.as_ref(),
                        Ok(e),
                        "event does not round-trip through its payload"
                    );
                }
                events.clone()
            }
            Err(err) => panic!("expected events, got error {err:?}"),
        }
    }

    /// Asserts a rejection with `code`; returns the error for further checks.
    #[track_caller]
    pub fn then_err(self, code: &str) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected error {code}, got events {events:?}"),
            Err(err) => {
                assert_eq!(err.code(), code, "unexpected error: {err:?}");
                err
            }
        }
    }

    /// Asserts a rejection with `code` and `kind`.
    #[track_caller]
    pub fn then_err_kind(self, code: &str, kind: ErrorKind) -> DomainError {
        let err = self.then_err(code);
        assert_eq!(err.kind(), kind, "unexpected kind for {code}");
        err
    }
}

/// Starts a governed (decision + session) scenario from both streams' histories.
pub fn given_governed(
    decision: impl IntoIterator<Item = GovernanceEvent>,
    session: impl IntoIterator<Item = AgentSessionEvent>,
) -> GivenGoverned {
    let decision: Vec<_> = decision.into_iter().collect();
    let session: Vec<_> = session.into_iter().collect();
    GivenGoverned {
        decision: GovernanceDecision::replay(&decision),
        session: AgentSession::replay(&session),
        ctx: ctx(),
    }
}

/// Both states of a governed command, waiting for the command.
#[derive(Debug)]
pub struct GivenGoverned {
    decision: GovernanceDecisionState,
    session: AgentSessionState,
    ctx: CommandContext,
}

impl GivenGoverned {
    /// Decides `command` with [`decide_governed`].
    pub fn when(self, command: GovernedCommand) -> ThenGoverned {
        let result = decide_governed(&self.decision, &self.session, command, &self.ctx);
        ThenGoverned {
            session: self.session,
            result,
        }
    }
}

/// The outcome of a governed decision.
#[derive(Debug)]
pub struct ThenGoverned {
    session: AgentSessionState,
    result: Result<GovernedEvents, DomainError>,
}

impl ThenGoverned {
    /// Asserts exactly these events per stream; returns the session state after them.
    #[track_caller]
    pub fn then(
        self,
        decision: impl IntoIterator<Item = GovernanceEvent>,
        session: impl IntoIterator<Item = AgentSessionEvent>,
    ) -> AgentSessionState {
        let expected = GovernedEvents {
            decision: decision.into_iter().collect(),
            session: session.into_iter().collect(),
        };
        let got = self.then_ok();
        assert_eq!(got, expected, "unexpected events");
        got.session.iter().fold(self.session, AgentSession::evolve)
    }

    /// Asserts success and returns the events.
    #[track_caller]
    pub fn then_ok(&self) -> GovernedEvents {
        match &self.result {
            Ok(ev) => ev.clone(),
            Err(err) => panic!("expected events, got error {err:?}"),
        }
    }

    /// Asserts a rejection with `code`.
    #[track_caller]
    pub fn then_err(self, code: &str) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected error {code}, got events {events:?}"),
            Err(err) => {
                assert_eq!(err.code(), code, "unexpected error: {err:?}");
                err
            }
        }
    }
}
