//! The gRPC server: the four command services, health, reflection, limits, graceful shutdown.

use std::future::Future;
use std::time::Duration;

use event_store::EventStore;
use schemas::v1::agent_session_commands_server::AgentSessionCommandsServer;
use schemas::v1::governance_commands_server::GovernanceCommandsServer;
use schemas::v1::problem_commands_server::ProblemCommandsServer;
use schemas::v1::task_commands_server::TaskCommandsServer;
use tokio::net::TcpListener;

use crate::service::CommandService;
use schemas::auth::{TokenCache, TokenCacheConfig, TokenStore};
use schemas::edge::Guarded;

/// Limits and timeouts of the server (the binary fills it from flags and environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest accepted request message in bytes; larger ones are refused with
    /// `RESOURCE_EXHAUSTED` before any handler runs.
    pub max_request_bytes: usize,
    /// Longest a request may run; past it tonic answers `CANCELLED`.
    pub request_timeout: Duration,
    /// Most concurrent requests per connection.
    pub concurrency_per_connection: usize,
    /// Verified tokens in memory; its `ttl` is the revocation delay (see [`schemas::auth`]).
    pub token_cache: TokenCacheConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
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

/// Serves the command API on `listener` until `shutdown` completes, then drains in-flight
/// requests (tonic's graceful shutdown, at most [`schemas::runtime::DRAIN_GRACE`]) and returns. Health turns `NOT_SERVING` first, so
/// load balancers stop sending new work.
pub async fn serve(
    store: EventStore,
    tokens: TokenStore,
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let service = std::sync::Arc::new(CommandService::new(
        store,
        TokenCache::new(tokens, config.token_cache),
    ));
    let limit = config.max_request_bytes;
    // Requests refused before their handler (undecodable, over-size) are answered briefly and
    // counted like the others (see `schemas::edge`).
    let problems = Guarded::new(
        ProblemCommandsServer::from_arc(service.clone()).max_decoding_message_size(limit),
        limit,
        crate::service::refused_at_edge,
    );
    let tasks = Guarded::new(
        TaskCommandsServer::from_arc(service.clone()).max_decoding_message_size(limit),
        limit,
        crate::service::refused_at_edge,
    );
    let sessions = Guarded::new(
        AgentSessionCommandsServer::from_arc(service.clone()).max_decoding_message_size(limit),
        limit,
        crate::service::refused_at_edge,
    );
    let governance = Guarded::new(
        GovernanceCommandsServer::from_arc(service).max_decoding_message_size(limit),
        limit,
        crate::service::refused_at_edge,
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ProblemCommandsServer<CommandService>>()
        .await;
    health
        .set_serving::<TaskCommandsServer<CommandService>>()
        .await;
    health
        .set_serving::<AgentSessionCommandsServer<CommandService>>()
        .await;
    health
        .set_serving::<GovernanceCommandsServer<CommandService>>()
        .await;

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
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<ProblemCommandsServer<CommandService>>()
            .await;
        health
            .set_not_serving::<TaskCommandsServer<CommandService>>()
            .await;
        health
            .set_not_serving::<AgentSessionCommandsServer<CommandService>>()
            .await;
        health
            .set_not_serving::<GovernanceCommandsServer<CommandService>>()
            .await;
    };

    let server = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(problems)
        .add_service(tasks)
        .add_service(sessions)
        .add_service(governance)
        .serve_with_incoming_shutdown(schemas::runtime::incoming(listener), draining);
    // Bounded: idle client connections must not keep a stopping server alive.
    schemas::runtime::drain_within(server, began).await?;
    Ok(())
}

pub use schemas::runtime::shutdown_signal;
