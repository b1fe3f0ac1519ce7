//! The gRPC server: the seven query services, health, reflection, limits, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use schemas::auth::{TokenCache, TokenCacheConfig, TokenStore};
use schemas::edge::Guarded;
use schemas::v1::agent_session_queries_server::AgentSessionQueriesServer;
use schemas::v1::audit_queries_server::AuditQueriesServer;
use schemas::v1::governance_queries_server::GovernanceQueriesServer;
use schemas::v1::history_queries_server::HistoryQueriesServer;
use schemas::v1::problem_queries_server::ProblemQueriesServer;
use schemas::v1::summary_queries_server::SummaryQueriesServer;
use schemas::v1::task_queries_server::TaskQueriesServer;
use tokio::net::TcpListener;

use crate::reader::Reader;
use crate::service::QueryService;

/// Limits and timeouts of the server (the binary fills it from flags and environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest accepted request message in bytes (queries are small; larger is
    /// `RESOURCE_EXHAUSTED`).
    pub max_request_bytes: usize,
    /// Longest a unary request may run (including a `min_position` wait); past it tonic
    /// answers `CANCELLED`. Streamed exports are not cut by it once their stream has started.
    pub request_timeout: Duration,
    /// Most concurrent requests per connection.
    pub concurrency_per_connection: usize,
    /// Verified tokens in memory; its `ttl` is the revocation delay (see [`schemas::auth`]).
    pub token_cache: TokenCacheConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            concurrency_per_connection: 64,
            token_cache: TokenCacheConfig::default(),
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Building the reflection service failed (bad descriptor set: a build bug).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Sets the serving status of every query service.
async fn set_all(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in [
        "",
        "annals.v1.ProblemQueries",
        "annals.v1.TaskQueries",
        "annals.v1.AgentSessionQueries",
        "annals.v1.GovernanceQueries",
        "annals.v1.SummaryQueries",
        "annals.v1.AuditQueries",
        "annals.v1.HistoryQueries",
    ] {
        health.set_service_status(name, status).await;
    }
}

/// A query server whose requests refused before their handler are answered briefly and
/// counted like the others (see [`schemas::edge`]).
fn guard<S>(server: S, limit: usize) -> Guarded<S> {
    Guarded::new(server, limit, crate::service::refused_at_edge)
}

/// Serves the query API on `listener` until `shutdown` completes, then drains in-flight
/// requests (tonic's graceful shutdown, at most [`schemas::runtime::DRAIN_GRACE`]) and returns. Health turns `NOT_SERVING` first, so
/// load balancers stop sending new work.
pub async fn serve(
    reader: Reader,
    tokens: TokenStore,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let service = Arc::new(QueryService::new(
        reader,
        TokenCache::new(tokens, config.token_cache),
    ));
    let limit = config.max_request_bytes;

    let (health, health_service) = tonic_health::server::health_reporter();
    set_all(&health, true).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(schemas::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let (shutdown, began) = schemas::runtime::drain_trigger(shutdown);
    let draining = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight requests");
        set_all(&health, false).await;
    };

    let server = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(guard(
            ProblemQueriesServer::from_arc(service.clone()).max_decoding_message_size(limit),
            limit,
        ))
        .add_service(guard(
            TaskQueriesServer::from_arc(service.clone()).max_decoding_message_size(limit),
            limit,
        ))
        .add_service(guard(
            AgentSessionQueriesServer::from_arc(service.clone()).max_decoding_message_size(limit),
            limit,
        ))
        .add_service(guard(
            GovernanceQueriesServer::from_arc(service.clone()).max_decoding_message_size(limit),
            limit,
        ))
        .add_service(guard(
            SummaryQueriesServer::from_arc(service.clone()).max_decoding_message_size(limit),
            limit,
        ))
        .add_service(guard(
            AuditQueriesServer::from_arc(service.clone()).max_decoding_message_size(limit),
            limit,
        ))
        .add_service(guard(
            HistoryQueriesServer::from_arc(service).max_decoding_message_size(limit),
            limit,
        ))
        .serve_with_incoming_shutdown(schemas::runtime::incoming(listener), draining);
    // Bounded: idle client connections must not keep a stopping server alive.
    schemas::runtime::drain_within(server, began).await?;
    Ok(())
}

pub use schemas::runtime::shutdown_signal;
