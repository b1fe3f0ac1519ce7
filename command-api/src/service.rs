//! The four gRPC command services, all implemented by [`CommandService`].
//!
//! Every RPC goes through [`CommandService::run`]: authenticate and authorize, validate the
//! envelope, convert the request to a domain command, fingerprint the converted command,
//! execute, then record metrics and map the error (in [`crate::error`]). Requests refused before
//! `run` (undecodable, over-size) are counted by [`refused_at_edge`] under the same metrics.
//! Each call runs in a `command` tracing span with `rpc`, `tenant`, `actor`, `command_id`,
//! `aggregate_id` and `outcome`.

use std::future::Future;
use std::time::Instant;

use aggregates::agent_session::{AgentSession, AgentSessionCommand};
use aggregates::problem::{Problem, ProblemCommand};
use aggregates::task::{Task, TaskCommand};
use event_store::EventStore;
use prost::Message;
use schemas::v1 as pb;
use schemas::v1::agent_session_commands_server::AgentSessionCommands;
use schemas::v1::governance_commands_server::GovernanceCommands;
use schemas::v1::problem_commands_server::ProblemCommands;
use schemas::v1::task_commands_server::TaskCommands;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::convert;
use crate::error::ApiError;
use crate::handler::{CommandCall, Primary, Target, execute, execute_governed, require_task};
use schemas::auth::{Principal, TokenCache};

/// Longest user agent kept in event metadata.
const MAX_USER_AGENT_CHARS: usize = 256;

/// Implements every command service over one event store and token store.
#[derive(Debug, Clone)]
pub struct CommandService {
    store: EventStore,
    tokens: TokenCache,
}

/// Requests that carry a [`pb::CommandEnvelope`].
pub trait HasEnvelope {
    /// The envelope, if sent.
    fn envelope(&self) -> Option<&pb::CommandEnvelope>;
}

macro_rules! has_envelope {
    ($($t:ident),+ $(,)?) => {
        $(impl HasEnvelope for pb::$t {
            fn envelope(&self) -> Option<&pb::CommandEnvelope> {
                self.envelope.as_ref()
            }
        })+
    };
}

has_envelope!(
    SubmitProblemRequest,
    AdvanceStageRequest,
    FailProblemRequest,
    CancelProblemRequest,
    DefineFrameRequest,
    AddTreeNodeRequest,
    PrioritizeNodeRequest,
    CreateAnalysisPlanRequest,
    RecordAnalysisResultRequest,
    AddRecommendationRequest,
    AddDeliverableRequest,
    MarkDeliverableReadyRequest,
    MarkDeliverableFailedRequest,
    SubmitFeedbackRequest,
    CreateTaskRequest,
    UpdateTaskRequest,
    CompleteTaskRequest,
    DeleteTaskRequest,
    RestoreTaskRequest,
    ScheduleReminderRequest,
    RecordReminderSentRequest,
    RecordReminderFailureRequest,
    RetryReminderRequest,
    CreateSessionRequest,
    RequestApprovalRequest,
    StartSessionRequest,
    CompleteSessionRequest,
    FailSessionRequest,
    CancelSessionRequest,
    ActivatePersonaRequest,
    DeactivatePersonaRequest,
    RecordTokenCostRequest,
    RecordDecisionRequest,
    EmergencyStopRequest,
);

/// Who called which RPC, before the request is converted: [`Caller::call_for`] turns it into
/// the [`CommandCall`] of the converted command.
#[derive(Debug, Clone)]
pub struct Caller {
    rpc: &'static str,
    principal: Principal,
    envelope: convert::Envelope,
    client_ip: Option<String>,
    user_agent: Option<String>,
}

impl Caller {
    /// The call of `command`, fingerprinted from the converted command.
    fn call_for(self, command: &impl Serialize) -> CommandCall {
        CommandCall {
            fingerprint: fingerprint(self.rpc, &self.principal, &self.envelope, command),
            principal: self.principal,
            envelope: self.envelope,
            client_ip: self.client_ip,
            user_agent: self.user_agent,
        }
    }
}

/// What "the same request" means for idempotency: the RPC, the caller, the parsed envelope and
/// the converted command (its JSON: field names, canonical ids, normalised decimals and text).
/// Computed after conversion, never from the request bytes, so that a retry that spells a value
/// differently (an id in upper case, braces or `urn:uuid:`, a title with other surrounding
/// spaces) is the same request, and the fingerprint does not change with protobuf encoding
/// details (field order, unknown fields).
fn fingerprint(
    rpc: &str,
    principal: &Principal,
    envelope: &convert::Envelope,
    command: &impl Serialize,
) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [rpc, &principal.tenant, &principal.actor] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(envelope.command_id.as_bytes());
    h.update(envelope.correlation_id.as_bytes());
    match envelope.causation_id {
        Some(id) => h.update([&[1u8][..], id.as_bytes()].concat()),
        None => h.update([0u8]),
    }
    match envelope.expected_version {
        Some(v) => h.update([&[1u8][..], &v.to_be_bytes()[..]].concat()),
        None => h.update([0u8]),
    }
    // Serialising a converted command cannot fail (string keys, finite numbers); if it ever
    // did, the fingerprint would still cover everything above.
    if let Ok(json) = serde_json::to_vec(command) {
        h.update(json);
    }
    h.finalize().into()
}

/// Records a request refused before its handler (undecodable, over-size) under the same
/// metrics as every other outcome ([`schemas::edge::Guarded`]).
pub(crate) fn refused_at_edge(rpc: &str, outcome: &'static str, elapsed: std::time::Duration) {
    metrics::counter!("annals_commands_total", "command" => rpc.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("annals_command_duration_seconds", "command" => rpc.to_owned())
        .record(elapsed.as_secs_f64());
}

fn user_agent(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let ua = metadata.get("user-agent")?.to_str().ok()?;
    let clean: String = ua
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_AGENT_CHARS)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

impl CommandService {
    /// A service appending to `store`, authenticating through `tokens`.
    pub fn new(store: EventStore, tokens: TokenCache) -> Self {
        Self { store, tokens }
    }

    /// The common path of every RPC (see the module docs).
    async fn run<M, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        handle: F,
    ) -> Result<Response<pb::CommandResult>, Status>
    where
        M: Message + HasEnvelope,
        F: FnOnce(EventStore, Caller, M) -> Fut,
        Fut: Future<Output = Result<pb::CommandResult, ApiError>>,
    {
        schemas::edge::mark_handled();
        let started = Instant::now();
        let span = tracing::info_span!(
            "command",
            rpc,
            tenant = Empty,
            actor = Empty,
            command_id = Empty,
            aggregate_id = Empty,
            outcome = Empty,
        );
        let outcome = async {
            let principal = self.tokens.authenticate_request(request.metadata()).await?;
            let span = tracing::Span::current();
            span.record("tenant", principal.tenant.as_str());
            span.record("actor", principal.actor.as_str());
            principal.require_write()?;
            let client_ip = request.remote_addr().map(|a| a.ip().to_string());
            let user_agent = user_agent(request.metadata());
            let message = request.into_inner();
            let envelope = convert::envelope(message.envelope())?;
            span.record("command_id", tracing::field::display(envelope.command_id));
            let caller = Caller {
                rpc,
                principal,
                envelope,
                client_ip,
                user_agent,
            };
            handle(self.store.clone(), caller, message).await
        }
        .instrument(span.clone())
        .await;

        let label = match &outcome {
            Ok(r) if r.replayed => "replayed",
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        let elapsed = started.elapsed();
        metrics::counter!("annals_commands_total", "command" => rpc, "outcome" => label)
            .increment(1);
        metrics::histogram!("annals_command_duration_seconds", "command" => rpc)
            .record(elapsed.as_secs_f64());
        let _entered = span.enter();
        span.record("outcome", label);
        match outcome {
            Ok(result) => {
                tracing::info!(
                    elapsed_ms = elapsed.as_millis() as u64,
                    version = result.version,
                    "command accepted"
                );
                Ok(Response::new(result))
            }
            Err(err) => {
                tracing::info!(elapsed_ms = elapsed.as_millis() as u64, error = %err, "command refused");
                Err(Status::from(err))
            }
        }
    }
}

async fn problem(
    store: EventStore,
    caller: Caller,
    target: Target,
    command: Result<ProblemCommand, ApiError>,
) -> Result<pb::CommandResult, ApiError> {
    let command = command?;
    let call = caller.call_for(&command);
    let id = command.problem_id().as_uuid();
    execute::<Problem>(&store, &call, "problem", target, id, command).await
}

async fn task(
    store: EventStore,
    caller: Caller,
    target: Target,
    command: Result<TaskCommand, ApiError>,
) -> Result<pb::CommandResult, ApiError> {
    let command = command?;
    let call = caller.call_for(&command);
    if let TaskCommand::CreateTask(c) = &command
        && let Some(parent) = c.parent_task_id
    {
        require_task(&store, &call, "task.parent_task_id", parent).await?;
    }
    let id = command.task_id().as_uuid();
    execute::<Task>(&store, &call, "task", target, id, command).await
}

async fn session(
    store: EventStore,
    caller: Caller,
    target: Target,
    command: Result<AgentSessionCommand, ApiError>,
) -> Result<pb::CommandResult, ApiError> {
    let command = command?;
    let call = caller.call_for(&command);
    let id = command.session_id().as_uuid();
    execute::<AgentSession>(&store, &call, "session", target, id, command).await
}

async fn governed(
    store: EventStore,
    caller: Caller,
    primary: Primary,
    command: Result<aggregates::governance::GovernedCommand, ApiError>,
) -> Result<pb::CommandResult, ApiError> {
    let command = command?;
    let call = caller.call_for(&command);
    execute_governed(&store, &call, primary, command).await
}

/// Generates a service impl whose methods all delegate to [`CommandService::run`]. The
/// `async_trait` attribute is emitted by the macro so that it sees the expanded methods.
macro_rules! service {
    ($trait:ident {
        $( $method:ident($req:ident) => $name:literal, |$s:ident, $c:ident, $m:ident| $body:expr; )+
    }) => {
        #[tonic::async_trait]
        impl $trait for CommandService {
            $(
                async fn $method(
                    &self,
                    request: Request<pb::$req>,
                ) -> Result<Response<pb::CommandResult>, Status> {
                    self.run($name, request, |$s, $c, $m| $body).await
                }
            )+
        }
    };
}

use crate::convert::agent_session as cs;
use crate::convert::governance as cg;
use crate::convert::problem as cp;
use crate::convert::task as ct;
use Target::{Create, Existing};

service!(ProblemCommands {
    submit_problem(SubmitProblemRequest) => "SubmitProblem",
        |s, c, m| { let cmd = cp::submit(&m, &c.principal.actor); problem(s, c, Create, cmd) };
    advance_stage(AdvanceStageRequest) => "AdvanceStage",
        |s, c, m| problem(s, c, Existing, cp::advance(&m));
    fail_problem(FailProblemRequest) => "FailProblem",
        |s, c, m| problem(s, c, Existing, cp::fail(&m));
    cancel_problem(CancelProblemRequest) => "CancelProblem",
        |s, c, m| problem(s, c, Existing, cp::cancel(&m));
    define_frame(DefineFrameRequest) => "DefineFrame",
        |s, c, m| problem(s, c, Existing, cp::define_frame(&m));
    add_tree_node(AddTreeNodeRequest) => "AddTreeNode",
        |s, c, m| problem(s, c, Existing, cp::add_tree_node(&m));
    prioritize_node(PrioritizeNodeRequest) => "PrioritizeNode",
        |s, c, m| problem(s, c, Existing, cp::prioritize(&m));
    create_analysis_plan(CreateAnalysisPlanRequest) => "CreateAnalysisPlan",
        |s, c, m| problem(s, c, Existing, cp::create_plan(&m));
    record_analysis_result(RecordAnalysisResultRequest) => "RecordAnalysisResult",
        |s, c, m| problem(s, c, Existing, cp::record_result(&m));
    add_recommendation(AddRecommendationRequest) => "AddRecommendation",
        |s, c, m| problem(s, c, Existing, cp::add_recommendation(&m));
    add_deliverable(AddDeliverableRequest) => "AddDeliverable",
        |s, c, m| problem(s, c, Existing, cp::add_deliverable(&m));
    mark_deliverable_ready(MarkDeliverableReadyRequest) => "MarkDeliverableReady",
        |s, c, m| problem(s, c, Existing, cp::deliverable_ready(&m));
    mark_deliverable_failed(MarkDeliverableFailedRequest) => "MarkDeliverableFailed",
        |s, c, m| problem(s, c, Existing, cp::deliverable_failed(&m));
    submit_feedback(SubmitFeedbackRequest) => "SubmitFeedback",
        |s, c, m| { let cmd = cp::feedback(&m, &c.principal.actor); problem(s, c, Existing, cmd) };
});

service!(TaskCommands {
    create_task(CreateTaskRequest) => "CreateTask",
        |s, c, m| { let cmd = ct::create(&m, &c.principal.actor); task(s, c, Create, cmd) };
    update_task(UpdateTaskRequest) => "UpdateTask",
        |s, c, m| task(s, c, Existing, ct::update(&m));
    complete_task(CompleteTaskRequest) => "CompleteTask",
        |s, c, m| task(s, c, Existing, ct::complete(&m));
    delete_task(DeleteTaskRequest) => "DeleteTask",
        |s, c, m| task(s, c, Existing, ct::delete(&m));
    restore_task(RestoreTaskRequest) => "RestoreTask",
        |s, c, m| task(s, c, Existing, ct::restore(&m));
    schedule_reminder(ScheduleReminderRequest) => "ScheduleReminder",
        |s, c, m| task(s, c, Existing, ct::schedule_reminder(&m));
    record_reminder_sent(RecordReminderSentRequest) => "RecordReminderSent",
        |s, c, m| task(s, c, Existing, ct::reminder_sent(&m));
    record_reminder_failure(RecordReminderFailureRequest) => "RecordReminderFailure",
        |s, c, m| task(s, c, Existing, ct::reminder_failure(&m));
    retry_reminder(RetryReminderRequest) => "RetryReminder",
        |s, c, m| task(s, c, Existing, ct::retry_reminder(&m));
});

service!(AgentSessionCommands {
    create_session(CreateSessionRequest) => "CreateSession",
        |s, c, m| { let cmd = cs::create(&m, &c.principal.actor); session(s, c, Create, cmd) };
    request_approval(RequestApprovalRequest) => "RequestApproval",
        |s, c, m| session(s, c, Existing, cs::request_approval(&m));
    start_session(StartSessionRequest) => "StartSession",
        |s, c, m| session(s, c, Existing, cs::start(&m));
    complete_session(CompleteSessionRequest) => "CompleteSession",
        |s, c, m| session(s, c, Existing, cs::complete(&m));
    fail_session(FailSessionRequest) => "FailSession",
        |s, c, m| session(s, c, Existing, cs::fail(&m));
    cancel_session(CancelSessionRequest) => "CancelSession",
        |s, c, m| session(s, c, Existing, cs::cancel(&m));
    activate_persona(ActivatePersonaRequest) => "ActivatePersona",
        |s, c, m| session(s, c, Existing, cs::activate_persona(&m));
    deactivate_persona(DeactivatePersonaRequest) => "DeactivatePersona",
        |s, c, m| session(s, c, Existing, cs::deactivate_persona(&m));
    record_token_cost(RecordTokenCostRequest) => "RecordTokenCost",
        |s, c, m| governed(s, c, Primary::Session, cs::token_cost(&m));
});

service!(GovernanceCommands {
    record_decision(RecordDecisionRequest) => "RecordDecision",
        |s, c, m| { let cmd = cg::record(&m, c.envelope.correlation_id); governed(s, c, Primary::Decision, cmd) };
    emergency_stop(EmergencyStopRequest) => "EmergencyStop",
        |s, c, m| { let cmd = cg::emergency_stop(&m, c.envelope.correlation_id); governed(s, c, Primary::Decision, cmd) };
});
