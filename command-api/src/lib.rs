//! The annals command service: gRPC commands in, events appended to the event store.
//!
//! Every RPC authenticates a bearer token ([`auth`]), converts the request into a domain
//! command with field-level errors ([`convert`]), answers retries of a `command_id` from the
//! command log, loads and folds the aggregate, decides, and appends the events with their
//! metadata in one atomic, idempotent append ([`handler`]); failures become gRPC statuses in
//! exactly one place ([`error`]). Aggregate ids are UUIDs and are also the stream ids.
//!
//! # Layout
//!
//! - [`auth`]: re-export of [`schemas::auth`] (tokens SHA-256 hashed in `api_tokens`, roles,
//!   principals), shared with the query API.
//! - [`convert`]: proto -> domain, one module per aggregate, plus the shared envelope.
//! - [`handler`]: retry check, load, expected-version check, decide, append.
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
