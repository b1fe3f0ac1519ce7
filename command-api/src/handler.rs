//! Executing a command: answer retries, load, decide, append.
//!
//! 1. **Retry check first.** `command_log` is consulted with the request's fingerprint before
//!    anything else: a retried create would otherwise be refused by `decide` (the aggregate
//!    exists since the first attempt). A known id with a different fingerprint is refused.
//! 2. **Load.** The stream is read forward and folded with `from_stored` + `evolve`. A stream
//!    of another tenant or another aggregate type is reported as not found (and a create on it
//!    as already existing), so tenants learn nothing about each other's data.
//! 3. **Check the client's expected version** against the loaded one (`ABORTED` on mismatch).
//! 4. **Decide** with the current time and the caller as actor.
//! 5. **Append** with `Exact(loaded)` (`NoStream` for a new stream) and the request's
//!    fingerprint, so that a concurrent writer or a concurrent retry is caught by the store.
//!
//! Snapshots are not used: streams are short (tens of events) and a load is one indexed read.

use aggregates::agent_session::AgentSession;
use aggregates::governance::{GovernanceDecision, GovernedCommand, decide_governed};
use aggregates::{Aggregate, CommandContext, DomainError, DomainEvent};
use chrono::Utc;
use event_store::{
    AppendBatch, AppendResult, Direction, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId,
};
use schemas::v1 as pb;
use uuid::Uuid;

use crate::convert::Envelope;
use crate::error::ApiError;
use schemas::auth::Principal;

/// Events read per round trip while loading a stream.
const LOAD_PAGE: u32 = 1_000;

/// Everything about one command call that is not the command itself.
#[derive(Debug, Clone)]
pub struct CommandCall {
    /// The authenticated caller.
    pub principal: Principal,
    /// The validated envelope.
    pub envelope: Envelope,
    /// SHA-256 of the RPC name, tenant, actor and encoded request: what "the same request" means.
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

    async fn replayed(
        &self,
        store: &EventStore,
        primary: &str,
    ) -> Result<Option<pb::CommandResult>, ApiError> {
        Ok(store
            .command_result_matching(self.envelope.command_id, self.fingerprint)
            .await?
            .map(|r| result(primary, 0, r)))
    }
}

/// Whether a command creates its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Creates the aggregate (its id is new).
    Create,
    /// Acts on an existing aggregate.
    Existing,
}

/// A loaded stream.
struct Loaded<S> {
    state: S,
    version: u64,
}

fn stream_id(id: Uuid) -> Result<StreamId, ApiError> {
    Ok(StreamId::new(id.to_string())?)
}

/// Loads `A`'s stream for `tenant`; `None` when it belongs to another tenant or aggregate type.
async fn load<A: Aggregate>(
    store: &EventStore,
    tenant: &str,
    stream: &StreamId,
) -> Result<Option<Loaded<A::State>>, ApiError> {
    let mut state = A::State::default();
    let mut version = 0;
    loop {
        let page = store
            .read_stream(stream, version + 1, Direction::Forward, LOAD_PAGE)
            .await?;
        let done = page.len() < LOAD_PAGE as usize;
        for e in page {
            if e.stream_type != A::STREAM_TYPE || e.tenant_id != tenant {
                return Ok(None);
            }
            let corrupt = |reason: String| ApiError::Corrupt {
                stream_id: stream.to_string(),
                reason,
            };
            let payload = e.payload_json().map_err(|x| corrupt(x.to_string()))?;
            let event = A::Event::from_stored(&e.event_type, e.schema_version, payload)
                .map_err(|x| corrupt(x.to_string()))?;
            state = A::evolve(state, &event);
            version = e.stream_version;
        }
        if done {
            return Ok(Some(Loaded { state, version }));
        }
    }
}

fn expected(version: u64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    }
}

/// Refuses when the client based its command on another version than the current one.
fn check_expected(call: &CommandCall, stream: &StreamId, current: u64) -> Result<(), ApiError> {
    match call.envelope.expected_version {
        Some(v) if v != current => Err(ApiError::VersionMismatch {
            stream_id: stream.to_string(),
            expected: expected(v),
            actual: (current > 0).then_some(current),
        }),
        _ => Ok(()),
    }
}

fn new_events<E: DomainEvent>(events: &[E]) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent::new(e.event_type(), e.schema_version(), e.to_payload()))
        .collect()
}

fn hidden(scope: &'static str, target: Target, id: Uuid) -> ApiError {
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

/// Runs a command of aggregate `A` on stream `id`; `scope` names the aggregate in messages.
pub async fn execute<A: Aggregate>(
    store: &EventStore,
    call: &CommandCall,
    scope: &'static str,
    target: Target,
    id: Uuid,
    command: A::Command,
) -> Result<pb::CommandResult, ApiError> {
    tracing::Span::current().record("aggregate_id", tracing::field::display(id));
    let stream = stream_id(id)?;
    if let Some(done) = call.replayed(store, stream.as_str()).await? {
        return Ok(done);
    }
    let loaded = load::<A>(store, &call.principal.tenant, &stream)
        .await?
        .ok_or_else(|| hidden(scope, target, id))?;
    check_expected(call, &stream, loaded.version)?;
    let events = A::decide(&loaded.state, command, &call.context())
        .map_err(|error| ApiError::Domain { scope, error })?;
    if events.is_empty() {
        return Ok(unchanged(stream.as_str(), loaded.version));
    }
    let batch = call.batch().stream(
        stream.clone(),
        A::STREAM_TYPE,
        expected(loaded.version),
        new_events(&events),
    );
    let appended = store.append(batch).await?;
    Ok(result(stream.as_str(), loaded.version, appended))
}

/// Which stream a governed command reports as its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// The governance-decision stream (RecordDecision, EmergencyStop).
    Decision,
    /// The agent-session stream (RecordTokenCost).
    Session,
}

/// Runs a governed command: both streams are loaded, decided together and appended in one
/// atomic append (the decision stream as new, the session at its loaded version).
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
    if let Some(done) = call.replayed(store, primary_stream.as_str()).await? {
        return Ok(done);
    }
    let tenant = &call.principal.tenant;
    let session = load::<AgentSession>(store, tenant, &session_stream)
        .await?
        .ok_or_else(|| hidden("session", Target::Existing, session_uuid))?;
    let decision = load::<GovernanceDecision>(store, tenant, &decision_stream)
        .await?
        .ok_or_else(|| hidden("decision", Target::Create, decision_uuid))?;
    check_expected(call, &session_stream, session.version)?;
    let scope = match primary {
        Primary::Decision => "decision",
        Primary::Session => "session",
    };
    let events = decide_governed(&decision.state, &session.state, command, &call.context())
        .map_err(|error| ApiError::Domain { scope, error })?;
    let mut batch = call.batch();
    if !events.decision.is_empty() {
        batch = batch.stream(
            decision_stream.clone(),
            GovernanceDecision::STREAM_TYPE,
            expected(decision.version),
            new_events(&events.decision),
        );
    }
    if !events.session.is_empty() {
        batch = batch.stream(
            session_stream.clone(),
            AgentSession::STREAM_TYPE,
            expected(session.version),
            new_events(&events.session),
        );
    }
    let primary_version = match primary {
        Primary::Decision => decision.version,
        Primary::Session => session.version,
    };
    if batch.streams().is_empty() {
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
