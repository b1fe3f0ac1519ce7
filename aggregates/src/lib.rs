//! Pure domain of annals: commands, events, state, `decide`/`evolve` and upcasters.
//! No I/O and no clock: the current time and the actor come in through [`CommandContext`].

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
