//! Group commit and the hardened append, proved against a real Postgres (a fresh database per
//! test): appends that share a transaction each keep the outcome they would have had alone.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use event_store::{
    AppendBatch, AppendResult, Direction, EventStore, ExpectedVersion, GroupCommitOptions,
    MIGRATOR, Metadata, NewEvent, Position, StoreError, StreamId,
};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

fn meta(tenant: &str) -> Metadata {
    Metadata::new(tenant, "user-1", "user")
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn events(n: usize, tag: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new("test.happened", 1, json!({ "tag": tag, "i": i })))
        .collect()
}

fn one(stream: &str, expected: ExpectedVersion, n: usize) -> AppendBatch {
    AppendBatch::new(meta("tenant-a")).stream(sid(stream), "test", expected, events(n, stream))
}

/// Polls `done` until it holds, failing the test after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads after `after` once nothing is held back. The horizon (`pg_snapshot_xmin`) is
/// cluster-wide: an open transaction of a test running in parallel can hold delivery back for
/// a moment after this test's own transactions ended; the wait is bounded.
async fn read_settled(store: &EventStore, after: Position, limit: u32) -> event_store::AllBatch {
    let deadline = Instant::now() + WAIT;
    loop {
        let batch = store.read_all(after, limit).await.unwrap();
        if !batch.held_back {
            return batch;
        }
        assert!(Instant::now() < deadline, "reads stayed held back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Holds the advisory lock an append takes on tenant-a's `stream` from its own connection, so that a
/// group appending to it waits until [`release`] while later appends queue behind it.
async fn hold_stream_lock(
    pool: &PgPool,
    stream: &str,
) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(annals_stream_lock_key('tenant-a', $1))")
        .bind(stream)
        .execute(&mut *conn)
        .await
        .unwrap();
    conn
}

async fn release(mut conn: sqlx::pool::PoolConnection<sqlx::Postgres>) {
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *conn)
        .await
        .unwrap();
}

async fn lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Every stream's versions are 1..=n with no gap, and its head agrees.
async fn assert_streams_contiguous(pool: &PgPool) {
    let bad: Vec<String> = sqlx::query_scalar(
        "SELECT e.stream_id FROM events e JOIN streams s USING (tenant_id, stream_id) \
         GROUP BY e.tenant_id, e.stream_id, s.version \
         HAVING min(e.stream_version) <> 1 OR max(e.stream_version) <> count(*) \
             OR max(e.stream_version) <> s.version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(bad.is_empty(), "streams with gaps: {bad:?}");
}

/// What each of the queued appends is, and what it must get.
#[derive(Debug)]
enum Expect {
    Appended {
        events: usize,
    },
    Replayed(Box<AppendResult>),
    Conflict {
        stream: String,
        actual: Option<u64>,
    },
    Reused,
    OtherType,
    /// One of a set of racers on one version: exactly one of the set wins.
    Racer,
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sixty_four_appends_share_transactions_and_keep_their_own_outcomes(pool: PgPool) {
    let store = EventStore::with_options(
        pool.clone(),
        GroupCommitOptions {
            max_in_flight: 1,
            ..GroupCommitOptions::default()
        },
    );
    // History the queued appends refer to.
    store
        .append(one("hot", ExpectedVersion::NoStream, 2))
        .await
        .unwrap();
    store
        .append(one("existing", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    store
        .append(one("quiet", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    let theirs = AppendBatch::new(meta("tenant-b")).stream(
        sid("theirs"),
        "test",
        ExpectedVersion::NoStream,
        events(1, "theirs"),
    );
    store.append(theirs).await.unwrap();
    let done_id = Uuid::now_v7();
    let done_batch = one("done", ExpectedVersion::NoStream, 2).idempotent(done_id);
    let done = store.append(done_batch.clone()).await.unwrap();

    // The first group waits on a held stream lock; everything after it queues for the next.
    let blocker = hold_stream_lock(&pool, "blocker").await;
    let first = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(one("blocker", ExpectedVersion::NoStream, 1))
                .await
        })
    };
    wait_until("the first group to wait for its lock", || async {
        lock_waiters(&pool).await >= 1
    })
    .await;

    let mut cases: Vec<(AppendBatch, Expect)> = Vec::new();
    for i in 0..40 {
        let n = 1 + i % 3;
        cases.push((
            one(&format!("new-{i}"), ExpectedVersion::NoStream, n).idempotent(Uuid::now_v7()),
            Expect::Appended { events: n },
        ));
    }
    for _ in 0..5 {
        cases.push((one("hot", ExpectedVersion::Exact(2), 1), Expect::Racer));
    }
    for _ in 0..3 {
        cases.push((done_batch.clone(), Expect::Replayed(Box::new(done.clone()))));
    }
    for _ in 0..2 {
        cases.push((
            one("done", ExpectedVersion::Any, 1).idempotent(done_id),
            Expect::Reused,
        ));
    }
    cases.push((
        AppendBatch::new(meta("tenant-a"))
            .stream(
                sid("pair-a"),
                "test",
                ExpectedVersion::NoStream,
                events(2, "pa"),
            )
            .stream(
                sid("pair-b"),
                "test",
                ExpectedVersion::NoStream,
                events(1, "pb"),
            )
            .idempotent(Uuid::now_v7()),
        Expect::Appended { events: 3 },
    ));
    cases.push((
        AppendBatch::new(meta("tenant-a"))
            .stream(
                sid("half-a"),
                "test",
                ExpectedVersion::NoStream,
                events(1, "ha"),
            )
            .stream(
                sid("quiet"),
                "test",
                ExpectedVersion::Exact(5),
                events(1, "hb"),
            ),
        Expect::Conflict {
            stream: "quiet".into(),
            actual: Some(1),
        },
    ));
    // Stream ids are scoped to the tenant: tenant-b's "theirs" does not stop tenant-a's own, and
    // tenant-b's "pair-a" is another stream than tenant-a's in the same group.
    cases.push((
        one("theirs", ExpectedVersion::NoStream, 1),
        Expect::Appended { events: 1 },
    ));
    cases.push((
        AppendBatch::new(meta("tenant-b")).stream(
            sid("pair-a"),
            "test",
            ExpectedVersion::NoStream,
            events(1, "b-pa"),
        ),
        Expect::Appended { events: 1 },
    ));
    cases.push((
        AppendBatch::new(meta("tenant-a")).stream(
            sid("existing"),
            "other-type",
            ExpectedVersion::Any,
            events(1, "x"),
        ),
        Expect::OtherType,
    ));
    while cases.len() < 63 {
        cases.push((
            one("existing", ExpectedVersion::Any, 1),
            Expect::Appended { events: 1 },
        ));
    }

    let before = store.group_commit_stats();
    let tasks: Vec<_> = cases
        .iter()
        .map(|(batch, _)| {
            let (store, batch) = (store.clone(), batch.clone());
            tokio::spawn(async move { store.append(batch).await })
        })
        .collect();
    wait_until("all 63 appends to queue", || async {
        store.group_commit_stats().queued == 63
    })
    .await;
    release(blocker).await;
    first.await.unwrap().unwrap();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let after = store.group_commit_stats();
    assert_eq!(after.appends - before.appends, 63);
    // One group of everything queued, and one more for each of the four appends whose command
    // id was already in a group.
    assert_eq!(after.groups - before.groups, 5);

    let mut racer_wins = 0;
    let mut appended_events = 0;
    for ((batch, expect), outcome) in cases.iter().zip(outcomes) {
        match (expect, outcome) {
            (Expect::Appended { events }, Ok(r)) => {
                assert!(!r.replayed);
                assert_eq!(r.events.len(), *events);
                assert_eq!(r.streams.len(), batch.streams().len());
                appended_events += events;
            }
            (Expect::Replayed(original), Ok(r)) => {
                assert!(r.replayed);
                assert_eq!(r.events, original.events);
                assert_eq!(r.streams, original.streams);
                assert_eq!(r.recorded_at, original.recorded_at);
            }
            (
                Expect::Conflict { stream, actual },
                Err(StoreError::WrongExpectedVersion {
                    stream_id,
                    actual: got,
                    ..
                }),
            ) => {
                assert_eq!(&stream_id, stream);
                assert_eq!(&got, actual);
            }
            (Expect::Reused, Err(StoreError::CommandIdReused { command_id })) => {
                assert_eq!(command_id, done_id);
            }
            (Expect::OtherType, Err(StoreError::StreamTypeMismatch { .. })) => {}
            (Expect::Racer, Ok(r)) => {
                racer_wins += 1;
                assert_eq!(r.events[0].stream_version, 3);
                appended_events += 1;
            }
            (Expect::Racer, Err(StoreError::WrongExpectedVersion { actual, .. })) => {
                assert_eq!(actual, Some(3));
            }
            (expect, outcome) => panic!("expected {expect:?}, got {outcome:?}"),
        }
    }
    assert_eq!(racer_wins, 1, "exactly one racer on one version wins");

    // The accepted appends committed together in one transaction.
    let group_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE tx_id = (SELECT tx_id FROM events \
         WHERE tenant_id = 'tenant-a' AND stream_id = 'new-0')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(group_events as usize, appended_events);
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT tx_id) FROM events WHERE stream_id LIKE 'new-%' \
            OR stream_id LIKE 'pair-%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(transactions, 1);
    let absent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM streams WHERE stream_id IN ('half-a') \
         OR (stream_id = 'theirs' AND version > 1) OR (stream_id = 'done' AND version > 2)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(absent, 0, "refused appends wrote nothing");
    assert_streams_contiguous(&pool).await;
    assert!(store.verify_all().await.unwrap().is_intact());
    let all = read_settled(&store, Position::START, 10_000).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(all.events.len() as i64, total, "every event is delivered");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_group_the_server_refuses_is_retried_item_by_item(pool: PgPool) {
    let store = EventStore::with_options(
        pool.clone(),
        GroupCommitOptions {
            max_in_flight: 1,
            ..GroupCommitOptions::default()
        },
    );
    let taken = store
        .append(one("first", ExpectedVersion::NoStream, 1))
        .await
        .unwrap()
        .events[0]
        .event_id;

    let blocker = hold_stream_lock(&pool, "blocker").await;
    let first = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(one("blocker", ExpectedVersion::NoStream, 1))
                .await
        })
    };
    wait_until("the first group to wait", || async {
        lock_waiters(&pool).await >= 1
    })
    .await;

    // A client-chosen event id that exists already: the group's insert fails as a whole.
    let mut duplicate = events(1, "dup");
    duplicate[0].event_id = taken;
    let mut batches: Vec<AppendBatch> = (0..5)
        .map(|i| one(&format!("ok-{i}"), ExpectedVersion::NoStream, 2))
        .collect();
    batches.insert(
        2,
        AppendBatch::new(meta("tenant-a")).stream(
            sid("dup"),
            "test",
            ExpectedVersion::NoStream,
            duplicate,
        ),
    );
    batches.push(one("ok-0", ExpectedVersion::NoStream, 1));
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|b| {
            let store = store.clone();
            tokio::spawn(async move { store.append(b).await })
        })
        .collect();
    wait_until("the appends to queue", || async {
        store.group_commit_stats().queued == 7
    })
    .await;
    release(blocker).await;
    first.await.unwrap().unwrap();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    for (i, o) in outcomes.iter().enumerate() {
        match i {
            2 => assert!(matches!(o, Err(StoreError::DuplicateEventId)), "{o:?}"),
            // Appended alone after ok-0 committed: a conflict, as it would be alone.
            6 => assert!(
                matches!(
                    o,
                    Err(StoreError::WrongExpectedVersion {
                        actual: Some(2),
                        ..
                    })
                ),
                "{o:?}"
            ),
            _ => assert_eq!(o.as_ref().unwrap().events.len(), 2),
        }
    }
    let streams: i64 =
        sqlx::query_scalar("SELECT count(*) FROM streams WHERE stream_id LIKE 'ok-%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(streams, 5);
    let dup: i64 = sqlx::query_scalar("SELECT count(*) FROM streams WHERE stream_id = 'dup'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dup, 0);
    assert_streams_contiguous(&pool).await;
    assert!(store.verify_all().await.unwrap().is_intact());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn two_store_instances_race_on_shared_streams(pool: PgPool) {
    let options = pool.connect_options();
    let second = PgPoolOptions::new()
        .max_connections(8)
        .connect_with((*options).clone())
        .await
        .unwrap();
    let stores = [EventStore::new(pool.clone()), EventStore::new(second)];
    let streams = ["r-0", "r-1", "r-2", "r-3"];
    for s in streams {
        stores[0]
            .append(one(s, ExpectedVersion::NoStream, 1))
            .await
            .unwrap();
    }
    // A subscriber reads all events while the writers race; it must see every event once.
    let reader = {
        let store = stores[0].clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = Position::START;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let batch = store.read_all(after, 500).await.unwrap();
                for e in &batch.events {
                    seen.push((
                        e.global_position,
                        e.event_id,
                        e.stream_id.clone(),
                        e.stream_version,
                    ));
                }
                after = batch.next_after(after);
                let total: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM events WHERE stream_id <> 'writers-done'",
                )
                .fetch_one(store.pool())
                .await
                .unwrap();
                let finished: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM streams WHERE stream_id = 'writers-done')",
                )
                .fetch_one(store.pool())
                .await
                .unwrap();
                if finished && seen.iter().filter(|s| s.2 != "writers-done").count() as i64 == total
                {
                    return seen;
                }
                assert!(Instant::now() < deadline, "subscriber did not catch up");
                if batch.events.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    let mut writers = Vec::new();
    for w in 0..16 {
        let store = stores[w % 2].clone();
        writers.push(tokio::spawn(async move {
            let mut wins: HashMap<&'static str, u64> = HashMap::new();
            for round in 0..25 {
                let stream = streams[(w + round) % streams.len()];
                let head = store
                    .stream_head("tenant-a", &sid(stream))
                    .await
                    .unwrap()
                    .unwrap();
                match store
                    .append(one(stream, ExpectedVersion::Exact(head.version), 1))
                    .await
                {
                    Ok(r) => {
                        assert_eq!(r.events[0].stream_version, head.version + 1);
                        *wins.entry(stream).or_default() += 1;
                    }
                    Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                        assert!(actual.unwrap() > head.version);
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            wins
        }));
    }
    let mut wins: HashMap<&str, u64> = HashMap::new();
    for w in writers {
        for (s, n) in w.await.unwrap() {
            *wins.entry(s).or_default() += n;
        }
    }
    stores[1]
        .append(one("writers-done", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    for s in streams {
        let head = stores[1]
            .stream_head("tenant-a", &sid(s))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            head.version,
            1 + wins.get(s).copied().unwrap_or(0),
            "{s}: one win per version"
        );
    }
    assert_streams_contiguous(&pool).await;
    assert!(stores[1].verify_all().await.unwrap().is_intact());

    let seen = reader.await.unwrap();
    let ids: HashSet<Uuid> = seen.iter().map(|s| s.1).collect();
    assert_eq!(ids.len(), seen.len(), "no event delivered twice");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "delivered in position order"
    );
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (_, _, stream, version) in &seen {
        let prev = last.insert(stream.as_str(), *version).unwrap_or(0);
        assert_eq!(*version, prev + 1, "{stream}: delivered without gaps");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn recorded_at_never_goes_backwards_within_a_stream(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(one("clock", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    const APPEND_ONE: &str = "SELECT r_recorded_at FROM annals_append_group(\
        ARRAY[NULL]::uuid[], ARRAY[NULL]::bytea[], ARRAY['tenant-a'], \
        ARRAY['{\"tenant\":\"tenant-a\",\"actor\":\"u\",\"actor_type\":\"user\"}'], \
        ARRAY[1], ARRAY[1], ARRAY['test'], ARRAY[-1]::bigint[], ARRAY[1], ARRAY['clock'], \
        ARRAY[gen_random_uuid()], ARRAY['test.happened'], ARRAY[1], ARRAY['{}'])";

    // B's transaction starts first; A then appends and holds the stream; B appends after it.
    let mut b = pool.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut a = pool.begin().await.unwrap();
    let a_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(APPEND_ONE)
        .fetch_one(&mut *a)
        .await
        .unwrap();
    let b_append = tokio::spawn(async move {
        let at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(APPEND_ONE)
            .fetch_one(&mut *b)
            .await
            .unwrap();
        b.commit().await.unwrap();
        at
    });
    wait_until("B to wait for A's stream lock", || async {
        lock_waiters(&pool).await >= 1
    })
    .await;
    a.commit().await.unwrap();
    let b_at = b_append.await.unwrap();
    assert!(b_at >= a_at, "B recorded {b_at}, before A's {a_at}");

    let times: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT recorded_at FROM events WHERE stream_id = 'clock' ORDER BY stream_version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(store.verify_all().await.unwrap().is_intact());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_store_refuses_a_stream_of_another_type_but_not_another_tenants_id(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(one("mine", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    // Another tenant's "mine" is another stream: created new, whatever tenant-a holds.
    let as_b = AppendBatch::new(meta("tenant-b")).stream(
        sid("mine"),
        "other-type",
        ExpectedVersion::NoStream,
        events(1, "b"),
    );
    let theirs = store.append(as_b).await.unwrap();
    assert_eq!(theirs.streams[0].version, 1);
    let other_type = AppendBatch::new(meta("tenant-a")).stream(
        sid("mine"),
        "not-test",
        ExpectedVersion::Exact(1),
        events(1, "t"),
    );
    assert!(matches!(
        store.append(other_type).await,
        Err(StoreError::StreamTypeMismatch { stream_id }) if stream_id == "mine"
    ));
    let versions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE tenant_id = 'tenant-a' AND stream_id = 'mine'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(versions, 1, "nothing written");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn appends_refuse_to_run_after_a_write_or_outside_read_committed(pool: PgPool) {
    const APPEND: &str = "SELECT r_status FROM annals_append_group(\
        ARRAY[NULL]::uuid[], ARRAY[NULL]::bytea[], ARRAY['tenant-a'], ARRAY['{}'], \
        ARRAY[1], ARRAY[1], ARRAY['test'], ARRAY[-1]::bigint[], ARRAY[1], ARRAY['s'], \
        ARRAY[gen_random_uuid()], ARRAY['test.happened'], ARRAY[1], ARRAY['{}'])";
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO subscription_checkpoints (name, position) VALUES ('x', 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query(APPEND).execute(&mut *tx).await.unwrap_err();
    assert!(matches!(
        StoreError::from(err),
        StoreError::WrongTransaction(_)
    ));
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query(APPEND).execute(&mut *tx).await.unwrap_err();
    assert!(matches!(
        StoreError::from(err),
        StoreError::WrongTransaction(_)
    ));
    tx.rollback().await.unwrap();

    // A transaction that has only read may append (its xid is assigned after the locks).
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM events")
        .execute(&mut *tx)
        .await
        .unwrap();
    let status: i32 = sqlx::query_scalar(APPEND)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(status, 0);
    tx.commit().await.unwrap();
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn default_fingerprint_covers_metadata_and_command_ids_are_per_tenant(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = Uuid::now_v7();
    let payload = || vec![NewEvent::new("test.happened", 1, json!({ "same": true }))];
    let batch = |tenant: &str, actor: &str| {
        AppendBatch::new(Metadata::new(tenant, actor, "user"))
            .stream(sid("fp"), "test", ExpectedVersion::Any, payload())
            .idempotent(id)
    };
    store.append(batch("tenant-a", "alice")).await.unwrap();
    let replay = store.append(batch("tenant-a", "alice")).await.unwrap();
    assert!(replay.replayed, "the same request is a retry");
    // The same command id in another tenant is another command: appended, not replayed, not
    // refused (the tenant is in the fingerprint too, and the log is keyed by tenant).
    let theirs = store.append(batch("tenant-b", "alice")).await.unwrap();
    assert!(!theirs.replayed);
    assert_eq!(theirs.streams[0].version, 1);
    assert!(matches!(
        store.append(batch("tenant-a", "mallory")).await,
        Err(StoreError::CommandIdReused { .. })
    ));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_restored_store_refuses_to_append_until_positions_are_rebased(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let before = store
        .append(one("old", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    // What a logical restore into a younger cluster looks like: a stored event written by a
    // transaction id this server has not reached, at a position above every new one.
    let restored_position: i64 = sqlx::query_scalar(
        "INSERT INTO events (global_position, event_id, stream_id, stream_type, stream_version, \
            tenant_id, event_type, schema_version, payload, metadata, recorded_at, tx_id, hash) \
         SELECT (x + 1000000) * 65536, gen_random_uuid(), 'restored', 'test', 1, 'tenant-a', \
            'test.happened', 1, '{}', '{}', now(), (x + 1000000)::text::xid8, \
            sha256('restored'::bytea) \
           FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x) AS n \
         RETURNING global_position",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let refused = store.append(one("new", ExpectedVersion::NoStream, 1)).await;
    assert!(
        matches!(refused, Err(StoreError::PositionsBehind)),
        "{refused:?}"
    );
    let message = StoreError::PositionsBehind.to_string();
    assert!(message.contains("rebase-positions"), "{message}");
    // Readers hold the row of the "future" transaction back until the rebase.
    let held = store
        .read_all(before.events[0].global_position, 10)
        .await
        .unwrap();
    assert!(held.events.is_empty() && held.held_back);

    let epoch = store.rebase_positions().await.unwrap();
    assert_eq!(epoch.epoch, 1);
    assert_eq!(epoch.floor, Position(restored_position + 1));
    let after = store
        .append(one("new", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    assert!(after.events[0].global_position.0 > restored_position);

    // A reader continuing from before the restore gets the restored event, then the new one.
    let batch = read_settled(&store, before.events[0].global_position, 10).await;
    let positions: Vec<i64> = batch.events.iter().map(|e| e.global_position.0).collect();
    assert_eq!(
        positions,
        vec![restored_position, after.events[0].global_position.0]
    );

    // A second rebase keeps positions increasing and is harmless.
    let again = store.rebase_positions().await.unwrap();
    assert_eq!(again.epoch, 2);
    let later = store
        .append(one("new", ExpectedVersion::Exact(1), 1))
        .await
        .unwrap();
    assert!(later.events[0].global_position > after.events[0].global_position);
}

/// One call of `annals_append_group` as the group writer makes it, for the item under test and,
/// when `filler` is set, a second item appending to a stream of its own: a lone item on one
/// stream takes the function's one-item path, a group of two its general path.
struct Call<'a> {
    tenant: &'a str,
    command_id: Option<Uuid>,
    fingerprint: [u8; 32],
    stream: &'a str,
    stream_type: &'a str,
    expected: i64,
    events: usize,
    filler: Option<&'a str>,
}

/// (status, first position, versions, detail) of the item under test.
type Outcome = (
    i32,
    Option<i64>,
    Option<Vec<i64>>,
    Option<serde_json::Value>,
);

async fn call_group(pool: &PgPool, call: &Call<'_>) -> Outcome {
    let metadata = json!({ "tenant_id": call.tenant, "actor": "user-1" }).to_string();
    let mut it_command_ids = vec![call.command_id];
    let mut it_fingerprints = vec![call.fingerprint.to_vec()];
    let mut it_tenants = vec![call.tenant];
    let mut it_metadata = vec![metadata.as_str()];
    let (mut en_item, mut en_slot) = (vec![1], vec![1]);
    let mut en_type = vec![call.stream_type];
    let mut en_expected = vec![call.expected];
    let mut en_count = vec![i32::try_from(call.events).unwrap()];
    let mut slot_stream = vec![call.stream];
    let n = call.events + usize::from(call.filler.is_some());
    let ev_ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let ev_types = vec!["test.happened"; n];
    let ev_schema_versions = vec![1; n];
    let ev_payloads: Vec<String> = (0..n).map(|i| json!({ "i": i }).to_string()).collect();
    if let Some(filler) = call.filler {
        it_command_ids.push(None);
        it_fingerprints.push(vec![0; 32]);
        it_tenants.push(call.tenant);
        it_metadata.push(metadata.as_str());
        en_item.push(2);
        en_slot.push(2);
        en_type.push("test");
        en_expected.push(0);
        en_count.push(1);
        slot_stream.push(filler);
    }
    let row: (i32, Option<i64>, Option<Vec<i64>>, Option<String>) = sqlx::query_as(
        "SELECT r_status, r_first_position, r_versions, r_detail \
           FROM annals_append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
          WHERE r_item = 1",
    )
    .bind(&it_command_ids)
    .bind(&it_fingerprints)
    .bind(&it_tenants)
    .bind(&it_metadata)
    .bind(&en_item)
    .bind(&en_slot)
    .bind(&en_type)
    .bind(&en_expected)
    .bind(&en_count)
    .bind(&slot_stream)
    .bind(&ev_ids)
    .bind(&ev_types)
    .bind(&ev_schema_versions)
    .bind(&ev_payloads)
    .fetch_one(pool)
    .await
    .unwrap();
    let detail = row.3.map(|d| serde_json::from_str(&d).unwrap());
    (row.0, row.1, row.2, detail)
}

/// What of an outcome does not depend on the tenant: positions and event ids are the store's.
fn comparable(outcome: &Outcome) -> (i32, Option<Vec<i64>>, serde_json::Value) {
    let detail = match (&outcome.0, &outcome.3) {
        // A replay: the original events' versions, in order.
        (1, Some(d)) => json!(
            d["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["stream_version"].clone())
                .collect::<Vec<_>>()
        ),
        (_, Some(d)) => d.clone(),
        (_, None) => serde_json::Value::Null,
    };
    (outcome.0, outcome.2.clone(), detail)
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_lone_append_and_a_group_decide_alike(pool: PgPool) {
    // The same sequence of appends, item by item, in two tenants: alone (the function's one-item
    // path) and each sharing its call with an unrelated append (the general path).
    let c1 = Uuid::new_v4();
    let c2 = Uuid::new_v4();
    let c3 = Uuid::new_v4();
    // (what, command id, fingerprint byte, stream, type, expected, events, expected status)
    type Step = (
        &'static str,
        Option<Uuid>,
        u8,
        &'static str,
        &'static str,
        i64,
        usize,
        i32,
    );
    let steps: Vec<Step> = vec![
        ("create with two events", Some(c1), 1, "s1", "test", 0, 2, 0),
        ("append at the head", Some(c2), 2, "s1", "test", 2, 1, 0),
        ("stale expected version", Some(c3), 3, "s1", "test", 2, 1, 2),
        (
            "retry of an appended command",
            Some(c2),
            2,
            "s1",
            "test",
            2,
            1,
            1,
        ),
        (
            "command id reused for another request",
            Some(c2),
            9,
            "s1",
            "test",
            3,
            1,
            3,
        ),
        ("stream of another type", None, 0, "s1", "other", -1, 1, 4),
        (
            "create of an existing stream",
            None,
            0,
            "s1",
            "test",
            0,
            1,
            2,
        ),
        (
            "any version, new stream, no command id",
            None,
            0,
            "s2",
            "test",
            -1,
            3,
            0,
        ),
        (
            "any version on an existing stream",
            None,
            0,
            "s2",
            "test",
            -1,
            1,
            0,
        ),
        (
            "retry of the first command",
            Some(c1),
            1,
            "s1",
            "test",
            0,
            2,
            1,
        ),
    ];
    for (n, (what, command_id, fp, stream, stream_type, expected, events, status)) in
        steps.into_iter().enumerate()
    {
        let filler_name = format!("filler-{n}");
        let mut outcomes = Vec::new();
        for (tenant, filler) in [("lone", None), ("grouped", Some(filler_name.as_str()))] {
            let call = Call {
                tenant,
                command_id,
                fingerprint: [fp; 32],
                stream,
                stream_type,
                expected,
                events,
                filler,
            };
            outcomes.push(call_group(&pool, &call).await);
        }
        assert_eq!(outcomes[0].0, status, "{what}: {:?}", outcomes[0]);
        assert_eq!(
            comparable(&outcomes[0]),
            comparable(&outcomes[1]),
            "{what}: the one-item path and the general path differ"
        );
        assert_eq!(outcomes[0].1.is_some(), status == 0, "{what}");
    }

    // Both paths chained their events alike: every stream of both tenants verifies.
    let store = EventStore::new(pool.clone());
    let report = store.verify_all().await.unwrap();
    assert!(report.is_intact(), "{:?}", report.tampered);
    assert_eq!(report.streams_checked, 2 + 2 + 10);
    for tenant in ["lone", "grouped"] {
        for (stream, version) in [("s1", 3_u64), ("s2", 4)] {
            let events = store
                .read_stream(tenant, &sid(stream), 1, Direction::Forward, 100)
                .await
                .unwrap();
            assert_eq!(events.len() as u64, version, "{tenant}/{stream}");
        }
    }
}
