//! Signed checkpoints of the global chain, and verification of the store against one.
//!
//! A checkpoint is the chain's head `{leaf count, last global position, root hash, time, key
//! id}` signed with Ed25519. The private key is given to the process (file or environment) and
//! never enters Postgres; checkpoints are stored in `annals_checkpoints` and published outside
//! the database (an append-only JSON-lines file, a Kafka topic): an owner who rewrites the
//! events *and* the chain tables cannot produce a root the public key accepts.
//!
//! [`EventStore::verify_checkpoint`] recomputes every leaf from the events (and every per-stream
//! hash) in one snapshot, compares the root with the signed one, and names the first bad leaf:
//! from the stored leaves when they fold to the signed root, else by descending the stored nodes
//! from the signed root, trusting a node only when it hashes to an already trusted parent.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use ed25519_dalek::{Signature, Signer, Verifier};
/// Ed25519 keys, re-exported so that callers need no crypto dependency of their own.
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};

use crate::chain::{
    self, Frontier, leaf_hash, node_hash, peaks, read_nodes, to_hash, to_i64, to_u64,
};
use crate::error::StoreError;
use crate::store::{EventStore, decode_event, event_columns};
use crate::types::Position;
use crate::verify::Tampering;
use crate::verify_range::Link;

/// Fixed-size byte arrays as lowercase hex strings in JSON.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }

    /// A list of 32-byte hashes.
    pub(crate) mod list {
        use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

        pub(crate) fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for h in v {
                seq.serialize_element(&hex::encode(h))?;
            }
            seq.end()
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<[u8; 32]>, D::Error> {
            Vec::<String>::deserialize(d)?
                .into_iter()
                .map(|s| {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
                    Ok(out)
                })
                .collect()
        }
    }
}

/// A signed head of the global chain, as stored, written to the checkpoint file (one JSON
/// object per line) and published to Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// Leaves (events) covered: the first `leaf_count` events in global order.
    pub leaf_count: u64,
    /// Global position of the last covered event (`0` for an empty chain).
    pub last_position: Position,
    /// Root of the Merkle tree over the covered leaves.
    #[serde(with = "hex_bytes")]
    pub root_hash: [u8; 32],
    /// When it was signed (microsecond precision, as Postgres stores it).
    pub signed_at: DateTime<Utc>,
    /// Which key signed it ([`key_id`] of the public key).
    pub key_id: String,
    /// Ed25519 signature over [`SignedCheckpoint::message`].
    #[serde(with = "hex_bytes")]
    pub signature: [u8; 64],
}

impl SignedCheckpoint {
    /// Signs a chain head now.
    pub fn sign(
        key: &SigningKey,
        leaf_count: u64,
        last_position: Position,
        root: [u8; 32],
    ) -> Self {
        let mut cp = Self {
            leaf_count,
            last_position,
            root_hash: root,
            signed_at: Utc::now().trunc_subsecs(6),
            key_id: key_id(&key.verifying_key()),
            signature: [0; 64],
        };
        cp.signature = key.sign(&cp.message()).to_bytes();
        cp
    }

    /// The signed bytes: `"annals.checkpoint.v1" || leaf_count u64 || last_position i64 ||
    /// root 32 bytes || signed_at i64 (µs since epoch) || key_id (u32 length + UTF-8)`, all
    /// integers big-endian.
    pub fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(96 + self.key_id.len());
        m.extend_from_slice(b"annals.checkpoint.v1");
        m.extend_from_slice(&self.leaf_count.to_be_bytes());
        m.extend_from_slice(&self.last_position.0.to_be_bytes());
        m.extend_from_slice(&self.root_hash);
        m.extend_from_slice(&self.signed_at.timestamp_micros().to_be_bytes());
        m.extend_from_slice(&(self.key_id.len() as u32).to_be_bytes());
        m.extend_from_slice(self.key_id.as_bytes());
        m
    }

    /// Checks the signature (and that the key id names `key`).
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), StoreError> {
        if self.key_id != key_id(key) {
            return Err(StoreError::Checkpoint(format!(
                "signed by key {}, not by the given key {}",
                self.key_id,
                key_id(key)
            )));
        }
        key.verify(&self.message(), &Signature::from_bytes(&self.signature))
            .map_err(|_| StoreError::Checkpoint("the signature does not verify".into()))
    }
}

/// A short public identifier of a key: the first 8 bytes of SHA-256(public key), hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Generates a new signing key from the operating system's random source.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// A signing key from its 32-byte seed in hex (surrounding whitespace ignored).
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, StoreError> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| StoreError::Checkpoint("a private key is 64 hex digits".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key from its 32 bytes in hex (surrounding whitespace ignored).
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, StoreError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| StoreError::Checkpoint("a public key is 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| StoreError::Checkpoint("not an Ed25519 public key".into()))
}

/// The environment variable a process reads its checkpoint signing key from when no key file
/// is given (64 hex digits: the Ed25519 seed).
pub const KEY_ENV: &str = "ANNALS_CHECKPOINT_KEY";

/// The checkpoint signing key of a process: from `file` when given, else from the environment
/// variable [`KEY_ENV`]; `None` when neither is set (the process then seals without signing).
pub fn load_signing_key(file: Option<&Path>) -> Result<Option<SigningKey>, StoreError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            StoreError::Checkpoint(format!("cannot read key file {}: {e}", path.display()))
        })?,
        None => match std::env::var(KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => return Ok(None),
        },
    };
    signing_key_from_hex(&text).map(Some)
}

/// A public key given as 64 hex digits or as the path of a file holding them.
pub fn verifying_key_from_arg(arg: &str) -> Result<VerifyingKey, StoreError> {
    let path = Path::new(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
        return verifying_key_from_hex(&text);
    }
    verifying_key_from_hex(arg)
}

/// Appends a checkpoint as one JSON line to `path` (created if missing) and syncs it to disk.
pub fn append_checkpoint_file(path: &Path, checkpoint: &SignedCheckpoint) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(checkpoint)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(&line)?;
    file.sync_data()
}

/// Every checkpoint of a JSON-lines file, in file order.
pub fn read_checkpoint_file(path: &Path) -> Result<Vec<SignedCheckpoint>, StoreError> {
    let file = std::fs::File::open(path)
        .map_err(|e| StoreError::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| StoreError::Checkpoint(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| {
            StoreError::Checkpoint(format!("{} line {}: {e}", path.display(), n + 1))
        })?);
    }
    Ok(out)
}

/// Where and how often the checkpointer signs.
#[derive(Clone)]
pub struct CheckpointOptions {
    /// The private key (kept in memory only).
    pub key: SigningKey,
    /// Interval between checkpoints (a checkpoint is only signed when the chain grew).
    pub every: Duration,
    /// Append-only JSON-lines file every checkpoint is written to.
    pub file: Option<PathBuf>,
    /// Further publication (the relay's Kafka publisher listens here); a full channel drops
    /// the checkpoint with a warning rather than stall sealing: the table and the file keep it.
    pub publish: Option<tokio::sync::mpsc::Sender<SignedCheckpoint>>,
}

impl fmt::Debug for CheckpointOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointOptions")
            .field("key_id", &key_id(&self.key.verifying_key()))
            .field("every", &self.every)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The periodic signer driven by [`chain::run_sealer`].
pub(crate) struct Checkpointer {
    options: CheckpointOptions,
    last_count: Option<u64>,
    last_at: Option<Instant>,
}

impl Checkpointer {
    pub(crate) fn new(options: CheckpointOptions) -> Self {
        Self {
            options,
            last_count: None,
            last_at: None,
        }
    }

    pub(crate) async fn tick(&mut self, store: &EventStore) -> Result<(), StoreError> {
        if self
            .last_at
            .is_some_and(|t| t.elapsed() < self.options.every)
        {
            return Ok(());
        }
        self.force(store).await
    }

    pub(crate) async fn force(&mut self, store: &EventStore) -> Result<(), StoreError> {
        self.last_at = Some(Instant::now());
        let head = store.chain_head().await?;
        if self.last_count == Some(head.leaf_count) {
            return Ok(());
        }
        let cp = store.sign_checkpoint(&self.options.key).await?;
        if let Some(path) = self.options.file.clone() {
            let line = cp.clone();
            tokio::task::spawn_blocking(move || append_checkpoint_file(&path, &line))
                .await
                .map_err(|e| StoreError::Checkpoint(e.to_string()))?
                .map_err(|e| StoreError::Checkpoint(format!("checkpoint file: {e}")))?;
        }
        if let Some(tx) = &self.options.publish
            && tx.try_send(cp.clone()).is_err()
        {
            tracing::warn!(
                leaf_count = cp.leaf_count,
                "checkpoint not published: queue full"
            );
        }
        tracing::info!(
            leaf_count = cp.leaf_count,
            last_position = cp.last_position.0,
            root = %hex::encode(cp.root_hash),
            "signed checkpoint"
        );
        self.last_count = Some(cp.leaf_count);
        Ok(())
    }
}

/// What is wrong at the first bad leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainFault {
    /// The event's stored hash does not match its bytes (or its stream predecessor): bytes
    /// were changed without recomputing the hash, or a stream's versions have a hole.
    StreamChainBroken,
    /// The event at this leaf is not the one that was signed: it was rewritten (hashes
    /// recomputed), inserted, moved, or an event before it in the signed order was deleted.
    NotAsSigned,
    /// Fewer events than were signed: the tail (or everything from here) was deleted.
    Missing,
}

/// The first bad leaf against a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainFinding {
    /// Dense index of the first bad leaf (its rank in global order).
    pub leaf_index: u64,
    /// The first bad global position: what the signed chain had at this leaf when the stored
    /// tree proves it, else the event found there now.
    pub global_position: Option<Position>,
    /// The event stored at this leaf index now, if any.
    pub found_position: Option<Position>,
    /// What is wrong.
    pub fault: ChainFault,
    /// False when the chain tables were rewritten as well, so the bad leaf could only be
    /// narrowed down to leaves `[leaf_index, range_end)`.
    pub exact: bool,
    /// End (exclusive) of the leaf range the bad leaf lies in.
    pub range_end: u64,
}

/// Outcome of a verification against a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The checkpoint verified against.
    pub checkpoint: SignedCheckpoint,
    /// Events read (up to the checkpoint's last position).
    pub events_checked: u64,
    /// True when the recomputed root equals the signed one and every per-stream chain holds.
    pub intact: bool,
    /// The first bad leaf, when not intact.
    pub first_bad: Option<ChainFinding>,
    /// First problem of each broken per-stream chain (in position order).
    pub streams_broken: Vec<Tampering>,
}

const PAGE: i64 = 2_000;

impl EventStore {
    /// Signs the current sealed head with `key`, stores the checkpoint and returns it (it is
    /// the caller's to publish).
    #[tracing::instrument(name = "global_chain.sign_checkpoint", skip_all)]
    pub async fn sign_checkpoint(&self, key: &SigningKey) -> Result<SignedCheckpoint, StoreError> {
        let head = self.chain_head().await?;
        let cp = SignedCheckpoint::sign(key, head.leaf_count, head.last_position, head.root);
        sqlx::query(
            "INSERT INTO annals_checkpoints \
               (leaf_count, last_position, root_hash, signed_at, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(to_i64(cp.leaf_count))
        .bind(cp.last_position.0)
        .bind(cp.root_hash.as_slice())
        .bind(cp.signed_at)
        .bind(&cp.key_id)
        .bind(cp.signature.as_slice())
        .execute(self.pool())
        .await?;
        Ok(cp)
    }

    /// The newest stored checkpoint whose signature verifies with `key` (rows that do not are
    /// skipped: the table is not trusted, the key is).
    pub async fn latest_checkpoint(
        &self,
        key: &VerifyingKey,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT leaf_count, last_position, root_hash, signed_at, key_id, signature \
               FROM annals_checkpoints WHERE key_id = $1 ORDER BY leaf_count DESC LIMIT 100",
        )
        .bind(key_id(key))
        .fetch_all(self.pool())
        .await?;
        for row in rows {
            let cp = decode_checkpoint(&row)?;
            if cp.verify_signature(key).is_ok() {
                return Ok(Some(cp));
            }
        }
        Ok(None)
    }

    /// Verifies the store against a signed checkpoint in one REPEATABLE READ snapshot, paging
    /// through the events up to its last position; `progress(done, total)` is called after
    /// every page. Fails only when the checkpoint's signature does not verify or the database
    /// fails; tampering is reported in the [`ChainReport`].
    ///
    /// Memory: 40 bytes per covered event (the recomputed leaves, kept to locate a bad leaf
    /// when the chain tables were rewritten too) plus one entry per stream.
    #[tracing::instrument(name = "global_chain.verify", skip_all, fields(leaves = checkpoint.leaf_count))]
    pub async fn verify_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
        key: &VerifyingKey,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<ChainReport, StoreError> {
        checkpoint.verify_signature(key)?;
        let n = checkpoint.leaf_count;
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;

        const EVENTS: &str = concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE global_position > $1 AND global_position <= $2 \
             ORDER BY global_position LIMIT $3"
        );
        let mut rec = Recomputed::default();
        let mut stored = StoredLeaves::default();
        // Streams are (tenant, stream id): ids are unique per tenant only.
        let mut links: HashMap<(String, String), Link> = HashMap::new();
        let mut streams_broken = Vec::new();
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(EVENTS)
                .bind(after)
                .bind(checkpoint.last_position.0)
                .bind(PAGE)
                .fetch_all(&mut *tx)
                .await?;
            let first_index = rec.count();
            for row in &rows {
                let event = decode_event(row)?;
                let link = links
                    .entry((event.tenant_id.clone(), event.stream_id.clone()))
                    .or_insert_with(Link::from_start);
                streams_broken.extend(link.step(&event));
                rec.push(
                    event.global_position,
                    leaf_hash(event.global_position, &event.hash),
                    n,
                );
            }
            // The stored leaves at the same indexes, to compare on the way.
            let upto = rec.count().min(n);
            if upto > first_index {
                stored.read(&mut tx, first_index, upto, &rec).await?;
            }
            progress(rec.count().min(n), n);
            match rows.last() {
                Some(row) if rows.len() as i64 == PAGE => after = row.try_get("global_position")?,
                _ => break,
            }
        }
        // Signed leaves beyond what the events still hold (a cut tail): their stored rows.
        let mut from = rec.count();
        while from < n {
            let to = (from + PAGE as u64).min(n);
            stored.read(&mut tx, from, to, &rec).await?;
            from = to;
        }

        let chain_ok = rec.count() == n && rec.frontier.root() == checkpoint.root_hash;
        let mut first_bad = None;
        if !chain_ok {
            let mut found = locate(&mut tx, checkpoint, &rec, &stored).await?;
            if !found.exact {
                narrow(&mut tx, key, &rec, &mut found).await?;
            }
            first_bad = Some(found);
        }
        // A broken per-stream chain whose leaf precedes the located one comes first.
        if let Some(t) = streams_broken.first()
            && let Some(p) = t.global_position
        {
            let index = rec.index_of(p);
            if first_bad.as_ref().is_none_or(|f| index < f.leaf_index) {
                first_bad = Some(ChainFinding {
                    leaf_index: index,
                    global_position: Some(p),
                    found_position: Some(p),
                    fault: ChainFault::StreamChainBroken,
                    exact: true,
                    range_end: index + 1,
                });
            }
        }
        tx.commit().await?;
        streams_broken.sort_by_key(|t| t.global_position);
        Ok(ChainReport {
            checkpoint: checkpoint.clone(),
            events_checked: rec.count(),
            intact: first_bad.is_none(),
            first_bad,
            streams_broken,
        })
    }
}

/// Leaves recomputed from the events.
#[derive(Default)]
struct Recomputed {
    /// Root of the first `n` (signed) leaves.
    frontier: Frontier,
    positions: Vec<i64>,
    leaves: Vec<[u8; 32]>,
}

impl Recomputed {
    fn count(&self) -> u64 {
        self.leaves.len() as u64
    }

    fn push(&mut self, position: Position, leaf: [u8; 32], signed: u64) {
        if self.count() < signed {
            self.frontier.push(leaf, |_, _, _| {});
        }
        self.positions.push(position.0);
        self.leaves.push(leaf);
    }

    fn index_of(&self, p: Position) -> u64 {
        self.positions.partition_point(|x| *x < p.0) as u64
    }

    fn position(&self, index: u64) -> Option<Position> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.positions.get(i))
            .map(|p| Position(*p))
    }

    /// RFC 6962 root of recomputed leaves `[from, to)` (fewer when the events ran out).
    fn range_root(&self, from: u64, to: u64) -> [u8; 32] {
        let end = to.min(self.count());
        let mut f = Frontier::default();
        for i in from..end {
            f.push(self.leaves[i as usize], |_, _, _| {});
        }
        f.root()
    }
}

/// The stored leaves of the signed range, folded as they are read.
#[derive(Default)]
struct StoredLeaves {
    frontier: Frontier,
    /// False once a row is missing or out of order: the stored leaves then prove nothing.
    dense: bool,
    started: bool,
    /// First index where a stored leaf differs from the recomputed one (or is missing).
    first_diff: Option<u64>,
    /// Stored position of the first differing leaf.
    diff_position: Option<Position>,
}

impl StoredLeaves {
    async fn read(
        &mut self,
        conn: &mut PgConnection,
        from: u64,
        to: u64,
        rec: &Recomputed,
    ) -> Result<(), StoreError> {
        if !self.started {
            self.started = true;
            self.dense = true;
        }
        let rows = sqlx::query(
            "SELECT leaf_index, global_position, event_hash FROM annals_chain_leaves \
              WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&mut *conn)
        .await?;
        let mut expect = from;
        for row in &rows {
            let index = to_u64(row.try_get("leaf_index")?)?;
            if index != expect {
                self.dense = false;
                self.note_diff(expect, None);
            }
            expect = index + 1;
            let position = Position(row.try_get("global_position")?);
            let leaf = leaf_hash(position, &to_hash(row.try_get("event_hash")?)?);
            self.frontier.push(leaf, |_, _, _| {});
            if rec.leaves.get(index as usize) != Some(&leaf) {
                self.note_diff(index, Some(position));
            }
        }
        if expect != to {
            self.dense = false;
            self.note_diff(expect, None);
        }
        Ok(())
    }

    fn note_diff(&mut self, index: u64, position: Option<Position>) {
        if self.first_diff.is_none_or(|d| index < d) {
            self.first_diff = Some(index);
            self.diff_position = position;
        }
    }
}

/// Names the first bad leaf when the recomputed root differs from the signed one.
async fn locate(
    conn: &mut PgConnection,
    cp: &SignedCheckpoint,
    rec: &Recomputed,
    stored: &StoredLeaves,
) -> Result<ChainFinding, StoreError> {
    let n = cp.leaf_count;
    let finding = |index: u64, signed_position: Option<Position>, exact: bool, end: u64| {
        let found = rec.position(index);
        ChainFinding {
            leaf_index: index,
            global_position: signed_position.or(found),
            found_position: found,
            fault: if index >= rec.count() {
                ChainFault::Missing
            } else {
                ChainFault::NotAsSigned
            },
            exact,
            range_end: end,
        }
    };
    // 1. The stored leaves fold to the signed root: they are the signed leaves.
    if stored.dense && stored.frontier.count() == n && stored.frontier.root() == cp.root_hash {
        let index = stored.first_diff.unwrap_or(rec.count().min(n));
        return Ok(finding(index, stored.diff_position, true, index + 1));
    }
    // 2. Descend the stored nodes from the signed root, trusting only what hashes to it.
    let top = peaks(n);
    let Ok(stored_peaks) = read_nodes(conn, &top).await else {
        return Ok(finding(0, None, false, n));
    };
    if chain::fold_peaks(&stored_peaks) != cp.root_hash {
        return Ok(finding(0, None, false, n));
    }
    let mut node = None;
    for (p, trusted) in top.iter().zip(stored_peaks) {
        let (from, to) = span(*p);
        if rec.range_root(from, to) != trusted || to > rec.count() {
            node = Some((*p, trusted));
            break;
        }
    }
    let Some(((mut level, mut idx), mut trusted)) = node else {
        // Every peak recomputes: the difference is past the signed leaves.
        return Ok(finding(n, None, true, n + 1));
    };
    while level > 0 {
        let (l, r) = ((level - 1, idx * 2), (level - 1, idx * 2 + 1));
        let (lf, lt) = span(l);
        let (rf, rt) = span(r);
        let rec_l = rec.range_root(lf, lt);
        let rec_r = rec.range_root(rf, rt);
        let children = read_nodes(conn, &[l, r]).await.ok();
        let next = match children.as_deref() {
            Some([sl, sr]) if node_hash(sl, sr) == trusted => {
                if rec_l != *sl || lt > rec.count() {
                    Some((l, *sl))
                } else {
                    Some((r, *sr))
                }
            }
            Some([_, sr]) if node_hash(&rec_l, sr) == trusted => Some((r, *sr)),
            Some([sl, _]) if node_hash(sl, &rec_r) == trusted => Some((l, *sl)),
            _ => None,
        };
        match next {
            Some(((nl, ni), h)) => {
                (level, idx, trusted) = (nl, ni, h);
            }
            None => {
                let (from, to) = span((level, idx));
                return Ok(finding(from, None, false, to));
            }
        }
    }
    // A trusted leaf hash: the stored row names its position if it hashes to it.
    let row = sqlx::query(
        "SELECT global_position, event_hash FROM annals_chain_leaves WHERE leaf_index = $1",
    )
    .bind(to_i64(idx))
    .fetch_optional(&mut *conn)
    .await?;
    let mut signed_position = None;
    if let Some(row) = row {
        let position = Position(row.try_get("global_position")?);
        if leaf_hash(position, &to_hash(row.try_get("event_hash")?)?) == trusted {
            signed_position = Some(position);
        }
    }
    Ok(finding(idx, signed_position, true, idx + 1))
}

/// Narrows a bad leaf the stored tree could not locate with the other checkpoints `key` signed:
/// each proves its prefix, so the first bad leaf lies between the longest prefix that still
/// recomputes and the shortest that does not (a binary search; each probe rehashes a prefix).
async fn narrow(
    conn: &mut PgConnection,
    key: &VerifyingKey,
    rec: &Recomputed,
    finding: &mut ChainFinding,
) -> Result<(), StoreError> {
    let rows = sqlx::query(
        "SELECT leaf_count, last_position, root_hash, signed_at, key_id, signature \
           FROM annals_checkpoints \
          WHERE key_id = $1 AND leaf_count > $2 AND leaf_count < $3 ORDER BY leaf_count",
    )
    .bind(key_id(key))
    .bind(to_i64(finding.leaf_index))
    .bind(to_i64(finding.range_end))
    .fetch_all(&mut *conn)
    .await?;
    let mut signed: Vec<SignedCheckpoint> = Vec::new();
    for row in &rows {
        let cp = decode_checkpoint(row)?;
        // The table is not trusted: only what the key signed counts.
        if cp.verify_signature(key).is_ok()
            && signed.last().is_none_or(|l| l.leaf_count < cp.leaf_count)
        {
            signed.push(cp);
        }
    }
    let holds = |cp: &SignedCheckpoint| {
        cp.leaf_count <= rec.count() && rec.range_root(0, cp.leaf_count) == cp.root_hash
    };
    // Prefixes that hold come first: find the first that does not.
    let (mut lo, mut hi) = (0, signed.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if holds(&signed[mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo > 0 {
        finding.leaf_index = signed[lo - 1].leaf_count;
    }
    if let Some(bad) = signed.get(lo) {
        finding.range_end = bad.leaf_count;
    }
    finding.found_position = rec.position(finding.leaf_index);
    finding.global_position = finding.found_position;
    finding.fault = if finding.leaf_index >= rec.count() {
        ChainFault::Missing
    } else {
        ChainFault::NotAsSigned
    };
    finding.exact = finding.range_end == finding.leaf_index + 1;
    Ok(())
}

/// Leaves `[from, to)` covered by node `(level, idx)`.
fn span((level, idx): (u8, u64)) -> (u64, u64) {
    (idx << level, (idx + 1) << level)
}

pub(crate) fn decode_checkpoint(
    row: &sqlx::postgres::PgRow,
) -> Result<SignedCheckpoint, StoreError> {
    let signature: Vec<u8> = row.try_get("signature")?;
    Ok(SignedCheckpoint {
        leaf_count: to_u64(row.try_get("leaf_count")?)?,
        last_position: Position(row.try_get("last_position")?),
        root_hash: to_hash(row.try_get("root_hash")?)?,
        signed_at: row.try_get("signed_at")?,
        key_id: row.try_get("key_id")?,
        signature: <[u8; 64]>::try_from(signature)
            .map_err(|_| StoreError::Corrupt("signature is not 64 bytes".into()))?,
    })
}
