//! The annals command service: gRPC commands in, events appended to the event store.
//!
//! Every RPC authenticates a bearer token from memory ([`auth::TokenCache`]; a revoked token
//! is refused within [`server::ServerConfig::token_cache`]'s ttl, 5 s by default), converts the
//! request into a domain command with field-level errors ([`convert`]), then decides and
//! appends through the event store's fold loop ([`event_store::aggregate::execute`]): a create
//! is one round trip (an append with `NoStream`), a command on an existing aggregate two (load,
//! append); retries of a `command_id` are answered by the append itself, and only a refused
//! command reads the command log ([`handler`]). Failures become gRPC statuses in exactly one
//! place ([`error`]). Aggregate ids are UUIDs and are also the stream ids.
//!
//! # Layout
//!
//! - [`auth`]: re-export of [`schemas::auth`] (tokens SHA-256 hashed in `api_tokens`, roles,
//!   principals), shared with the query API.
//! - [`convert`]: proto -> domain, one module per aggregate, plus the shared envelope.
//! - [`handler`]: maps a command onto [`event_store::aggregate::execute`] (and governed
//!   two-stream commands onto two concurrent loads and one append); refusals to statuses.
//! - [`service`]: the four tonic service impls (span, metrics, fingerprint per RPC).
//! - [`error`]: [`error::ApiError`] and its mapping to `tonic::Status`.
//! - [`server`]: health, reflection (v1 and v1alpha), limits, graceful shutdown.
//! - [`telemetry`]: the Prometheus endpoint.
//! - `src/main.rs`: the `annals-command-api` binary (`serve`, `token create|list|revoke`).

pub mod convert;
pub mod error;
pub mod handler;
pub mod server;
pub mod service;
pub mod telemetry;

pub use auth::{NewToken, Principal, Role, TokenStore};
pub use error::ApiError;
pub use schemas::auth;
pub use server::{ServerConfig, serve, shutdown_signal};
