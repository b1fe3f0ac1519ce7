//! The wire contract of annals: `.proto` files and the Rust generated from them.
//!
//! Package `annals.v1` holds one command service per aggregate (`ProblemCommands`,
//! `TaskCommands`, `AgentSessionCommands`, `GovernanceCommands`), the shared
//! `CommandEnvelope` (idempotency key, expected version, correlation and causation ids) and
//! `CommandResult`; and the query services (`ProblemQueries`, `TaskQueries`,
//! `AgentSessionQueries`, `GovernanceQueries`, `SummaryQueries`, `AuditQueries`,
//! `HistoryQueries`) with their shared conventions (tenant from the token, `min_position`
//! read-your-writes, `position` in every response, opaque keyset page tokens). Generated with
//! tonic/prost at build time; `protoc` is vendored.
//!
//! # Layout
//!
//! - `proto/annals/v1/*.proto`: the source of truth (`common`, `problems`, `tasks`,
//!   `agent_sessions`, `governance`, `queries`).
//! - [`v1`]: generated messages, clients (`*_client`) and servers (`*_server`).
//! - [`FILE_DESCRIPTOR_SET`]: encoded descriptors of every file, for gRPC reflection.
//! - [`auth`]: the API-edge contract both services share: bearer-token format, roles,
//!   [`auth::Principal`], the token store (`api_tokens`, SHA-256 hashed) and the cache both
//!   services verify tokens through ([`auth::TokenCache`], bounded revocation delay).
//! - [`edge`]: what both servers answer for requests that never reach a handler (malformed
//!   protobuf or framing, over-size): a codec and a server wrapper.
//! - [`runtime`]: process plumbing both services share (shutdown signal, bounded drain,
//!   Prometheus endpoint).

pub mod auth;
pub mod edge;
pub mod runtime;

/// Generated code of package `annals.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("annals.v1");
}

/// Encoded `FileDescriptorSet` of every annals proto file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("annals_descriptor");
