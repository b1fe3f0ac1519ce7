//! The tonic service implementations. One [`QueryService`] implements every query service
//! trait; each RPC is its validation plus one call of a skeleton:
//!
//! - [`QueryService::read`] (read models): span, metrics and error mapping ([`observe`]) ->
//!   principal (token cache, no round trip) -> validation -> the tenant session with the
//!   position read in the same statement, waiting for `min_position` only when it is not
//!   reached yet ([`Reader::enter`]) -> the RPC's statements (one per kind of row: a get with
//!   children is a fixed number of statements, never one per row) -> commit.
//! - [`QueryService::lookup`] (GetTask, ListTasks): one statement that reads the position and
//!   the rows behind the second wall, no transaction; [`QueryService::read`] when it finds no
//!   row or the position is short of `min_position`.
//! - [`QueryService::answer`] (history and streamed exports, which read the store or page on
//!   their own): the same without the session: position reached ([`Reader::reach`]), then the
//!   RPC's work.
//!
//! Page tokens are decoded in validation ([`crate::cursor::Cursor::decode`]) and issued from the
//! rows ([`crate::cursor::paginate`]).

use std::future::Future;
use std::time::Instant;

use event_store::EventStore;
use futures::future::BoxFuture;
use schemas::auth::{Principal, TokenCache};
use sqlx::PgConnection;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::error::QueryError;
use crate::reader::{Model, Reader};

mod audit;
mod governance;
mod history;
mod problems;
mod sessions;
mod summaries;
mod tasks;

/// Rows per database page of a streamed export.
const EXPORT_PAGE: i64 = 500;
/// Entries buffered between the export's reader task and the gRPC stream: back-pressure from
/// a slow client stops the reader after this many.
const EXPORT_BUFFER: usize = 1_000;

/// Every query service over one [`Reader`], the event store and the token store.
#[derive(Debug, Clone)]
pub struct QueryService {
    reader: Reader,
    store: EventStore,
    tokens: TokenCache,
}

impl QueryService {
    /// A service reading through `reader` and authenticating against `tokens`.
    pub fn new(reader: Reader, tokens: TokenCache) -> Self {
        let store = EventStore::new(reader.pool().clone());
        Self {
            reader,
            store,
            tokens,
        }
    }

    /// Authenticates the request and records who is asking on the current span.
    async fn principal(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Principal, QueryError> {
        let principal = self.tokens.authenticate_request(metadata).await?;
        let span = tracing::Span::current();
        span.record("tenant", principal.tenant.as_str());
        span.record("actor", principal.actor.as_str());
        span.record("role", principal.role.as_str());
        Ok(principal)
    }
}

/// Requests that carry `min_position` (every query request).
pub(crate) trait MinPosition {
    /// The position the caller wants reflected (<= 0: any).
    fn min_position(&self) -> i64;
}

macro_rules! min_position {
    ($($t:ident),+ $(,)?) => {
        $(impl MinPosition for schemas::v1::$t {
            fn min_position(&self) -> i64 {
                self.min_position
            }
        })+
    };
}

min_position!(
    ExportAuditTrailRequest,
    GetIssueTreeRequest,
    GetProblemPipelineRequest,
    GetProblemRequest,
    GetSessionRequest,
    GetStateAsOfRequest,
    GetTaskRequest,
    ListActiveSessionsRequest,
    ListApprovalRatesRequest,
    ListAuditTrailRequest,
    ListDailyCostsRequest,
    ListDecisionsRequest,
    ListDueRemindersRequest,
    ListProblemsRequest,
    ListRecommendationsRequest,
    ListSessionsRequest,
    ListTaskSummariesRequest,
    ListTasksRequest,
    ListUserActivityRequest,
    ReadStreamRequest,
    VerifyIntegrityRequest,
    GetInclusionProofRequest,
);

/// What [`QueryService::read`] hands an RPC's work.
pub(crate) struct Scope<'t> {
    /// Who asks.
    pub principal: &'t Principal,
    /// The position the answer reflects.
    pub position: i64,
    /// The tenant session's connection.
    pub conn: &'t mut PgConnection,
}

impl<'t> Scope<'t> {
    /// The caller's tenant.
    pub(crate) fn tenant(&self) -> &'t str {
        &self.principal.tenant
    }
}

/// What [`QueryService::lookup`] hands an RPC's one-statement attempt.
pub(crate) struct Fast<'t> {
    /// Positions, pool and the second wall's setting.
    pub reader: &'t Reader,
    /// Who asks.
    pub principal: &'t Principal,
    /// The position the caller wants reflected.
    pub min_position: i64,
}

/// What [`QueryService::answer`] hands an RPC's work.
pub(crate) struct Ctx<'t> {
    /// The service (store, reader).
    pub service: &'t QueryService,
    /// Who asks.
    pub principal: &'t Principal,
    /// The position the answer reflects.
    pub position: i64,
}

/// An RPC's work once validated: borrows the scope and the request for as long as it runs.
pub(crate) type Work<'t, T> = BoxFuture<'t, Result<T, QueryError>>;

impl QueryService {
    /// The skeleton of a read-model RPC (see the module docs): `validate` checks the request
    /// (and the caller's right to it) before anything is read; `work` runs the statements in
    /// the tenant session and builds the response.
    pub(crate) async fn read<M, V, T, F>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        model: Model,
        validate: impl FnOnce(&M, &Principal) -> Result<V, QueryError> + Send,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        M: MinPosition + Send + Sync,
        V: Send,
        T: Send,
        F: for<'t> FnOnce(Scope<'t>, &'t M, V) -> Work<'t, T> + Send,
    {
        observe(rpc, async {
            let principal = self.principal(request.metadata()).await?;
            let req = request.into_inner();
            crate::convert::min_position(req.min_position())?;
            let valid = validate(&req, &principal)?;
            let (mut session, position) = self
                .reader
                .enter(&principal.tenant, model, req.min_position())
                .await?;
            let scope = Scope {
                principal: &principal,
                position,
                conn: session.conn(),
            };
            let answer = work(scope, &req, valid).await?;
            session.finish().await?;
            Ok(answer)
        })
        .await
    }

    /// [`QueryService::read`] with a one-round-trip attempt first: `fast` reads the position
    /// and the rows in one statement on a pooled connection in autocommit, behind the second
    /// wall raised inside a PL/pgSQL function (migrations `20261202000300`, `20261202400200`),
    /// and answers when it found rows and the position is reached. Otherwise (no row, so no
    /// position to answer with; position behind; a projection without stream types) `work`
    /// answers through the tenant session as any RPC, waiting for `min_position`. GetTask and
    /// ListTasks, the hot reads, go this way.
    pub(crate) async fn lookup<M, V, T, F, G>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        model: Model,
        validate: impl FnOnce(&M, &Principal) -> Result<V, QueryError> + Send,
        fast: G,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        M: MinPosition + Send + Sync,
        V: Send + Sync,
        T: Send,
        G: for<'t> FnOnce(Fast<'t>, &'t V) -> Work<'t, Option<T>> + Send,
        F: for<'t> FnOnce(Scope<'t>, &'t M, V) -> Work<'t, T> + Send,
    {
        observe(rpc, async {
            let principal = self.principal(request.metadata()).await?;
            let req = request.into_inner();
            crate::convert::min_position(req.min_position())?;
            let valid = validate(&req, &principal)?;
            let attempt = Fast {
                reader: &self.reader,
                principal: &principal,
                min_position: req.min_position(),
            };
            if let Some(answer) = fast(attempt, &valid).await? {
                return Ok(answer);
            }
            let (mut session, position) = self
                .reader
                .enter(&principal.tenant, model, req.min_position())
                .await?;
            let scope = Scope {
                principal: &principal,
                position,
                conn: session.conn(),
            };
            let answer = work(scope, &req, valid).await?;
            session.finish().await?;
            Ok(answer)
        })
        .await
    }

    /// The skeleton of an RPC that reads the store or pages on its own (history, exports):
    /// like [`QueryService::read`] without the tenant session.
    pub(crate) async fn answer<M, V, T, F>(
        &self,
        rpc: &'static str,
        request: Request<M>,
        model: Model,
        validate: impl FnOnce(&M, &Principal) -> Result<V, QueryError> + Send,
        work: F,
    ) -> Result<Response<T>, Status>
    where
        M: MinPosition + Send + Sync,
        V: Send,
        T: Send,
        F: for<'t> FnOnce(Ctx<'t>, &'t M, V) -> Work<'t, T> + Send,
    {
        observe(rpc, async {
            let principal = self.principal(request.metadata()).await?;
            let req = request.into_inner();
            crate::convert::min_position(req.min_position())?;
            let valid = validate(&req, &principal)?;
            let position = self.reader.reach(model, req.min_position()).await?;
            let ctx = Ctx {
                service: self,
                principal: &principal,
                position,
            };
            work(ctx, &req, valid).await
        })
        .await
    }
}

/// Records a request refused before its handler (undecodable, over-size) under the same
/// metrics as every other outcome ([`schemas::edge::Guarded`]).
pub(crate) fn refused_at_edge(rpc: &str, outcome: &'static str, elapsed: std::time::Duration) {
    metrics::histogram!("annals_query_duration_seconds", "rpc" => rpc.to_owned())
        .record(elapsed.as_secs_f64());
    metrics::counter!("annals_queries_total", "rpc" => rpc.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Runs one RPC in a `query` span (rpc, tenant, actor, role, outcome), records
/// `annals_query_duration_seconds{rpc}` and `annals_queries_total{rpc, outcome}`, and maps the
/// error to a status.
pub(crate) async fn observe<T>(
    rpc: &'static str,
    work: impl Future<Output = Result<T, QueryError>>,
) -> Result<Response<T>, Status> {
    schemas::edge::mark_handled();
    let started = Instant::now();
    let span = tracing::info_span!(
        "query",
        rpc,
        tenant = Empty,
        actor = Empty,
        role = Empty,
        outcome = Empty
    );
    let result = work.instrument(span.clone()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    let elapsed = started.elapsed();
    metrics::histogram!("annals_query_duration_seconds", "rpc" => rpc)
        .record(elapsed.as_secs_f64());
    metrics::counter!("annals_queries_total", "rpc" => rpc, "outcome" => outcome).increment(1);
    let _entered = span.enter();
    span.record("outcome", outcome);
    match result {
        Ok(value) => {
            tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "query answered");
            Ok(Response::new(value))
        }
        Err(err) => {
            tracing::info!(elapsed_ms = elapsed.as_millis() as u64, error = %err, "query refused");
            Err(Status::from(err))
        }
    }
}
