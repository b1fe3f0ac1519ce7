//! The tonic service implementations. One [`QueryService`] implements every query service
//! trait; each RPC goes through [`observe`] (span, latency histogram, error mapping) and starts
//! with [`QueryService::principal`] (authentication).
//!
//! The shape of every read RPC: authenticate -> validate the request -> wait for `min_position`
//! and read the position ([`Reader::reach`]) -> one tenant-scoped transaction with one statement
//! per kind of row (a get with children is a fixed number of statements, never one per row).

use std::future::Future;
use std::time::Instant;

use event_store::EventStore;
use schemas::auth::{Principal, TokenCache};
use tonic::{Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::error::QueryError;
use crate::reader::Reader;

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

/// Runs one RPC in a `query` span (rpc, tenant, actor, role, outcome), records
/// `annals_query_duration_seconds{rpc}` and `annals_queries_total{rpc, outcome}`, and maps the
/// error to a status.
pub(crate) async fn observe<T>(
    rpc: &'static str,
    work: impl Future<Output = Result<T, QueryError>>,
) -> Result<Response<T>, Status> {
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
