//! The global chain, signed checkpoints and inclusion proofs against a real Postgres: the
//! strongest attacker (table owner, trigger disabled, every hash recomputed with the shipped
//! SQL function, stream heads and the chain's leaf table rewritten to match) is caught by a
//! checkpoint signed before the tampering, which names the first bad leaf.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::time::Duration;

use event_store::checkpoint::{SigningKey, generate_key, read_checkpoint_file};
use event_store::{
    AppendBatch, ChainFault, ChainReport, CheckpointOptions, EventStore, ExpectedVersion, MIGRATOR,
    Metadata, NewEvent, Position, SealerOptions, SignedCheckpoint, StreamId,
};
use serde_json::json;
use sqlx::PgPool;

fn batch(streams: &[&str], round: usize) -> AppendBatch {
    let mut b = AppendBatch::new(Metadata::new("tenant-a", "user-1", "user"));
    for s in streams {
        b = b.stream(
            StreamId::new(*s).unwrap(),
            "test",
            ExpectedVersion::Any,
            (0..2)
                .map(|i| {
                    NewEvent::new(
                        "test.happened",
                        1,
                        json!({ "s": s, "round": round, "i": i }),
                    )
                })
                .collect(),
        );
    }
    b
}

/// Four streams with interleaved appends, one of them a two-stream transaction.
async fn seed(store: &EventStore) {
    for round in 0..3 {
        for s in ["alpha", "bravo", "charlie", "delta"] {
            store.append(batch(&[s], round)).await.unwrap();
        }
        if round == 1 {
            store.append(batch(&["alpha", "bravo"], 9)).await.unwrap();
        }
    }
}

/// Seals every event. The safe position can lag while a transaction anywhere in the cluster
/// (another test's database) is open, so this retries, bounded, until the chain covers them all.
async fn seal_everything(store: &EventStore, pool: &PgPool, batch: u32) {
    let total = positions(pool).await.len() as u64;
    for _ in 0..1_200 {
        store.seal_all(batch).await.unwrap();
        if store.chain_head().await.unwrap().leaf_count == total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sealer did not reach every event within 60 s");
}

async fn positions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT global_position FROM events ORDER BY global_position")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn position_of(pool: &PgPool, stream: &str, version: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT global_position FROM events WHERE stream_id = $1 AND stream_version = $2",
    )
    .bind(stream)
    .bind(version)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The attacker's tools, created as the table owner: recompute a stream's chain (renumbering
/// versions) and its head with the shipped `annals_event_hash`, and rebuild the chain's leaf
/// table and state from the (tampered) events.
const ATTACKER: &str = r#"
CREATE FUNCTION attacker_rechain(p_stream TEXT) RETURNS void LANGUAGE plpgsql AS $$
DECLARE r RECORD; prev BYTEA := '\x0000000000000000000000000000000000000000000000000000000000000000'; v BIGINT := 0;
BEGIN
    FOR r IN SELECT * FROM events WHERE stream_id = p_stream ORDER BY stream_version LOOP
        v := v + 1;
        prev := annals_event_hash(prev, r.global_position, r.event_id, r.stream_id, r.stream_type,
                v, r.tenant_id, r.event_type, r.schema_version, r.payload::text, r.metadata::text,
                r.recorded_at);
        UPDATE events SET stream_version = v, hash = prev WHERE global_position = r.global_position;
    END LOOP;
    IF v = 0 THEN
        DELETE FROM streams WHERE stream_id = p_stream;
    ELSE
        UPDATE streams SET version = v, last_hash = prev WHERE stream_id = p_stream;
    END IF;
END $$;
CREATE FUNCTION attacker_releaf() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM annals_chain_leaves;
    INSERT INTO annals_chain_leaves (leaf_index, global_position, event_hash)
    SELECT row_number() OVER (ORDER BY global_position) - 1, global_position, hash
      FROM events WHERE global_position <= (SELECT last_position FROM annals_chain_state);
    UPDATE annals_chain_state SET leaf_count = (SELECT count(*) FROM annals_chain_leaves);
END $$;
"#;

struct Scene {
    store: EventStore,
    pool: PgPool,
    key: SigningKey,
    checkpoint: SignedCheckpoint,
    before: Vec<i64>,
}

async fn scene(pool: PgPool) -> Scene {
    let store = EventStore::new(pool.clone());
    seed(&store).await;
    seal_everything(&store, &pool, 7).await;
    let key = generate_key();
    let checkpoint = store.sign_checkpoint(&key).await.unwrap();
    let before = positions(&pool).await;
    assert_eq!(checkpoint.leaf_count, before.len() as u64);
    let report = verify(&store, &key, &checkpoint).await;
    assert!(report.intact, "{report:?}");
    sqlx::raw_sql(ATTACKER).execute(&pool).await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&pool)
        .await
        .unwrap();
    Scene {
        store,
        pool,
        key,
        checkpoint,
        before,
    }
}

async fn verify(store: &EventStore, key: &SigningKey, cp: &SignedCheckpoint) -> ChainReport {
    store
        .verify_checkpoint(cp, &key.verifying_key(), |_, _| {})
        .await
        .unwrap()
}

impl Scene {
    async fn sql(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap();
    }

    fn rank(&self, position: i64) -> u64 {
        self.before.iter().position(|p| *p == position).unwrap() as u64
    }

    /// Verifies against the checkpoint signed before the tampering and checks what it names.
    async fn expect(&self, leaf_index: u64, position: Option<i64>, fault: ChainFault) {
        // The per-stream verifier, fooled where every hash was recomputed, is not the judge.
        let report = verify(&self.store, &self.key, &self.checkpoint).await;
        assert!(!report.intact, "tampering not detected: {report:?}");
        let bad = report.first_bad.clone().unwrap();
        assert_eq!(bad.leaf_index, leaf_index, "{report:?}");
        assert_eq!(bad.global_position.map(|p| p.0), position, "{report:?}");
        assert_eq!(bad.fault, fault, "{report:?}");
        assert!(bad.exact, "{report:?}");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_changed_byte_is_named(pool: PgPool) {
    let s = scene(pool).await;
    let target = position_of(&s.pool, "bravo", 2).await;
    s.sql(
        "UPDATE events SET payload = replace(payload::text, '\"i\":1', '\"i\":7')::json \
          WHERE stream_id = 'bravo' AND stream_version = 2",
    )
    .await;
    s.expect(s.rank(target), Some(target), ChainFault::StreamChainBroken)
        .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_rewritten_payload_with_every_hash_recomputed_is_named(pool: PgPool) {
    let s = scene(pool).await;
    let target = position_of(&s.pool, "bravo", 2).await;
    s.sql(
        "UPDATE events SET payload = replace(payload::text, '\"i\":1', '\"i\":7')::json \
          WHERE stream_id = 'bravo' AND stream_version = 2; \
         SELECT attacker_rechain('bravo'); SELECT attacker_releaf();",
    )
    .await;
    // The per-stream chains alone see nothing.
    assert!(s.store.verify_all().await.unwrap().is_intact());
    s.expect(s.rank(target), Some(target), ChainFault::NotAsSigned)
        .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_deleted_event_is_named(pool: PgPool) {
    let s = scene(pool).await;
    let target = position_of(&s.pool, "charlie", 3).await;
    s.sql(
        "DELETE FROM events WHERE stream_id = 'charlie' AND stream_version = 3; \
         SELECT attacker_rechain('charlie'); SELECT attacker_releaf();",
    )
    .await;
    assert!(s.store.verify_all().await.unwrap().is_intact());
    let rank = s.rank(target);
    // The leaf table was rewritten, so the event now at that rank is what can be named.
    let next = s.before[rank as usize + 1];
    s.expect(rank, Some(next), ChainFault::NotAsSigned).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_deleted_stream_is_named(pool: PgPool) {
    let s = scene(pool).await;
    let first = position_of(&s.pool, "delta", 1).await;
    s.sql(
        "DELETE FROM events WHERE stream_id = 'delta'; DELETE FROM streams WHERE stream_id = 'delta'; \
         SELECT attacker_releaf();",
    )
    .await;
    assert!(s.store.verify_all().await.unwrap().is_intact());
    let rank = s.rank(first);
    // Delta's first append wrote two events: the next survivor is two leaves on.
    s.expect(
        rank,
        Some(s.before[rank as usize + 2]),
        ChainFault::NotAsSigned,
    )
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_deleted_transaction_is_named(pool: PgPool) {
    let s = scene(pool).await;
    // The two-stream append: alpha and bravo, round 9, one transaction.
    let first: i64 =
        sqlx::query_scalar("SELECT min(global_position) FROM events WHERE payload->>'round' = '9'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    s.sql(
        "DELETE FROM events WHERE tx_id = (SELECT tx_id FROM events WHERE payload->>'round' = '9' LIMIT 1); \
         SELECT attacker_rechain('alpha'); SELECT attacker_rechain('bravo'); SELECT attacker_releaf();",
    )
    .await;
    assert!(s.store.verify_all().await.unwrap().is_intact());
    let rank = s.rank(first);
    s.expect(
        rank,
        Some(s.before[rank as usize + 4]),
        ChainFault::NotAsSigned,
    )
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_truncated_tail_is_named(pool: PgPool) {
    let s = scene(pool).await;
    // The last three events in global order, heads fixed.
    let cut = s.before[s.before.len() - 3];
    s.sql(&format!(
        "DELETE FROM events WHERE global_position >= {cut}; \
         SELECT attacker_rechain(id) FROM (VALUES ('alpha'), ('bravo'), ('charlie'), ('delta')) v(id); \
         SELECT attacker_releaf();"
    ))
    .await;
    assert!(s.store.verify_all().await.unwrap().is_intact());
    s.expect(s.rank(cut), None, ChainFault::Missing).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_inserted_event_is_named(pool: PgPool) {
    let s = scene(pool).await;
    let anchor = position_of(&s.pool, "charlie", 2).await;
    let inserted = anchor + 1;
    s.sql(&format!(
        "INSERT INTO events (global_position, event_id, stream_id, stream_type, stream_version, \
                             tenant_id, event_type, schema_version, payload, metadata, recorded_at, \
                             tx_id, hash) \
         SELECT {inserted}, gen_random_uuid(), 'intruder', 'test', 1, tenant_id, event_type, 1, \
                '{{\"forged\":true}}', metadata, recorded_at, tx_id, decode(repeat('00', 32), 'hex') \
           FROM events WHERE global_position = {anchor}; \
         INSERT INTO streams (stream_id, stream_type, tenant_id, version, last_hash, created_at, updated_at) \
         VALUES ('intruder', 'test', 'tenant-a', 1, decode(repeat('00', 32), 'hex'), now(), now()) ON CONFLICT DO NOTHING; \
         SELECT attacker_rechain('intruder'); SELECT attacker_releaf();"
    ))
    .await;
    assert!(s.store.verify_all().await.unwrap().is_intact());
    s.expect(s.rank(anchor) + 1, Some(inserted), ChainFault::NotAsSigned)
        .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn swapped_events_are_named(pool: PgPool) {
    let s = scene(pool).await;
    let a = position_of(&s.pool, "alpha", 3).await;
    let d = position_of(&s.pool, "delta", 3).await;
    s.sql(&format!(
        "UPDATE events SET global_position = -1 WHERE global_position = {a}; \
         UPDATE events SET global_position = {a} WHERE global_position = {d}; \
         UPDATE events SET global_position = {d} WHERE global_position = -1; \
         SELECT attacker_rechain('alpha'); SELECT attacker_rechain('delta'); SELECT attacker_releaf();"
    ))
    .await;
    assert!(s.store.verify_all().await.unwrap().is_intact());
    let first = a.min(d);
    s.expect(s.rank(first), Some(first), ChainFault::NotAsSigned)
        .await;
}

/// An attacker who also rebuilds the whole Merkle tree cannot reach the signed root: the
/// tampering is detected, and the bad leaf is narrowed to a range that contains it.
#[sqlx::test(migrator = "MIGRATOR")]
async fn rebuilding_the_whole_chain_is_still_detected(pool: PgPool) {
    let s = scene(pool).await;
    let target = position_of(&s.pool, "bravo", 2).await;
    s.sql(
        "UPDATE events SET payload = replace(payload::text, '\"i\":1', '\"i\":7')::json \
          WHERE stream_id = 'bravo' AND stream_version = 2; \
         SELECT attacker_rechain('bravo'); \
         DELETE FROM annals_chain_leaves; DELETE FROM annals_chain_nodes; \
         UPDATE annals_chain_state SET leaf_count = 0, last_position = 0;",
    )
    .await;
    seal_everything(&s.store, &s.pool, 100).await;
    let report = verify(&s.store, &s.key, &s.checkpoint).await;
    assert!(!report.intact);
    let bad = report.first_bad.unwrap();
    let rank = s.rank(target);
    assert!(bad.leaf_index <= rank && rank < bad.range_end, "{bad:?}");
}

/// Against the same attacker, earlier checkpoints of the same key narrow the range: each
/// proves its prefix. Signed after every append here, they pin the bad leaf to one append.
#[sqlx::test(migrator = "MIGRATOR")]
async fn earlier_checkpoints_narrow_a_rebuilt_chain_down(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let key = generate_key();
    for round in 0..3 {
        for s in ["alpha", "bravo", "charlie", "delta"] {
            store.append(batch(&[s], round)).await.unwrap();
            seal_everything(&store, &pool, 100).await;
            store.sign_checkpoint(&key).await.unwrap();
        }
    }
    let checkpoint = store
        .latest_checkpoint(&key.verifying_key())
        .await
        .unwrap()
        .unwrap();
    let before = positions(&pool).await;
    sqlx::raw_sql(ATTACKER).execute(&pool).await.unwrap();
    let target = position_of(&pool, "charlie", 3).await;
    sqlx::raw_sql(
        "ALTER TABLE events DISABLE TRIGGER USER; \
         UPDATE events SET payload = replace(payload::text, '\"i\":0', '\"i\":7')::json \
          WHERE stream_id = 'charlie' AND stream_version = 3; \
         SELECT attacker_rechain('charlie'); \
         DELETE FROM annals_chain_leaves; DELETE FROM annals_chain_nodes; \
         UPDATE annals_chain_state SET leaf_count = 0, last_position = 0;",
    )
    .execute(&pool)
    .await
    .unwrap();
    seal_everything(&store, &pool, 100).await;
    let report = verify(&store, &key, &checkpoint).await;
    assert!(!report.intact);
    let bad = report.first_bad.unwrap();
    let rank = before.iter().position(|p| *p == target).unwrap() as u64;
    // Charlie's version 3 is the first event of its append (two events): the range is exact.
    assert_eq!((bad.leaf_index, bad.range_end), (rank, rank + 2), "{bad:?}");
    assert_eq!(bad.global_position, Some(Position(target)));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_forged_checkpoint_is_refused(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    seed(&store).await;
    seal_everything(&store, &pool, 100).await;
    let key = generate_key();
    let mut cp = store.sign_checkpoint(&key).await.unwrap();
    let other = generate_key();
    assert!(
        store
            .verify_checkpoint(&cp, &other.verifying_key(), |_, _| {})
            .await
            .is_err()
    );
    cp.root_hash[0] ^= 1;
    assert!(
        store
            .verify_checkpoint(&cp, &key.verifying_key(), |_, _| {})
            .await
            .is_err()
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn inclusion_proofs_check_offline(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    seed(&store).await;
    seal_everything(&store, &pool, 5).await;
    let key = generate_key();
    let cp = store.sign_checkpoint(&key).await.unwrap();
    let ids: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (i, id) in ids.iter().enumerate() {
        let proof = store.inclusion_proof(*id, None).await.unwrap().unwrap();
        assert_eq!(proof.leaf_index, i as u64);
        assert_eq!(proof.checkpoint, cp);
        // Through JSON, as an auditor receives it.
        let text = serde_json::to_string(&proof).unwrap();
        let proof: event_store::InclusionProof = serde_json::from_str(&text).unwrap();
        proof.check(&key.verifying_key()).unwrap();
    }
    let proof = store.inclusion_proof(ids[5], None).await.unwrap().unwrap();

    let mut altered = proof.clone();
    altered.event.payload = altered.event.payload.replace("\"i\":", "\"i\": ");
    assert!(
        altered.check(&key.verifying_key()).is_err(),
        "altered bytes"
    );
    let mut rehashed = proof.clone();
    rehashed.event.hash[3] ^= 1;
    assert!(
        rehashed.check(&key.verifying_key()).is_err(),
        "altered hash"
    );
    let mut moved = proof.clone();
    moved.leaf_index += 1;
    assert!(moved.check(&key.verifying_key()).is_err(), "another leaf");
    let mut edited_root = proof.clone();
    edited_root.checkpoint.root_hash[0] ^= 1;
    assert!(
        edited_root.check(&key.verifying_key()).is_err(),
        "edited root"
    );
    let forger = generate_key();
    let forged = event_store::InclusionProof {
        checkpoint: SignedCheckpoint::sign(&forger, cp.leaf_count, cp.last_position, cp.root_hash),
        ..proof.clone()
    };
    assert!(forged.check(&key.verifying_key()).is_err(), "wrong key");
    assert!(
        store
            .inclusion_proof(uuid::Uuid::new_v4(), None)
            .await
            .unwrap()
            .is_none()
    );
}

/// Verification (against checkpoints and of the per-stream chains) while eight writers
/// append and the sealer and checkpointer run: intact every time.
#[sqlx::test(migrator = "MIGRATOR")]
async fn verification_during_concurrent_writes_is_always_intact(pool: PgPool) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 60;
    let store = EventStore::new(pool.clone());
    let key = generate_key();
    let dir = std::env::temp_dir().join(format!("annals-cp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("checkpoints.jsonl");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sealer = tokio::spawn(event_store::run_sealer(
        store.clone(),
        SealerOptions {
            batch: 50,
            idle: Duration::from_millis(20),
            checkpoint: Some(CheckpointOptions {
                key: key.clone(),
                every: Duration::from_millis(50),
                file: Some(file.clone()),
                publish: None,
            }),
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..APPENDS {
                    let s = format!("w{w}-{}", n % 5);
                    store.append(batch(&[&s], n)).await.unwrap();
                }
            })
        })
        .collect();
    let mut rounds = 0;
    while writers.iter().any(|w| !w.is_finished()) || rounds < 5 {
        rounds += 1;
        let report = store.verify_all().await.unwrap();
        assert!(report.is_intact(), "round {rounds}: {report:?}");
        store.seal(200).await.unwrap();
        let cp = store.sign_checkpoint(&key).await.unwrap();
        let report = store
            .verify_checkpoint(&cp, &key.verifying_key(), |_, _| {})
            .await
            .unwrap();
        assert!(report.intact, "round {rounds}: {report:?}");
        if rounds > 500 {
            panic!("writers did not finish within 500 verification rounds");
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    // The safe position may lag behind another database's open transaction (same cluster):
    // wait, bounded, until everything is sealed, so the final checkpoint covers it all.
    seal_everything(&store, &pool, 200).await;
    stop.send(()).unwrap();
    sealer.await.unwrap().unwrap();
    // After a clean stop everything is sealed and signed; every signed line verifies.
    let lines = read_checkpoint_file(&file).unwrap();
    assert!(!lines.is_empty());
    let last = lines.last().unwrap();
    assert_eq!(last.leaf_count, (WRITERS * APPENDS * 2) as u64);
    for cp in &lines {
        let report = store
            .verify_checkpoint(cp, &key.verifying_key(), |_, _| {})
            .await
            .unwrap();
        assert!(report.intact, "{report:?}");
    }
    assert_eq!(
        store
            .latest_checkpoint(&key.verifying_key())
            .await
            .unwrap()
            .unwrap()
            .leaf_count,
        last.leaf_count
    );
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(
        Position(last.last_position.0),
        store.chain_head().await.unwrap().last_position
    );
}
