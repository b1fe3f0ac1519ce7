//! The global chain: one append-only Merkle tree over every event in global position order.
//!
//! Per-stream hash chains say nothing about a stream that vanished, a transaction that was
//! removed (positions are sparse, so it leaves no visible gap) or a cut tail whose stream head
//! was fixed. The global chain covers all of it: leaf `i` is the `i`-th event in position order,
//! `leaf_hash = SHA-256(0x00 || "annals.leaf.v1" || global_position || event hash)`, and the tree
//! has the shape of RFC 6962 / RFC 9162 (`node = SHA-256(0x01 || left || right)`, the root of
//! `n` leaves folds the complete subtrees of `n`'s binary decomposition from the right), so
//! inclusion proofs are the standard audit paths.
//!
//! The tree is built off the hot path by the sealer ([`run_sealer`]): it follows the safe
//! position exactly like [`EventStore::read_all`] (an event is sealed only when every
//! transaction with a smaller xid has ended), gives each event the next dense leaf index, and
//! stores every complete subtree in `annals_chain_nodes(level, idx, hash)`. A root or an audit
//! path is then O(log n) reads. Its progress (`annals_chain_state`) commits in the same
//! transaction as its rows, and sealers serialise on an advisory lock, so several processes may
//! run one and a crash loses nothing.
//!
//! The stored tree is only a cache: the trusted value is a root signed by the checkpointer
//! (see [`crate::checkpoint`]).

use std::future::Future;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};

use crate::checkpoint::{CheckpointOptions, Checkpointer};
use crate::error::StoreError;
use crate::store::EventStore;
use crate::types::Position;

/// Serialises sealers across processes (transaction-scoped advisory lock key).
const SEALER_LOCK: i64 = 0x616e_6e61_6c73_5345; // "annalsSE"

/// Hash of leaf data: an event's global position and its stored (per-stream chained) hash.
pub fn leaf_hash(position: Position, event_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(b"annals.leaf.v1");
    h.update(position.0.to_be_bytes());
    h.update(event_hash);
    h.finalize().into()
}

/// Hash of an interior node.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the empty tree (RFC 6962: the hash of the empty string).
pub fn empty_root() -> [u8; 32] {
    Sha256::digest([]).into()
}

/// The complete subtrees of the first `n` leaves, largest first: `(level, index)` pairs, where
/// level `k`, index `j` covers leaves `[j * 2^k, (j + 1) * 2^k)`.
pub fn peaks(n: u64) -> Vec<(u8, u64)> {
    subtrees(0, n)
}

/// The complete subtrees covering leaves `[from, to)` when `from` is aligned to the largest of
/// them (true of every range RFC 6962's recursion produces), largest first.
pub(crate) fn subtrees(from: u64, to: u64) -> Vec<(u8, u64)> {
    let mut out = Vec::new();
    let mut start = from;
    let mut rest = to.saturating_sub(from);
    while rest > 0 {
        let level = 63 - rest.leading_zeros() as u8;
        out.push((level, start >> level));
        start += 1 << level;
        rest -= 1 << level;
    }
    out
}

/// Folds complete-subtree hashes (largest first) into the root of their range.
pub fn fold_peaks(hashes: &[[u8; 32]]) -> [u8; 32] {
    match hashes.split_last() {
        None => empty_root(),
        Some((last, rest)) => rest
            .iter()
            .rev()
            .fold(*last, |acc, left| node_hash(left, &acc)),
    }
}

/// Builds the tree incrementally: push leaves in order, read the root at any time. Memory is
/// O(log n): only the current complete subtrees are kept.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    count: u64,
    /// (level, hash) of the complete subtrees, largest first.
    stack: Vec<(u8, [u8; 32])>,
}

impl Frontier {
    /// A frontier after `count` leaves, from its complete subtrees (largest first, as
    /// [`peaks`] lists them).
    pub fn from_peaks(count: u64, hashes: &[[u8; 32]]) -> Result<Self, StoreError> {
        let levels = peaks(count);
        if levels.len() != hashes.len() {
            return Err(StoreError::Corrupt(
                "the global chain is missing a node".into(),
            ));
        }
        Ok(Self {
            count,
            stack: levels
                .iter()
                .map(|(l, _)| *l)
                .zip(hashes.iter().copied())
                .collect(),
        })
    }

    /// Leaves pushed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends a leaf hash; calls `completed(level, index, hash)` for the leaf itself (level 0)
    /// and every subtree it completes.
    pub fn push(&mut self, leaf: [u8; 32], mut completed: impl FnMut(u8, u64, [u8; 32])) {
        let index = self.count;
        completed(0, index, leaf);
        let mut hash = leaf;
        let mut level = 0u8;
        while let Some((top, left)) = self.stack.last().copied() {
            if top != level {
                break;
            }
            self.stack.pop();
            hash = node_hash(&left, &hash);
            level += 1;
            completed(level, index >> level, hash);
        }
        self.stack.push((level, hash));
        self.count += 1;
    }

    /// Root of the leaves pushed so far.
    pub fn root(&self) -> [u8; 32] {
        let hashes: Vec<[u8; 32]> = self.stack.iter().map(|(_, h)| *h).collect();
        fold_peaks(&hashes)
    }
}

/// The nodes an RFC 9162 audit path of leaf `index` in a tree of `size` leaves consists of, in
/// path order (nearest sibling first); each is a range `[from, to)` whose hash is the fold of
/// its complete subtrees.
pub fn audit_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    fn walk(m: u64, from: u64, to: u64, out: &mut Vec<(u64, u64)>) {
        let n = to - from;
        if n <= 1 {
            return;
        }
        let k = 1u64 << (63 - (n - 1).leading_zeros());
        if m < k {
            walk(m, from, from + k, out);
            out.push((from + k, to));
        } else {
            walk(m - k, from + k, to, out);
            out.push((from, from + k));
        }
    }
    let mut out = Vec::new();
    if index < size {
        walk(index, 0, size, &mut out);
    }
    out
}

/// Checks an RFC 9162 (section 2.1.3.2) inclusion proof: that `leaf` is leaf `index` of the
/// tree of `size` leaves whose root is `root`. O(log size) hashes, no other input.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8; 32],
    path: &[[u8; 32]],
    root: &[u8; 32],
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// Reads stored nodes (any level) by `(level, index)`, in the order asked.
pub(crate) async fn read_nodes(
    conn: &mut PgConnection,
    wanted: &[(u8, u64)],
) -> Result<Vec<[u8; 32]>, StoreError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let levels: Vec<i16> = wanted.iter().map(|(l, _)| i16::from(*l)).collect();
    let idxs: Vec<i64> = wanted.iter().map(|(_, i)| to_i64(*i)).collect();
    let rows = sqlx::query(
        "SELECT w.ord, n.hash FROM unnest($1::smallint[], $2::bigint[]) WITH ORDINALITY \
                AS w(level, idx, ord) \
           JOIN annals_chain_nodes n ON n.level = w.level AND n.idx = w.idx ORDER BY w.ord",
    )
    .bind(&levels)
    .bind(&idxs)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != wanted.len() {
        return Err(StoreError::Corrupt(
            "the global chain is missing a node".into(),
        ));
    }
    rows.iter()
        .map(|r| to_hash(r.try_get("hash")?))
        .collect::<Result<Vec<_>, _>>()
}

/// The sealed head: how many leaves, the last sealed position, and the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Leaves sealed.
    pub leaf_count: u64,
    /// Global position of the last sealed event (`START` when none).
    pub last_position: Position,
    /// Root of the sealed leaves.
    pub root: [u8; 32],
}

/// Reads the sealed head on `conn` (the state row and the O(log n) peaks).
pub(crate) async fn read_head(conn: &mut PgConnection) -> Result<ChainHead, StoreError> {
    let (count, last): (i64, i64) =
        sqlx::query_as("SELECT leaf_count, last_position FROM annals_chain_state")
            .fetch_one(&mut *conn)
            .await?;
    let count = to_u64(count)?;
    let hashes = read_nodes(conn, &peaks(count)).await?;
    Ok(ChainHead {
        leaf_count: count,
        last_position: Position(last),
        root: fold_peaks(&hashes),
    })
}

/// How the sealer runs.
#[derive(Debug, Clone)]
pub struct SealerOptions {
    /// Most events sealed per transaction.
    pub batch: u32,
    /// Pause when there was nothing to seal.
    pub idle: Duration,
    /// Sign checkpoints of the head as well (needs the private key).
    pub checkpoint: Option<CheckpointOptions>,
}

impl Default for SealerOptions {
    fn default() -> Self {
        Self {
            batch: 5_000,
            idle: Duration::from_millis(200),
            checkpoint: None,
        }
    }
}

impl EventStore {
    /// Seals up to `batch` deliverable events into the global chain in one transaction and
    /// returns how many. Idempotent and safe to run from several processes at once.
    pub async fn seal(&self, batch: u32) -> Result<u64, StoreError> {
        // Like `read_all`: an event is safe to seal once every transaction with a smaller xid
        // has ended. The advisory lock assigns no xid, so this transaction does not hold back
        // its own reads.
        const NEXT: &str = "SELECT global_position, hash, \
               (global_position < annals_delivery_floor() \
                OR tx_id < pg_snapshot_xmin(pg_current_snapshot())) AS deliverable \
             FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2";
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SEALER_LOCK)
            .execute(&mut *tx)
            .await?;
        let (count, last): (i64, i64) =
            sqlx::query_as("SELECT leaf_count, last_position FROM annals_chain_state")
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(NEXT)
            .bind(last)
            .bind(i64::from(batch.max(1)))
            .fetch_all(&mut *tx)
            .await?;
        let count = to_u64(count)?;
        let peak_hashes = read_nodes(&mut tx, &peaks(count)).await?;
        let mut frontier = Frontier::from_peaks(count, &peak_hashes)?;
        let (mut leaf_idx, mut leaf_pos, mut leaf_hashes) = (Vec::new(), Vec::new(), Vec::new());
        let (mut levels, mut idxs, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
        let mut last_position = last;
        for row in &rows {
            // Positions follow xid order: the first held-back row ends the safe prefix.
            if !row.try_get::<bool, _>("deliverable")? {
                break;
            }
            let position: i64 = row.try_get("global_position")?;
            let hash = to_hash(row.try_get("hash")?)?;
            leaf_idx.push(to_i64(frontier.count()));
            leaf_pos.push(position);
            leaf_hashes.push(hash.to_vec());
            frontier.push(leaf_hash(Position(position), &hash), |level, idx, h| {
                levels.push(i16::from(level));
                idxs.push(to_i64(idx));
                hashes.push(h.to_vec());
            });
            last_position = position;
        }
        let sealed = leaf_idx.len() as u64;
        if sealed == 0 {
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO annals_chain_leaves (leaf_index, global_position, event_hash) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
        )
        .bind(&leaf_idx)
        .bind(&leaf_pos)
        .bind(&leaf_hashes)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO annals_chain_nodes (level, idx, hash) \
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
        )
        .bind(&levels)
        .bind(&idxs)
        .bind(&hashes)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE annals_chain_state SET leaf_count = $1, last_position = $2")
            .bind(to_i64(frontier.count()))
            .bind(last_position)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("annals_chain_sealed_total").increment(sealed);
        Ok(sealed)
    }

    /// Seals until nothing deliverable is left; returns how many events were sealed.
    pub async fn seal_all(&self, batch: u32) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self.seal(batch).await?;
            total += n;
            if n < u64::from(batch.max(1)) {
                return Ok(total);
            }
        }
    }

    /// The sealed head of the global chain (one snapshot).
    pub async fn chain_head(&self) -> Result<ChainHead, StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let head = read_head(&mut tx).await?;
        tx.commit().await?;
        Ok(head)
    }
}

/// Runs the sealer (and, when configured, the checkpointer) until `shutdown` resolves. Errors
/// are logged and retried after a pause: the sealer is a follower, never a reason to stop the
/// process.
#[tracing::instrument(name = "global_chain.sealer", skip_all)]
pub async fn run_sealer(
    store: EventStore,
    options: SealerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StoreError> {
    tokio::pin!(shutdown);
    let mut checkpointer = options.checkpoint.clone().map(Checkpointer::new);
    loop {
        let sealed = match store.seal(options.batch).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "sealing the global chain failed; retrying");
                0
            }
        };
        if let Some(c) = checkpointer.as_mut()
            && let Err(e) = c.tick(&store).await
        {
            tracing::warn!(error = %e, "signing a checkpoint failed; retrying");
        }
        if sealed >= u64::from(options.batch.max(1)) {
            continue;
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(options.idle) => {}
        }
    }
    // Seal what is safe and sign it, so that a clean stop leaves nothing unsigned.
    store.seal_all(options.batch).await?;
    if let Some(c) = checkpointer.as_mut() {
        c.force(&store).await?;
    }
    Ok(())
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt("negative leaf count".into()))
}

pub(crate) fn to_hash(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::Corrupt("hash is not 32 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's recursive definition, the reference the incremental code must agree with.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = 1usize << (63 - ((n - 1) as u64).leading_zeros());
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| leaf_hash(Position(i as i64 * 65536), &[i as u8; 32]))
            .collect()
    }

    #[test]
    fn frontier_and_paths_agree_with_rfc_6962() {
        for n in 0..40u64 {
            let ls = leaves(n);
            let mut f = Frontier::default();
            let mut nodes = std::collections::HashMap::new();
            for l in &ls {
                f.push(*l, |level, idx, h| {
                    nodes.insert((level, idx), h);
                });
            }
            assert_eq!(f.root(), mth(&ls), "root of {n}");
            let peak_hashes: Vec<_> = peaks(n).iter().map(|p| nodes[p]).collect();
            assert_eq!(fold_peaks(&peak_hashes), mth(&ls));
            for m in 0..n {
                let path: Vec<[u8; 32]> = audit_ranges(m, n)
                    .iter()
                    .map(|(a, b)| mth(&ls[*a as usize..*b as usize]))
                    .collect();
                assert!(verify_inclusion(m, n, &ls[m as usize], &path, &f.root()));
                let wrong = leaf_hash(Position(1), &[9; 32]);
                assert!(!verify_inclusion(m, n, &wrong, &path, &f.root()));
                if n > 1 {
                    assert!(!verify_inclusion(
                        (m + 1) % n,
                        n,
                        &ls[m as usize],
                        &path,
                        &f.root()
                    ));
                }
            }
        }
    }
}
