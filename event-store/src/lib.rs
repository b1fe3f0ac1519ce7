//! The annals event store: an append-only log of immutable events in Postgres.
//!
//! # Contract
//!
//! - **Atomic multi-stream append.** [`EventStore::append`] writes one or several streams in one
//!   transaction. Every stream carries an [`ExpectedVersion`] (`Any`, `NoStream`, `Exact(n)`); if
//!   any check fails, [`StoreError::WrongExpectedVersion`] is returned and nothing of that append
//!   is written.
//! - **Group commit.** Concurrent appends share transactions: one call of the SQL function
//!   `annals_append_group` (one round trip, one commit) carries every append that queued while
//!   the previous group committed, and each keeps its own outcome (see [`writer`]).
//! - **Tenant-scoped ids.** A stream is named by (tenant, stream id) and a command id is unique
//!   per tenant: every read ([`EventStore::read_stream`], [`EventStore::stream_head`],
//!   [`EventStore::verify_stream`], [`EventStore::command_result`]) takes the tenant, and the
//!   same id used by two tenants is two independent streams (own versions, own hash chains) or
//!   two independent commands. No outcome depends on another tenant's data.
//! - **The store checks on its own.** An existing stream of the tenant holding another stream
//!   type is refused ([`StoreError::StreamTypeMismatch`]); `recorded_at` is read after the stream locks, so it
//!   never goes backwards within a stream; an append refuses to run after a write of its
//!   transaction or outside READ COMMITTED ([`StoreError::WrongTransaction`]).
//! - **Idempotency.** A batch made [`AppendBatch::idempotent`] under a command id is recorded in
//!   `command_log` with a fingerprint of the request; a retry returns the original
//!   [`AppendResult`] (`replayed = true`) and appends nothing, a different request under the
//!   same id gets [`StoreError::CommandIdReused`].
//! - **Envelope.** Each [`RecordedEvent`] has event id, stream id and type, stream version,
//!   global position, tenant, event type, schema version, JSON payload, [`Metadata`] (actor,
//!   actor type, command, correlation and causation ids, client ip and user agent) and
//!   `recorded_at`.
//! - **Tamper evidence.** `hash = SHA-256(previous hash in the stream || canonical envelope)`,
//!   written at append over the exact stored bytes (payload and metadata are `json`, not
//!   `jsonb`, so Postgres keeps them byte for byte). [`EventStore::verify_all`] recomputes every
//!   chain in Rust ([`hash`]) and names the first bad event of each stream: changed bytes,
//!   deleted or swapped rows, truncated tails. Events are also guarded by a trigger that refuses
//!   UPDATE, DELETE and TRUNCATE.
//! - **Global chain and signed checkpoints.** A sealer ([`chain::run_sealer`]) folds every event,
//!   in position order, into one Merkle tree after commit; Ed25519 checkpoints of its root
//!   ([`SignedCheckpoint`]) let [`EventStore::verify_checkpoint`] catch what per-stream chains
//!   cannot (a deleted stream or transaction, a rewrite with every hash recomputed) and name the
//!   first bad leaf; [`InclusionProof`]s are checked offline with the public key.
//! - **Reading.** Streams forward/backward from a version ([`EventStore::read_stream`]); all
//!   events after a position in batches ([`EventStore::read_all`]); a live [`Subscription`]
//!   woken by `LISTEN/NOTIFY` with catch-up reads.
//!
//! # Gap safety
//!
//! A `BIGSERIAL` position is taken when a row is inserted but becomes visible at commit, so a
//! reader of "all after P" can see position 11 commit before 10 and skip 10 for good. We use
//! the transaction id (`xid8`), not a gap-detecting timeout:
//!
//! 1. `annals_append_group` first takes transaction-scoped advisory locks on the streams of its
//!    group (sorted, so no deadlocks) and reads the stream heads. Neither assigns a transaction
//!    id.
//! 2. Only then does it call `pg_current_xact_id()`, assigning the xid, and gives its events
//!    the positions `(xid + epoch offset) * 65536 + i`. So position order *is* xid order. (The
//!    epoch offset is 0 until an operator rebases positions after a logical restore, see
//!    [`EventStore::rebase_positions`]; it only ever grows, and events below the epoch's floor
//!    are all committed, so readers deliver them without the xid rule.)
//! 3. Readers return an event only if its `tx_id < pg_snapshot_xmin(pg_current_snapshot())`
//!    of the reading statement, i.e. every transaction with a smaller xid has finished. Every
//!    event with a smaller position has a smaller-or-equal xid, so it is either visible
//!    already or was rolled back and will never exist. What a reader sees is therefore always
//!    a prefix of the final order, and continuing after the last seen position skips nothing.
//!
//! Why this over a gap-aware high-water mark: a high-water mark cannot tell a slow transaction
//! from an aborted one without a timeout, i.e. it is either lossy or stalls; the xid rule is
//! exact and an aborted transaction releases readers the moment it ends. Why step 1 matters:
//! two appends to the same stream get xids in lock order, so per-stream version order, xid
//! order and position order all agree. The costs: positions are sparse (like EventStoreDB's
//! log positions), and a long-running transaction anywhere in the cluster holds delivery back
//! (never loses anything): keep such transactions off the event store's cluster.
//!
//! # Layout
//!
//! - [`types`]: values in and out ([`AppendBatch`], [`RecordedEvent`], [`Position`], ...).
//! - [`error`]: [`StoreError`], the one place where SQLSTATEs are interpreted.
//! - `store`: [`EventStore`] append/read, checkpoints, position epochs.
//! - [`writer`]: group commit: the dispatcher that forms groups and answers each append.
//! - [`aggregate`]: the one fold loop: [`aggregate::load`] / [`aggregate::execute`] over
//!   `aggregates::Aggregate` (read, upcast, evolve, decide, append at the right version).
//! - `subscription`: [`Subscription`], the live catch-up subscription.
//! - `notify`: [`Waker`], post-commit wake-ups coalesced per process (subscriptions, projections).
//! - [`hash`] and `verify`: the hash chain and its verifier ([`VerifyReport`]);
//!   `verify_range`: [`EventStore::verify_positions`] over a range of global positions.
//! - [`chain`], [`checkpoint`], [`proof`]: the global chain (one Merkle tree over every event in
//!   position order, sealed off the hot path), its Ed25519-signed checkpoints, the verifier
//!   against a checkpoint, and offline-checkable inclusion proofs.
//! - [`wire`]: the Kafka wire format (topic per stream type, JSON [`wire::Envelope`], header
//!   names): pure serde, shared by the relay and Kafka consumers.
//! - The outbox relay to Kafka is the crate `annals-relay` in `relay/` (with its binary), so that
//!   crates depending on the store do not compile librdkafka.
//! - The schema lives in the workspace's `migrations/`; apply it with [`migrate`].

pub mod aggregate;
pub mod chain;
pub mod checkpoint;
pub mod error;
pub mod hash;
mod notify;
pub mod proof;
pub mod roles;
mod store;
mod subscription;
pub mod types;
mod verify;
mod verify_range;
pub mod wire;
pub mod writer;

pub use chain::{ChainHead, SealerOptions, run_sealer};
pub use checkpoint::{ChainFault, ChainFinding, ChainReport, CheckpointOptions, SignedCheckpoint};
pub use error::StoreError;
pub use notify::Waker;
pub use proof::InclusionProof;
pub use roles::{ConnectionRole, ServiceAccess, connection_role, prepare_service};
pub use store::{EventStore, PositionEpoch, load_checkpoint, save_checkpoint};
pub use subscription::{NOTIFY_CHANNEL, Subscription, SubscriptionOptions};
pub use types::{
    AllBatch, AppendBatch, AppendResult, AppendedEvent, Direction, ExpectedVersion, Metadata,
    NewEvent, Position, RecordedEvent, StreamAppend, StreamHead, StreamId, StreamVersion,
};
pub use verify::{TamperKind, Tampering, VerifyReport};
pub use writer::{GroupCommitOptions, GroupCommitStats};

/// Every migration of the workspace (event store and read models), embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies all pending migrations, then warns when the server runs without autovacuum; safe to
/// call from every process at start.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    // Every binary migrates at start, so this is where a server setting that quietly degrades
    // every query is worth a warning: without autovacuum, statistics of tables that grew from
    // empty stay those of empty tables, and cached plans scan whole tables.
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await?;
    if autovacuum == "off" {
        tracing::warn!(
            "autovacuum is off on this Postgres server: table statistics go stale and queries \
             slow down as tables grow; turn it on, or run ANALYZE regularly"
        );
    }
    Ok(())
}
