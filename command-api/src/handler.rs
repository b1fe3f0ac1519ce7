//! Executing a command: decide, append, and answer retries, in as few round trips as possible.
//!
//! Single-aggregate commands go through [`event_store::aggregate::execute`] (the one fold loop):
//!
//! - **Create** (a new id, no client version): decided on the empty state and appended with
//!   `NoStream`; one round trip. Nothing is loaded and the command log is not read first: the
//!   store answers a retried command id on the append itself.
//! - **On an existing aggregate**: load (fold with `from_stored` + `evolve`), check the
//!   client's expected version (`ABORTED` on mismatch), decide, append with `Exact(loaded)`;
//!   two round trips.
//! - **Refusals** (domain refusal, client version mismatch, a stream of another aggregate type)
//!   and commands that decide to append nothing look at the command log once, so that a retry
//!   whose first attempt succeeded keeps getting the original result. A create whose stream
//!   exists, or that the empty state refuses, is loaded and decided again on what is there, so
//!   it is answered exactly as before (`ALREADY_EXISTS` for an existing id).
//!
//! Aggregate ids and command ids are scoped to the caller's tenant (the store keys streams and
//! the command log by tenant): another tenant's aggregate of the same id is simply not there, so
//! a create of that id succeeds, a command on it is "not found", and no answer depends on another
//! tenant's data. A stream of the caller's tenant holding another aggregate type (a task id
//! naming a problem) is reported as not found, and a create on it as already existing.
//!
//! Governed commands ([`execute_governed`]) load both streams at once (two connections, one
//! round trip of latency), decide them together and append them atomically.
//!
//! Snapshots are not used: streams are short (tens of events) and a load is one indexed read.

use aggregates::agent_session::AgentSession;
use aggregates::governance::{GovernanceDecision, GovernedCommand, decide_governed};
use aggregates::task::Task;
use aggregates::values::TaskId;
use aggregates::{Aggregate, CommandContext, DomainError};
use chrono::Utc;
use event_store::aggregate::{self, Executed, Execution, Refusal, expected_after, new_events};
use event_store::{AppendBatch, AppendResult, EventStore, Metadata, StreamId};
use schemas::v1 as pb;
use uuid::Uuid;

pub use event_store::aggregate::Target;

use crate::convert::Envelope;
use crate::error::ApiError;
use schemas::auth::Principal;

/// Everything about one command call that is not the command itself.
#[derive(Debug, Clone)]
pub struct CommandCall {
    /// The authenticated caller.
    pub principal: Principal,
    /// The validated envelope.
    pub envelope: Envelope,
    /// SHA-256 of the RPC name, tenant, actor, parsed envelope and converted command: what
    /// "the same request" means (however the client spelled its ids).
    pub fingerprint: [u8; 32],
    /// Peer address, when known.
    pub client_ip: Option<String>,
    /// Client user agent, when sent.
    pub user_agent: Option<String>,
}

impl CommandCall {
    fn metadata(&self) -> Metadata {
        let mut m = Metadata::new(
            &self.principal.tenant,
            &self.principal.actor,
            &self.principal.actor_type,
        );
        m.correlation_id = Some(self.envelope.correlation_id);
        m.causation_id = self.envelope.causation_id;
        m.client_ip.clone_from(&self.client_ip);
        m.user_agent.clone_from(&self.user_agent);
        m
    }

    fn context(&self) -> CommandContext {
        CommandContext::new(Utc::now(), &self.principal.actor)
    }

    fn batch(&self) -> AppendBatch {
        AppendBatch::new(self.metadata())
            .idempotent_with_fingerprint(self.envelope.command_id, self.fingerprint)
    }
}

fn stream_id(id: Uuid) -> Result<StreamId, ApiError> {
    Ok(StreamId::new(id.to_string())?)
}

/// The answer for an id of the caller's tenant that names another aggregate type.
fn other_type(scope: &'static str, target: Target, id: Uuid) -> ApiError {
    match target {
        Target::Create => ApiError::Domain {
            scope,
            error: DomainError::already_exists(
                "stream.already_exists",
                format!("{scope} {id} already exists"),
            ),
        },
        Target::Existing => ApiError::NotFound(format!("{scope} {id}")),
    }
}

/// The client's expected version as the store spells it, for conflict messages.
fn mismatch(stream: &StreamId, expected: u64, actual: Option<u64>) -> ApiError {
    ApiError::VersionMismatch {
        stream_id: stream.to_string(),
        expected: expected_after(expected),
        actual,
    }
}

/// The wire answer to an executed command on `stream`.
fn answer(stream: &StreamId, executed: Executed) -> pb::CommandResult {
    match executed.appended {
        Some(appended) => result(stream.as_str(), executed.version_before, appended),
        None => unchanged(stream.as_str(), executed.version_before),
    }
}

/// Runs a command of aggregate `A` on stream `id`; `scope` names the aggregate in messages.
pub async fn execute<A>(
    store: &EventStore,
    call: &CommandCall,
    scope: &'static str,
    target: Target,
    id: Uuid,
    command: A::Command,
) -> Result<pb::CommandResult, ApiError>
where
    A: Aggregate,
    A::Command: Clone,
{
    tracing::Span::current().record("aggregate_id", tracing::field::display(id));
    let stream = stream_id(id)?;
    let execution = Execution::<A> {
        stream: &stream,
        target,
        expected: call.envelope.expected_version,
        command,
        context: call.context(),
        batch: call.batch(),
    };
    match aggregate::execute::<A>(store, execution).await? {
        Ok(executed) => Ok(answer(&stream, executed)),
        Err(Refusal::Domain(error)) => Err(ApiError::Domain { scope, error }),
        Err(Refusal::OtherType) => Err(other_type(scope, target, id)),
        Err(Refusal::VersionMismatch { expected, actual }) => {
            Err(mismatch(&stream, expected, actual))
        }
    }
}

/// Refuses a reference (`path`, e.g. `task.parent_task_id`) to a task that does not exist in
/// the caller's tenant: a dangling parent would be stored and projected as if it were real.
/// Another tenant's task is as absent as one never created.
pub async fn require_task(
    store: &EventStore,
    call: &CommandCall,
    path: &str,
    id: TaskId,
) -> Result<(), ApiError> {
    let stream = stream_id(id.as_uuid())?;
    let loaded = aggregate::load::<Task>(store, &call.principal.tenant, &stream).await?;
    if loaded.is_some_and(|l| l.state.is_some()) {
        Ok(())
    } else {
        Err(ApiError::invalid(path, format!("task {id} does not exist")))
    }
}

/// The refusal of a governed command, unless its command id already succeeded.
async fn refuse(
    store: &EventStore,
    call: &CommandCall,
    primary: &StreamId,
    error: ApiError,
) -> Result<pb::CommandResult, ApiError> {
    match aggregate::earlier_result(store, &call.batch()).await? {
        Some(appended) => Ok(result(primary.as_str(), 0, appended)),
        None => Err(error),
    }
}

/// Which stream a governed command reports as its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// The governance-decision stream (RecordDecision, EmergencyStop).
    Decision,
    /// The agent-session stream (RecordTokenCost).
    Session,
}

/// Runs a governed command: both streams are loaded (concurrently), decided together and
/// appended in one atomic append (the decision stream as new, the session at its loaded
/// version).
pub async fn execute_governed(
    store: &EventStore,
    call: &CommandCall,
    primary: Primary,
    command: GovernedCommand,
) -> Result<pb::CommandResult, ApiError> {
    let session_uuid = command.session_id().as_uuid();
    let decision_uuid = command.decision_id().as_uuid();
    let session_stream = stream_id(session_uuid)?;
    let decision_stream = stream_id(decision_uuid)?;
    let primary_stream = match primary {
        Primary::Decision => &decision_stream,
        Primary::Session => &session_stream,
    };
    tracing::Span::current().record(
        "aggregate_id",
        tracing::field::display(primary_stream.as_str()),
    );
    let tenant = &call.principal.tenant;
    let (session, decision) = tokio::try_join!(
        aggregate::load::<AgentSession>(store, tenant, &session_stream),
        aggregate::load::<GovernanceDecision>(store, tenant, &decision_stream),
    )?;
    let Some(session) = session else {
        let error = other_type("session", Target::Existing, session_uuid);
        return refuse(store, call, primary_stream, error).await;
    };
    let Some(decision) = decision else {
        let error = other_type("decision", Target::Create, decision_uuid);
        return refuse(store, call, primary_stream, error).await;
    };
    if let Some(expected) = call.envelope.expected_version
        && expected != session.version
    {
        let actual = (session.version > 0).then_some(session.version);
        let error = mismatch(&session_stream, expected, actual);
        return refuse(store, call, primary_stream, error).await;
    }
    let scope = match primary {
        Primary::Decision => "decision",
        Primary::Session => "session",
    };
    let events = match decide_governed(&decision.state, &session.state, command, &call.context()) {
        Ok(events) => events,
        Err(error) => {
            let error = ApiError::Domain { scope, error };
            return refuse(store, call, primary_stream, error).await;
        }
    };
    let mut batch = call.batch();
    if !events.decision.is_empty() {
        batch = batch.stream(
            decision_stream.clone(),
            GovernanceDecision::STREAM_TYPE,
            expected_after(decision.version),
            new_events(&events.decision),
        );
    }
    if !events.session.is_empty() {
        batch = batch.stream(
            session_stream.clone(),
            AgentSession::STREAM_TYPE,
            expected_after(session.version),
            new_events(&events.session),
        );
    }
    let primary_version = match primary {
        Primary::Decision => decision.version,
        Primary::Session => session.version,
    };
    if batch.streams().is_empty() {
        // Nothing for the store to answer a retry with: a command id that already appended
        // gets its first answer from the log.
        if let Some(appended) = aggregate::earlier_result(store, &batch).await? {
            return Ok(result(primary_stream.as_str(), 0, appended));
        }
        return Ok(unchanged(primary_stream.as_str(), primary_version));
    }
    let appended = store.append(batch).await?;
    Ok(result(primary_stream.as_str(), primary_version, appended))
}

fn unchanged(stream: &str, version: u64) -> pb::CommandResult {
    pb::CommandResult {
        stream_id: stream.to_owned(),
        version,
        streams: vec![pb::StreamVersion {
            stream_id: stream.to_owned(),
            version,
        }],
        ..Default::default()
    }
}

/// The wire result of an append; `primary` is the command's target stream and
/// `version_before` its version when it was not written (e.g. a cost below the limit leaves
/// the decision stream untouched).
fn result(primary: &str, version_before: u64, r: AppendResult) -> pb::CommandResult {
    let version = r
        .streams
        .iter()
        .find(|s| s.stream_id == primary)
        .map_or(version_before, |s| s.version);
    pb::CommandResult {
        stream_id: primary.to_owned(),
        version,
        global_position: r.last_position().0,
        event_ids: r.events.iter().map(|e| e.event_id.to_string()).collect(),
        replayed: r.replayed,
        streams: r
            .streams
            .iter()
            .map(|s| pb::StreamVersion {
                stream_id: s.stream_id.clone(),
                version: s.version,
            })
            .collect(),
        events: r
            .events
            .iter()
            .map(|e| pb::AppendedEvent {
                event_id: e.event_id.to_string(),
                stream_id: e.stream_id.clone(),
                stream_version: e.stream_version,
                global_position: e.global_position.0,
            })
            .collect(),
        recorded_at: Some(prost_types::Timestamp {
            seconds: r.recorded_at.timestamp(),
            nanos: i32::try_from(r.recorded_at.timestamp_subsec_nanos()).unwrap_or(0),
        }),
    }
}
