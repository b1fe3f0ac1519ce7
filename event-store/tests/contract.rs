//! The event store contract, proved against a real Postgres (a fresh database per test).
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::collections::HashSet;
use std::time::Duration;

use event_store::{
    AppendBatch, Direction, EventStore, ExpectedVersion, MIGRATOR, Metadata, NewEvent, Position,
    StoreError, StreamId, SubscriptionOptions, TamperKind,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn meta() -> Metadata {
    Metadata::new("tenant-a", "user-1", "user")
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
    AppendBatch::new(meta()).stream(sid(stream), "test", expected, events(n, stream))
}

async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sixteen_concurrent_writers_exactly_one_wins(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(one("s-1", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();

    let attempts = (0..16).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.append(one("s-1", ExpectedVersion::Exact(1), 3)).await })
    });
    let results: Vec<_> = futures::future::join_all(attempts).await;
    let (ok, conflicts): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(|r| r.unwrap())
        .partition(Result::is_ok);
    assert_eq!(ok.len(), 1, "exactly one writer wins");
    assert_eq!(conflicts.len(), 15);
    for c in conflicts {
        match c.unwrap_err() {
            StoreError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => {
                assert_eq!(stream_id, "s-1");
                assert_eq!(expected, ExpectedVersion::Exact(1));
                assert_eq!(actual, Some(4));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT stream_version FROM events WHERE stream_id = 's-1' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert!(store.verify_all().await.unwrap().is_intact());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn no_stream_and_exact_expectations(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let r = store
        .append(one("s", ExpectedVersion::Exact(1), 1))
        .await
        .unwrap_err();
    assert!(
        matches!(r, StoreError::WrongExpectedVersion { actual: None, .. }),
        "{r:?}"
    );
    store
        .append(one("s", ExpectedVersion::NoStream, 2))
        .await
        .unwrap();
    let r = store
        .append(one("s", ExpectedVersion::NoStream, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            r,
            StoreError::WrongExpectedVersion {
                actual: Some(2),
                ..
            }
        ),
        "{r:?}"
    );
    let r = store
        .append(one("s", ExpectedVersion::Any, 1))
        .await
        .unwrap();
    assert_eq!(r.streams[0].version, 3);
    assert_eq!(count(&pool).await, 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn retried_command_id_appends_nothing_and_returns_first_result(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let command = Uuid::now_v7();
    let batch = one("s-2", ExpectedVersion::NoStream, 2).idempotent(command);
    let first = store.append(batch.clone()).await.unwrap();
    assert!(!first.replayed);

    // Same command again (even though NoStream would now fail): the original answer.
    let again = store.append(batch.clone()).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.events, first.events);
    assert_eq!(again.streams, first.streams);
    assert_eq!(again.recorded_at, first.recorded_at);
    assert_eq!(count(&pool).await, 2);
    assert_eq!(
        store
            .command_result("tenant-a", command)
            .await
            .unwrap()
            .unwrap()
            .events,
        first.events
    );

    // Fresh event ids do not make it a different request; different content does.
    let same_content = one("s-2", ExpectedVersion::NoStream, 2).idempotent(command);
    assert!(store.append(same_content).await.unwrap().replayed);
    let different = one("s-2", ExpectedVersion::NoStream, 3).idempotent(command);
    let err = store.append(different).await.unwrap_err();
    assert!(matches!(err, StoreError::CommandIdReused { command_id } if command_id == command));
    assert_eq!(count(&pool).await, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn concurrent_retries_of_one_command_append_once(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let command = Uuid::now_v7();
    let tasks = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(one("s-3", ExpectedVersion::Any, 2).idempotent(command))
                .await
        })
    });
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| !r.replayed).count(), 1);
    assert!(results.windows(2).all(|w| w[0].events == w[1].events));
    assert_eq!(count(&pool).await, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn multi_stream_conflict_writes_nothing(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(one("b", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    let before = count(&pool).await;

    let batch = AppendBatch::new(meta())
        .stream(sid("a"), "test", ExpectedVersion::NoStream, events(2, "a"))
        .stream(sid("b"), "test", ExpectedVersion::Exact(7), events(1, "b"))
        .idempotent(Uuid::now_v7());
    let err = store.append(batch).await.unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { ref stream_id, .. } if stream_id == "b")
    );
    assert_eq!(count(&pool).await, before);
    assert!(
        store
            .stream_head("tenant-a", &sid("a"))
            .await
            .unwrap()
            .is_none()
    );
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM command_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, 0, "a refused command is not remembered");

    // The same shape with the right expectation commits both streams together.
    let batch = AppendBatch::new(meta())
        .stream(sid("a"), "test", ExpectedVersion::NoStream, events(2, "a"))
        .stream(sid("b"), "test", ExpectedVersion::Exact(1), events(1, "b"));
    let r = store.append(batch).await.unwrap();
    assert_eq!(
        r.streams.iter().map(|s| s.version).collect::<Vec<_>>(),
        vec![2, 2]
    );
    assert_eq!(count(&pool).await, before + 3);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_input_is_refused_before_writing(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    assert!(StreamId::new("").is_err());
    assert!(StreamId::new("x".repeat(201)).is_err());
    let empty = AppendBatch::new(meta()).stream(sid("x"), "test", ExpectedVersion::Any, vec![]);
    assert!(matches!(
        store.append(empty).await,
        Err(StoreError::InvalidInput {
            field: "events",
            ..
        })
    ));
    let twice = AppendBatch::new(meta())
        .stream(sid("x"), "test", ExpectedVersion::Any, events(1, "x"))
        .stream(sid("x"), "test", ExpectedVersion::Any, events(1, "x"));
    assert!(matches!(
        store.append(twice).await,
        Err(StoreError::InvalidInput {
            field: "streams",
            ..
        })
    ));
    let no_tenant = AppendBatch::new(Metadata::new("", "u", "user")).stream(
        sid("x"),
        "test",
        ExpectedVersion::Any,
        events(1, "x"),
    );
    assert!(matches!(
        store.append(no_tenant).await,
        Err(StoreError::InvalidInput {
            field: "tenant",
            ..
        })
    ));
    let too_many = one("x", ExpectedVersion::Any, 10_001);
    assert!(matches!(
        store.append(too_many).await,
        Err(StoreError::InvalidInput {
            field: "events",
            ..
        })
    ));

    let dup = events(1, "x");
    store
        .append(AppendBatch::new(meta()).stream(
            sid("x"),
            "test",
            ExpectedVersion::Any,
            dup.clone(),
        ))
        .await
        .unwrap();
    let err = store
        .append(AppendBatch::new(meta()).stream(sid("y"), "test", ExpectedVersion::Any, dup))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateEventId), "{err:?}");
    assert_eq!(count(&pool).await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn envelope_and_stream_reads(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let mut m = meta();
    m.correlation_id = Some(Uuid::now_v7());
    m.causation_id = Some(Uuid::now_v7());
    m.client_ip = Some("127.0.0.1".into());
    m.user_agent = Some("grpc-rust".into());
    let command = Uuid::now_v7();
    let result = store
        .append(
            AppendBatch::new(m.clone())
                .stream(
                    sid("task-1"),
                    "task",
                    ExpectedVersion::NoStream,
                    events(5, "t"),
                )
                .idempotent(command),
        )
        .await
        .unwrap();

    let forward = store
        .read_stream("tenant-a", &sid("task-1"), 2, Direction::Forward, 2)
        .await
        .unwrap();
    assert_eq!(
        forward.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let backward = store
        .read_stream("tenant-a", &sid("task-1"), 4, Direction::Backward, 10)
        .await
        .unwrap();
    assert_eq!(
        backward
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        vec![4, 3, 2, 1]
    );

    let e = &forward[0];
    assert_eq!(e.stream_type, "task");
    assert_eq!(e.tenant_id, "tenant-a");
    assert_eq!(e.event_type, "test.happened");
    assert_eq!(e.schema_version, 1);
    assert_eq!(e.payload_json().unwrap(), json!({ "tag": "t", "i": 1 }));
    assert_eq!(e.recorded_at, result.recorded_at);
    assert_eq!(e.global_position, result.events[1].global_position);
    assert_eq!(e.event_id, result.events[1].event_id);
    let stored = e.metadata().unwrap();
    assert_eq!(
        stored,
        Metadata {
            command_id: Some(command),
            ..m
        }
    );

    let head = store
        .stream_head("tenant-a", &sid("task-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.version, 5);
    let newest = store
        .read_stream("tenant-a", &sid("task-1"), u64::MAX, Direction::Backward, 1)
        .await
        .unwrap();
    assert_eq!(
        (newest[0].stream_version, head.last_hash),
        (5, newest[0].hash)
    );
    assert!(
        result
            .events
            .windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
}

/// Transaction A takes a position and stays open while B (higher position) commits.
#[sqlx::test(migrator = "MIGRATOR")]
async fn readers_never_pass_an_open_transaction(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(one("warmup", ExpectedVersion::Any, 1))
        .await
        .unwrap();
    // Settled, not a single read: the snapshot's xmin is cluster-wide, so a
    // transaction of a test in another database may hold the warmup back.
    let p0 = read_settled(&store, Position::START)
        .await
        .next_after(Position::START);

    // A: appends inside an explicit transaction that stays open.
    let mut a = pool.begin().await.unwrap();
    let a_pos: i64 = sqlx::query_scalar(
        "SELECT (annals_append(NULL, NULL, 'tenant-a', ARRAY['stream-a'], ARRAY['test'], \
         ARRAY[-1]::bigint[], ARRAY[1], ARRAY[gen_random_uuid()], ARRAY['test.happened'], \
         ARRAY[1], ARRAY['{}'], '{\"tenant\":\"tenant-a\",\"actor\":\"u\",\"actor_type\":\"user\"}') \
         -> 'events' -> 0 ->> 'global_position')::bigint",
    )
    .fetch_one(&mut *a)
    .await
    .unwrap();

    // B: commits later with a higher position.
    let b = store
        .append(one("stream-b", ExpectedVersion::Any, 1))
        .await
        .unwrap();
    let b_pos = b.events[0].global_position;
    assert!(b_pos.0 > a_pos, "B took the higher position");

    let batch = store.read_all(p0, 100).await.unwrap();
    assert!(
        batch.events.is_empty(),
        "B must not be delivered past open A: {:?}",
        batch.events
    );
    assert!(batch.held_back);

    a.commit().await.unwrap();
    let batch = read_settled(&store, p0).await;
    let positions: Vec<i64> = batch.events.iter().map(|e| e.global_position.0).collect();
    assert_eq!(positions, vec![a_pos, b_pos.0]);

    // An aborted transaction does not stall readers.
    let p1 = b_pos;
    let mut c = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT annals_append(NULL, NULL, 'tenant-a', ARRAY['stream-c'], ARRAY['test'], \
         ARRAY[-1]::bigint[], ARRAY[1], ARRAY[gen_random_uuid()], ARRAY['test.happened'], \
         ARRAY[1], ARRAY['{}'], '{\"tenant\":\"tenant-a\",\"actor\":\"u\",\"actor_type\":\"user\"}')",
    )
    .execute(&mut *c)
    .await
    .unwrap();
    let d = store
        .append(one("stream-d", ExpectedVersion::Any, 1))
        .await
        .unwrap();
    assert!(store.read_all(p1, 100).await.unwrap().events.is_empty());
    c.rollback().await.unwrap();
    let batch = read_settled(&store, p1).await;
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].event_id, d.events[0].event_id);
}

/// Reads after `after` once nothing is held back. The horizon (`pg_snapshot_xmin`) is
/// cluster-wide, so an open transaction of a test running in parallel can hold delivery back
/// for a moment after this test's own transactions ended; the wait is bounded.
async fn read_settled(store: &EventStore, after: Position) -> event_store::AllBatch {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let batch = store.read_all(after, 100).await.unwrap();
        if !batch.held_back {
            return batch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads stayed held back for 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn hash_chain_verifies_and_names_tampered_events(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    for s in ["alpha", "bravo", "charlie", "delta"] {
        store
            .append(one(s, ExpectedVersion::NoStream, 3))
            .await
            .unwrap();
        store
            .append(one(s, ExpectedVersion::Exact(3), 2))
            .await
            .unwrap();
    }
    let report = store.verify_all().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.events_checked, report.streams_checked), (20, 4));

    // The ordinary path refuses to alter events at all.
    let refused = sqlx::query("UPDATE events SET payload = '{}' WHERE stream_id = 'alpha'")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("immutable"));

    // A privileged attacker disables the guard: flip one byte of a payload ...
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&pool)
        .await
        .unwrap();
    let target: i64 = sqlx::query_scalar(
        "UPDATE events SET payload = replace(payload::text, '\"i\":1', '\"i\":7')::json \
         WHERE stream_id = 'bravo' AND stream_version = 2 RETURNING global_position",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // ... delete a middle row, swap two rows' payloads, truncate a tail.
    sqlx::query("DELETE FROM events WHERE stream_id = 'charlie' AND stream_version = 3")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events e SET payload = o.payload FROM events o \
         WHERE e.stream_id = 'delta' AND o.stream_id = 'delta' \
           AND ((e.stream_version = 4 AND o.stream_version = 5) OR (e.stream_version = 5 AND o.stream_version = 4))",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM events WHERE stream_id = 'alpha' AND stream_version = 5")
        .execute(&pool)
        .await
        .unwrap();

    let report = store.verify_all().await.unwrap();
    let by_stream = |s: &str| {
        report
            .tampered
            .iter()
            .find(|t| t.stream_id == s)
            .cloned()
            .unwrap()
    };
    let bravo = by_stream("bravo");
    assert_eq!(bravo.kind, TamperKind::HashMismatch);
    assert_eq!(bravo.global_position, Some(Position(target)));
    assert_eq!(bravo.stream_version, Some(2));
    assert_eq!(
        by_stream("charlie").kind,
        TamperKind::MissingVersions { expected: 3 }
    );
    assert_eq!(by_stream("charlie").stream_version, Some(4));
    assert_eq!(by_stream("delta").kind, TamperKind::HashMismatch);
    assert_eq!(by_stream("delta").stream_version, Some(4));
    assert_eq!(
        by_stream("alpha").kind,
        TamperKind::HeadMismatch {
            head_version: 5,
            last_version: 4
        }
    );
    assert_eq!(report.tampered.len(), 4);
    assert_eq!(
        report.first_bad().unwrap().stream_id,
        "bravo",
        "lowest position first"
    );

    let single = store
        .verify_stream("tenant-a", &sid("bravo"))
        .await
        .unwrap();
    assert_eq!(single.tampered, vec![bravo]);
    assert!(
        store
            .verify_stream("tenant-a", &sid("echo"))
            .await
            .unwrap()
            .is_intact()
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn verifier_pages_through_large_streams(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(one("big", ExpectedVersion::NoStream, 4_500))
        .await
        .unwrap();
    store
        .append(one("small", ExpectedVersion::NoStream, 3))
        .await
        .unwrap();
    let report = store.verify_all().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 4_503);
    assert_eq!(report.streams_checked, 2);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn live_subscriber_gets_every_event_once_in_order(pool: PgPool) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 1_250; // 10,000 events in all
    let store = EventStore::new(pool.clone());
    let mut sub = store.subscribe(Position::START, SubscriptionOptions::default());

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                let mut n = 0;
                while sent < PER_WRITER {
                    // Mixed batch sizes and many streams exercise interleaved commits.
                    let size = (1 + n % 4).min(PER_WRITER - sent);
                    let stream = format!("w{w}-s{}", n % 13);
                    store
                        .append(one(&stream, ExpectedVersion::Any, size))
                        .await
                        .unwrap();
                    sent += size;
                    n += 1;
                }
            })
        })
        .collect();

    let mut seen = HashSet::new();
    let mut last = Position::START;
    let receive = async {
        while seen.len() < WRITERS * PER_WRITER {
            for e in sub.next_batch().await.unwrap() {
                assert!(e.global_position > last, "global order");
                last = e.global_position;
                assert!(seen.insert(e.event_id), "delivered twice: {}", e.event_id);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(180), receive)
        .await
        .expect("all events within 180s");
    for w in writers {
        w.await.unwrap();
    }

    let stored: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), WRITERS * PER_WRITER);
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), seen);

    // Caught up, it sleeps on LISTEN and wakes for the next commit.
    let waiting = tokio::spawn(async move { sub.next_batch().await.unwrap() });
    tokio::task::yield_now().await;
    let late = store
        .append(one("late", ExpectedVersion::Any, 1))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id, late.events[0].event_id);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn subscription_filters_stream_types_and_checkpoints_round_trip(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    store
        .append(AppendBatch::new(meta()).stream(
            sid("t1"),
            "task",
            ExpectedVersion::Any,
            events(2, "t"),
        ))
        .await
        .unwrap();
    store
        .append(AppendBatch::new(meta()).stream(
            sid("p1"),
            "problem",
            ExpectedVersion::Any,
            events(1, "p"),
        ))
        .await
        .unwrap();
    let options = SubscriptionOptions {
        stream_types: Some(vec!["problem".into()]),
        ..Default::default()
    };
    let mut sub = store.subscribe(Position::START, options);
    let batch = tokio::time::timeout(Duration::from_secs(30), sub.next_batch())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        batch
            .iter()
            .map(|e| e.stream_id.as_str())
            .collect::<Vec<_>>(),
        vec!["p1"]
    );

    assert_eq!(
        store.load_checkpoint("proj").await.unwrap(),
        Position::START
    );
    event_store::save_checkpoint(&pool, "proj", sub.position())
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint("proj").await.unwrap(), sub.position());
}
