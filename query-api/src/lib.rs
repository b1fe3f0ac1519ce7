//! The annals query service: read models, summaries, the audit trail and event history over
//! gRPC, scoped to the caller's tenant.
//!
//! Every RPC is its validation plus one call of a skeleton (`service/mod.rs`): authenticate a
//! bearer token from memory ([`schemas::auth::TokenCache`]; every role may read its tenant's
//! read models, history needs `admin` or `auditor`), validate, read the position the answer
//! reflects and wait for `min_position` only when it is not reached ([`reader`]), then run the
//! statements in one tenant-scoped, read-only session (`WHERE tenant_id = $1` on every
//! statement, plus row-level security as a second wall) and commit; GetTask and ListTasks
//! first try one statement without a transaction that reads the position and the rows behind
//! the second wall (`QueryService::lookup`). Lists are
//! keyset-paginated with opaque tokens ([`cursor`]). History RPCs read the event store
//! directly: events upcast through the aggregates' `from_stored`, state as of a version or
//! instant folded by the store's fold loop ([`event_store::aggregate::load_until`]), and
//! hash-chain verification over a stream or a range of positions.
//!
//! # Layout
//!
//! - [`reader`]: projection positions, the bounded read-your-writes wait, tenant sessions.
//! - [`cursor`]: page sizes (default 50, max 500) and opaque keyset page tokens.
//! - [`convert`]: request fields -> SQL values (validation), rows -> proto fields.
//! - `service/`: [`QueryService`] and its skeletons (`read`, `lookup`, `answer`), one module
//!   per proto service (`problems`, `tasks`, `sessions`, `governance`, `summaries`, `audit`
//!   with the streamed export and viewer redaction, `history`): validation, page tokens,
//!   the skeleton call and proto conversion. The read models' row types and SELECTs live
//!   beside the code that writes their tables, in `projections::models::*::reads`.
//! - [`state`]: aggregate states as JSON for as-of replays.
//! - [`error`]: [`QueryError`] and its mapping to gRPC statuses.
//! - [`server`]: health, reflection, limits, graceful shutdown.
//! - [`telemetry`]: the Prometheus endpoint.
//! - `src/main.rs`: the `annals-query-api` binary.

pub mod convert;
pub mod cursor;
pub mod error;
pub mod reader;
pub mod server;
mod service;
pub mod state;
pub mod telemetry;

pub use error::QueryError;
pub use reader::{Model, Reader};
pub use server::{ServerConfig, serve, shutdown_signal};
pub use service::QueryService;
