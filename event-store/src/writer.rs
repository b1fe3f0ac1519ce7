//! Group commit: concurrent appends of one process share Postgres transactions.
//!
//! Every [`crate::EventStore::append`] hands its validated, flattened append to
//! the store's dispatcher task and awaits its own outcome. The dispatcher takes the first
//! queued append at once (no timer: a lone append is sent immediately) together with every
//! append that queued up behind it, and sends them as one call of the SQL function
//! `annals_append_group`: one round trip, one transaction, one commit flush for the whole group.
//! While a group is in flight ([`GroupCommitOptions::max_in_flight`] of them at most), new
//! appends queue and form the next group, so the busier the store, the larger the groups and the
//! fewer commits per append. When nothing is queued and a group slot is free, an append skips
//! the dispatcher and is sent as a group of one straight away (one task hand-over less on the
//! path of a lone writer).
//!
//! **Each append keeps its own outcome.** The SQL function decides the items in queue order
//! against in-memory stream heads and writes only the accepted ones, so a version conflict, a
//! replayed or reused command id, or a stream of another type in a group refuses that item alone, with
//! no subtransaction per item (past 64 subtransactions a snapshot's subxid cache overflows and
//! every reader of the cluster slows down). Should the group statement itself fail with an
//! error the server reported (the transaction was rolled back, e.g. a unique violation from a
//! client-chosen event id that exists already), each item is retried alone so that only the
//! offending one fails. Any other failure (connection lost: the outcome is unknown) is reported
//! to every item unretried: idempotent callers retry with their command id.
//!
//! **Bounds.** A group holds at most [`GroupCommitOptions::max_events`] events (10,000 by
//! default: positions reserve 16 bits per transaction, and one append may already carry
//! [`crate::types::MAX_EVENTS_PER_APPEND`]), [`GroupCommitOptions::max_bytes`] of payload and
//! metadata (4 MiB: a group is one bind message, and its transaction holds its streams' locks
//! while it runs) and [`GroupCommitOptions::max_items`] appends (1,000). The first append of a
//! group is always taken. We chose these from the benchmark (`tests/bench`, suite `append`):
//! at 64 concurrent writers groups average well under 100 appends, so the bounds only cut the
//! rare giant group that would otherwise hold every stream lock of its members for long.
//!
//! **Atomicity and ordering.** A multi-stream append is one item: all its streams or none. Two
//! items naming one command id never share a group (the later one waits for the next group and
//! is answered from the command log). Positions stay `(xid + epoch offset) * 65536 + i`, the xid
//! taken after every stream lock of the group, so the gap-safety argument of the crate docs
//! holds per group exactly as it did per append; several processes appending to one database
//! serialise on the same advisory locks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::error::StoreError;
use crate::notify::Waker;
use crate::types::{AppendResult, AppendedEvent, ExpectedVersion, Position, StreamVersion};

const APPEND_GROUP: &str = "SELECT r_item, r_status, r_first_position, r_versions, r_recorded_at, \
     r_detail FROM annals_append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// How appends are grouped into shared transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitOptions {
    /// Groups sent at the same time (each on its own connection). 1 = a strict single writer.
    pub max_in_flight: usize,
    /// Most events in one group (the first append is always taken).
    pub max_events: usize,
    /// Most payload and metadata bytes in one group (the first append is always taken).
    pub max_bytes: usize,
    /// Most appends in one group.
    pub max_items: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 2,
            max_events: 10_000,
            max_bytes: 4 << 20,
            max_items: 1_000,
        }
    }
}

/// Counters of the group writer, for benchmarks and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Group transactions sent.
    pub groups: u64,
    /// Appends sent in them.
    pub appends: u64,
    /// Appends waiting for a group right now.
    pub queued: u64,
}

/// One append, validated and flattened (see `AppendArgs` in `store.rs`).
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) command_id: Option<Uuid>,
    pub(crate) fingerprint: Option<[u8; 32]>,
    pub(crate) tenant: String,
    pub(crate) metadata: String,
    pub(crate) stream_ids: Vec<String>,
    pub(crate) stream_types: Vec<String>,
    pub(crate) expected: Vec<i64>,
    /// Events per stream, in stream order.
    pub(crate) counts: Vec<i32>,
    pub(crate) ev_ids: Vec<Uuid>,
    pub(crate) ev_types: Vec<String>,
    pub(crate) ev_schema_versions: Vec<i32>,
    pub(crate) ev_payloads: Vec<String>,
    /// Payload and metadata bytes, for the group bound.
    pub(crate) bytes: usize,
}

type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

struct Pending {
    prepared: Prepared,
    reply: Reply,
}

/// The dispatcher handle shared by every clone of an [`crate::EventStore`].
#[derive(Debug)]
pub(crate) struct GroupWriter {
    pool: PgPool,
    options: GroupCommitOptions,
    queue: std::sync::OnceLock<mpsc::UnboundedSender<Pending>>,
    /// One permit per group in flight; the idle dispatcher holds one while it waits.
    slots: Arc<Semaphore>,
    stats: Arc<Stats>,
    waker: Arc<Waker>,
}

#[derive(Debug, Default)]
struct Stats {
    groups: AtomicU64,
    appends: AtomicU64,
    queued: AtomicU64,
}

impl GroupWriter {
    pub(crate) fn new(pool: PgPool, options: GroupCommitOptions, waker: Arc<Waker>) -> Self {
        let max_in_flight = options.max_in_flight.max(1);
        Self {
            pool,
            options: GroupCommitOptions {
                max_in_flight,
                max_items: options.max_items.max(1),
                ..options
            },
            queue: std::sync::OnceLock::new(),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            stats: Arc::default(),
            waker,
        }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            groups: self.stats.groups.load(Ordering::Relaxed),
            appends: self.stats.appends.load(Ordering::Relaxed),
            queued: self.stats.queued.load(Ordering::Relaxed),
        }
    }

    /// Appends through the next group; alone when no dispatcher can run (no runtime, or the
    /// runtime that started it is gone).
    pub(crate) async fn append(&self, prepared: Prepared) -> Result<AppendResult, StoreError> {
        let (reply, outcome) = oneshot::channel();
        let mut pending = Pending { prepared, reply };
        if let Some(queue) = self.queue() {
            // Nothing queued and a group slot free besides the one the idle dispatcher holds:
            // this append is a group of its own, sent at once from a task of its own (the
            // dispatcher would form the same group one task hand-over later). Spawned, not
            // awaited in place, so that a caller that goes away cannot cut a commit short.
            if self.stats.queued.load(Ordering::Relaxed) == 0
                && let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned()
            {
                let (pool, stats, waker) = (
                    self.pool.clone(),
                    Arc::clone(&self.stats),
                    Arc::clone(&self.waker),
                );
                tokio::spawn(async move {
                    run_group(&pool, Group::start(pending), &stats, &waker).await;
                    drop(slot);
                });
                return outcome
                    .await
                    .unwrap_or(Err(StoreError::Database(sqlx::Error::WorkerCrashed)));
            }
            // Counted before sending: the dispatcher may take it at once.
            self.stats.queued.fetch_add(1, Ordering::Relaxed);
            match queue.send(pending) {
                Ok(()) => {
                    // An Err means the dispatcher's runtime ended while the append was queued
                    // or running: its outcome is unknown.
                    return outcome
                        .await
                        .unwrap_or(Err(StoreError::Database(sqlx::Error::WorkerCrashed)));
                }
                Err(mpsc::error::SendError(returned)) => {
                    self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                    pending = returned;
                }
            }
        }
        run_group(&self.pool, Group::start(pending), &self.stats, &self.waker).await;
        outcome
            .await
            .unwrap_or(Err(StoreError::Database(sqlx::Error::WorkerCrashed)))
    }

    fn queue(&self) -> Option<&mpsc::UnboundedSender<Pending>> {
        if let Some(queue) = self.queue.get() {
            return (!queue.is_closed()).then_some(queue);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(dispatch(
                self.pool.clone(),
                self.options,
                Arc::clone(&self.slots),
                rx,
                Arc::clone(&self.stats),
                Arc::clone(&self.waker),
            ));
            tx
        });
        (!queue.is_closed()).then_some(queue)
    }
}

/// Forms groups from the queue and runs up to `max_in_flight` of them at once. Ends when every
/// store handle is gone.
async fn dispatch(
    pool: PgPool,
    options: GroupCommitOptions,
    slots: Arc<Semaphore>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    stats: Arc<Stats>,
    waker: Arc<Waker>,
) {
    // Appends a group could not take (over a bound, or a command id already in the group): they
    // open the next group, ahead of the queue, so none waits more than its share.
    let mut deferred: VecDeque<Pending> = VecDeque::new();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match deferred.pop_front() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => {
                    stats.queued.fetch_sub(1, Ordering::Relaxed);
                    p
                }
                None => return,
            },
        };
        let mut group = Group::start(first);
        let mut left = VecDeque::new();
        for next in deferred.drain(..) {
            if group.admits(&next.prepared, &options) {
                group.push(next);
            } else {
                left.push_back(next);
            }
        }
        while !group.is_full(&options) {
            let Ok(next) = queue.try_recv() else {
                break;
            };
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            if group.admits(&next.prepared, &options) {
                group.push(next);
            } else {
                left.push_back(next);
            }
        }
        deferred = left;
        let (pool, stats, waker) = (pool.clone(), Arc::clone(&stats), Arc::clone(&waker));
        tokio::spawn(async move {
            run_group(&pool, group, &stats, &waker).await;
            drop(slot);
        });
    }
}

/// Appends queued for one transaction, in queue order.
struct Group {
    items: Vec<Pending>,
    events: usize,
    bytes: usize,
}

impl Group {
    fn start(first: Pending) -> Self {
        Self {
            events: first.prepared.ev_ids.len(),
            bytes: first.prepared.bytes,
            items: vec![first],
        }
    }

    fn is_full(&self, options: &GroupCommitOptions) -> bool {
        self.items.len() >= options.max_items
            || self.events >= options.max_events
            || self.bytes >= options.max_bytes
    }

    fn admits(&self, next: &Prepared, options: &GroupCommitOptions) -> bool {
        self.items.len() < options.max_items
            && self.events + next.ev_ids.len() <= options.max_events
            && self.bytes + next.bytes <= options.max_bytes
            && next
                .command_id
                .is_none_or(|id| self.items.iter().all(|p| p.prepared.command_id != Some(id)))
    }

    fn push(&mut self, next: Pending) {
        self.events += next.prepared.ev_ids.len();
        self.bytes += next.prepared.bytes;
        self.items.push(next);
    }
}

/// Sends a group and answers every item; a group the server refused as a whole is retried item
/// by item.
async fn run_group(pool: &PgPool, group: Group, stats: &Stats, waker: &Waker) {
    let started = Instant::now();
    let size = group.items.len();
    let (items, replies): (Vec<Prepared>, Vec<Reply>) = group
        .items
        .into_iter()
        .map(|p| (p.prepared, p.reply))
        .unzip();
    stats.groups.fetch_add(1, Ordering::Relaxed);
    stats.appends.fetch_add(size as u64, Ordering::Relaxed);
    metrics::histogram!("annals_append_group_size").record(size as f64);

    let outcomes = match send(pool, &items).await {
        Ok(outcomes) => outcomes,
        Err(Failed::Server(_)) if size > 1 => {
            // Rolled back as a whole (the server said why): nothing was written, so each item
            // alone gets exactly the outcome it would have had by itself.
            let mut outcomes = Vec::with_capacity(size);
            for item in &items {
                let one = std::slice::from_ref(item);
                outcomes.push(match send(pool, one).await {
                    Ok(mut single) => single.pop().unwrap_or(Err(StoreError::Corrupt(
                        "append group returned no row".into(),
                    ))),
                    Err(e) => Err(e.into()),
                });
            }
            outcomes
        }
        Err(failed) => {
            // Outcome unknown (e.g. the connection broke during commit): every item is told.
            let error = StoreError::from(failed);
            let mut outcomes: Vec<_> = (1..size).map(|_| Err(error.duplicate())).collect();
            outcomes.push(Err(error));
            outcomes
        }
    };
    if outcomes
        .iter()
        .any(|o| o.as_ref().is_ok_and(|r| !r.replayed))
    {
        waker.wake(pool);
    }
    metrics::histogram!("annals_append_group_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // A caller that went away no longer needs its answer; its append stands.
        let _ = reply.send(outcome);
    }
}

/// The group flattened into the parallel arrays `annals_append_group` takes.
#[derive(Default)]
struct GroupArgs<'a> {
    it_command_ids: Vec<Option<Uuid>>,
    it_fingerprints: Vec<Option<&'a [u8]>>,
    it_tenants: Vec<&'a str>,
    it_metadata: Vec<&'a str>,
    en_item: Vec<i32>,
    en_slot: Vec<i32>,
    en_type: Vec<&'a str>,
    en_expected: Vec<i64>,
    en_count: Vec<i32>,
    slot_stream: Vec<&'a str>,
    ev_ids: Vec<Uuid>,
    ev_types: Vec<&'a str>,
    ev_schema_versions: Vec<i32>,
    ev_payloads: Vec<&'a str>,
}

impl<'a> GroupArgs<'a> {
    fn build(items: &'a [Prepared]) -> Self {
        let entries: usize = items.iter().map(|p| p.stream_ids.len()).sum();
        let events: usize = items.iter().map(|p| p.ev_ids.len()).sum();
        let mut args = GroupArgs {
            it_command_ids: Vec::with_capacity(items.len()),
            it_fingerprints: Vec::with_capacity(items.len()),
            it_tenants: Vec::with_capacity(items.len()),
            it_metadata: Vec::with_capacity(items.len()),
            en_item: Vec::with_capacity(entries),
            en_slot: Vec::with_capacity(entries),
            en_type: Vec::with_capacity(entries),
            en_expected: Vec::with_capacity(entries),
            en_count: Vec::with_capacity(entries),
            slot_stream: Vec::with_capacity(entries),
            ev_ids: Vec::with_capacity(events),
            ev_types: Vec::with_capacity(events),
            ev_schema_versions: Vec::with_capacity(events),
            ev_payloads: Vec::with_capacity(events),
        };
        // A slot is one (tenant, stream): stream ids are unique per tenant, so two tenants'
        // streams of one id are two slots (the SQL function checks this).
        let mut slots: HashMap<(&str, &str), i32> = HashMap::with_capacity(entries);
        for (index, p) in items.iter().enumerate() {
            // Bounded by `max_items`, so the 1-based SQL index fits.
            let item = i32::try_from(index + 1).unwrap_or(i32::MAX);
            args.it_command_ids.push(p.command_id);
            args.it_fingerprints
                .push(p.fingerprint.as_ref().map(|f| f.as_slice()));
            args.it_tenants.push(&p.tenant);
            args.it_metadata.push(&p.metadata);
            for (s, stream) in p.stream_ids.iter().enumerate() {
                let next = i32::try_from(slots.len() + 1).unwrap_or(i32::MAX);
                let slot = *slots
                    .entry((p.tenant.as_str(), stream.as_str()))
                    .or_insert_with(|| {
                        args.slot_stream.push(stream);
                        next
                    });
                args.en_item.push(item);
                args.en_slot.push(slot);
                args.en_type.push(&p.stream_types[s]);
                args.en_expected.push(p.expected[s]);
                args.en_count.push(p.counts[s]);
            }
            args.ev_ids.extend_from_slice(&p.ev_ids);
            args.ev_types.extend(p.ev_types.iter().map(String::as_str));
            args.ev_schema_versions
                .extend_from_slice(&p.ev_schema_versions);
            args.ev_payloads
                .extend(p.ev_payloads.iter().map(String::as_str));
        }
        args
    }
}

/// Why a group call failed as a whole.
enum Failed {
    /// The server refused the statement: its transaction rolled back, nothing was written.
    Server(sqlx::Error),
    /// Anything else (connection lost, undecodable answer): the outcome may be unknown.
    Other(StoreError),
}

impl From<Failed> for StoreError {
    fn from(failed: Failed) -> Self {
        match failed {
            Failed::Server(e) => StoreError::from(e),
            Failed::Other(e) => e,
        }
    }
}

/// One round trip: the group's call of `annals_append_group`, decoded per item.
async fn send(
    pool: &PgPool,
    items: &[Prepared],
) -> Result<Vec<Result<AppendResult, StoreError>>, Failed> {
    let args = GroupArgs::build(items);
    let rows = sqlx::query(APPEND_GROUP)
        .bind(&args.it_command_ids)
        .bind(&args.it_fingerprints)
        .bind(&args.it_tenants)
        .bind(&args.it_metadata)
        .bind(&args.en_item)
        .bind(&args.en_slot)
        .bind(&args.en_type)
        .bind(&args.en_expected)
        .bind(&args.en_count)
        .bind(&args.slot_stream)
        .bind(&args.ev_ids)
        .bind(&args.ev_types)
        .bind(&args.ev_schema_versions)
        .bind(&args.ev_payloads)
        .fetch_all(pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(_) => Failed::Server(e),
            other => Failed::Other(other.into()),
        })?;
    if rows.len() != items.len() {
        return Err(Failed::Other(StoreError::Corrupt(format!(
            "append group of {} returned {} rows",
            items.len(),
            rows.len()
        ))));
    }
    items
        .iter()
        .zip(&rows)
        .map(|(item, row)| decode(item, row))
        .collect::<Result<_, _>>()
        .map_err(Failed::Other)
}

/// The JSON an item's refusal or replay carries (`r_detail`).
#[derive(Deserialize)]
struct Conflict {
    stream_id: String,
    expected: i64,
    actual: Option<u64>,
}

#[derive(Deserialize)]
struct OtherType {
    stream_id: String,
}

/// A replay: the command's original events (and, for rows logged before group commit, the
/// whole stored result).
#[derive(Deserialize)]
struct Replay {
    #[serde(default)]
    streams: Option<Vec<StreamVersion>>,
    events: Vec<AppendedEvent>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

impl Replay {
    fn into_result(self) -> AppendResult {
        // Streams in batch order are the streams in order of their first event; each event of a
        // stream has a higher version than the one before.
        let streams = self.streams.unwrap_or_else(|| {
            let mut streams: Vec<StreamVersion> = Vec::new();
            for e in &self.events {
                match streams.iter_mut().find(|s| s.stream_id == e.stream_id) {
                    Some(s) => s.version = s.version.max(e.stream_version),
                    None => streams.push(StreamVersion {
                        stream_id: e.stream_id.clone(),
                        version: e.stream_version,
                    }),
                }
            }
            streams
        });
        AppendResult {
            streams,
            events: self.events,
            recorded_at: self.recorded_at,
            replayed: true,
        }
    }
}

/// Parses a replayed command's stored result (`command_log` + its events), as the group
/// function and [`crate::EventStore::command_result`] return it.
pub(crate) fn replayed(detail: &str) -> Result<AppendResult, StoreError> {
    serde_json::from_str::<Replay>(detail)
        .map(Replay::into_result)
        .map_err(|e| StoreError::Corrupt(format!("stored command result: {e}")))
}

fn decode(item: &Prepared, row: &PgRow) -> Result<Result<AppendResult, StoreError>, StoreError> {
    let status: i32 = row.try_get("r_status")?;
    let detail: Option<String> = row.try_get("r_detail")?;
    let detail = detail.as_deref().unwrap_or("null");
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("append outcome: {e}"));
    Ok(match status {
        0 => Ok(appended(item, row)?),
        1 => Ok(replayed(detail)?),
        2 => {
            let c: Conflict = serde_json::from_str(detail).map_err(corrupt)?;
            Err(StoreError::WrongExpectedVersion {
                stream_id: c.stream_id,
                expected: ExpectedVersion::from_sql(c.expected),
                actual: c.actual,
            })
        }
        3 => Err(StoreError::CommandIdReused {
            command_id: item.command_id.unwrap_or_default(),
        }),
        4 => {
            let f: OtherType = serde_json::from_str(detail).map_err(corrupt)?;
            Err(StoreError::StreamTypeMismatch {
                stream_id: f.stream_id,
            })
        }
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown append status {other}"
            )));
        }
    })
}

fn appended(item: &Prepared, row: &PgRow) -> Result<AppendResult, StoreError> {
    let first: i64 = row.try_get("r_first_position")?;
    let versions: Vec<i64> = row.try_get("r_versions")?;
    let recorded_at = row.try_get("r_recorded_at")?;
    if versions.len() != item.stream_ids.len() {
        return Err(StoreError::Corrupt(
            "append outcome: versions per stream".into(),
        ));
    }
    let mut streams = Vec::with_capacity(versions.len());
    let mut events = Vec::with_capacity(item.ev_ids.len());
    let mut ids = item.ev_ids.iter();
    let mut position = first;
    for ((stream_id, count), version) in item.stream_ids.iter().zip(&item.counts).zip(&versions) {
        let version =
            u64::try_from(*version).map_err(|_| StoreError::Corrupt("negative version".into()))?;
        let count = u64::try_from(*count).unwrap_or(0);
        for v in version.saturating_sub(count) + 1..=version {
            let Some(&event_id) = ids.next() else {
                return Err(StoreError::Corrupt(
                    "append outcome: events per stream".into(),
                ));
            };
            events.push(AppendedEvent {
                event_id,
                stream_id: stream_id.clone(),
                stream_version: v,
                global_position: Position(position),
            });
            position += 1;
        }
        streams.push(StreamVersion {
            stream_id: stream_id.clone(),
            version,
        });
    }
    Ok(AppendResult {
        streams,
        events,
        recorded_at,
        replayed: false,
    })
}

impl StoreError {
    /// A copy of a failure that several appends share (`sqlx::Error` is not `Clone`); kinds
    /// that decide [`StoreError::is_transient`] are kept.
    fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Database(e) => StoreError::Database(match e {
                sqlx::Error::Io(io) => {
                    sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string()))
                }
                sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
                sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
                sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
                other => sqlx::Error::Protocol(other.to_string()),
            }),
            StoreError::PositionsBehind => StoreError::PositionsBehind,
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}
