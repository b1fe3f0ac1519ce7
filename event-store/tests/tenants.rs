//! Tenant-scoped ids (issue 14, item 3), proved against a real Postgres: the same stream id and
//! the same command id used by two tenants are two independent things, and the migration that
//! introduced the scoping keeps data written before it valid.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use event_store::{
    AppendBatch, AppendResult, Direction, EventStore, ExpectedVersion, MIGRATOR, Metadata,
    NewEvent, StoreError, StreamId, TamperKind,
};
use serde_json::json;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

fn meta(tenant: &str) -> Metadata {
    Metadata::new(tenant, "user-1", "user")
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn batch(tenant: &str, stream: &str, expected: ExpectedVersion, n: usize) -> AppendBatch {
    let events = (0..n)
        .map(|i| NewEvent::new("test.happened", 1, json!({ "i": i })))
        .collect();
    AppendBatch::new(meta(tenant)).stream(sid(stream), "test", expected, events)
}

/// (stream id, version) pairs.
type Versions = Vec<(String, u64)>;

/// An append result without what the server generates (positions, times, event ids).
fn shape(r: &AppendResult) -> (Versions, Versions, bool) {
    (
        r.streams
            .iter()
            .map(|s| (s.stream_id.clone(), s.version))
            .collect(),
        r.events
            .iter()
            .map(|e| (e.stream_id.clone(), e.stream_version))
            .collect(),
        r.replayed,
    )
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_stream_id_in_two_tenants_is_two_streams_with_their_own_versions_and_chains(
    pool: PgPool,
) {
    let store = EventStore::new(pool.clone());
    let a = store
        .append(batch("tenant-a", "task-1", ExpectedVersion::NoStream, 3))
        .await
        .unwrap();
    assert_eq!(a.streams[0].version, 3);
    // tenant-a's stream does not exist for tenant-b: NoStream holds, versions start at 1.
    let b = store
        .append(batch("tenant-b", "task-1", ExpectedVersion::NoStream, 1))
        .await
        .unwrap();
    assert_eq!(b.streams[0].version, 1);
    let b2 = store
        .append(batch("tenant-b", "task-1", ExpectedVersion::Exact(1), 1))
        .await
        .unwrap();
    assert_eq!(b2.streams[0].version, 2);
    // And tenant-a's expectations are checked against tenant-a's stream only.
    assert!(matches!(
        store
            .append(batch("tenant-a", "task-1", ExpectedVersion::Exact(2), 1))
            .await,
        Err(StoreError::WrongExpectedVersion {
            actual: Some(3),
            ..
        })
    ));

    for (tenant, versions) in [("tenant-a", 3_u64), ("tenant-b", 2)] {
        let events = store
            .read_stream(tenant, &sid("task-1"), 1, Direction::Forward, 100)
            .await
            .unwrap();
        assert_eq!(events.len() as u64, versions);
        assert!(events.iter().all(|e| e.tenant_id == tenant));
        assert!(events.iter().zip(1..).all(|(e, v)| e.stream_version == v));
        let head = store
            .stream_head(tenant, &sid("task-1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((head.tenant_id.as_str(), head.version), (tenant, versions));
        assert_eq!(head.last_hash, events.last().unwrap().hash);
        let report = store.verify_stream(tenant, &sid("task-1")).await.unwrap();
        assert!(report.is_intact(), "{tenant}: {report:?}");
        assert_eq!(report.events_checked, versions);
        assert_eq!(report.streams_checked, 1);
    }
    assert!(
        store
            .stream_head("tenant-c", &sid("task-1"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .read_stream("tenant-c", &sid("task-1"), 1, Direction::Forward, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let all = store.verify_all().await.unwrap();
    assert!(all.is_intact());
    assert_eq!((all.streams_checked, all.events_checked), (2, 5));

    // Each chain stands alone: altering tenant-b's first event breaks tenant-b's chain only.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER USER")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE events SET payload = '{\"i\":9}' \
          WHERE tenant_id = 'tenant-b' AND stream_id = 'task-1' AND stream_version = 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let broken = store
        .verify_stream("tenant-b", &sid("task-1"))
        .await
        .unwrap();
    let bad = broken.first_bad().unwrap();
    assert_eq!(
        (bad.tenant_id.as_str(), bad.stream_id.as_str(), &bad.kind),
        ("tenant-b", "task-1", &TamperKind::HashMismatch)
    );
    assert_eq!(bad.stream_version, Some(1));
    assert!(
        store
            .verify_stream("tenant-a", &sid("task-1"))
            .await
            .unwrap()
            .is_intact()
    );
    let all = store.verify_all().await.unwrap();
    assert_eq!(all.tampered.len(), 1);
    assert_eq!(all.tampered[0].tenant_id, "tenant-b");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn one_command_id_in_two_tenants_is_two_commands(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let command = Uuid::now_v7();
    let first_a = store
        .append(batch("tenant-a", "s", ExpectedVersion::NoStream, 2).idempotent(command))
        .await
        .unwrap();

    // tenant-b's answer to the same command id and stream ids, once while tenant-a holds them
    // and once in a store where nobody does, is the same (up to server-generated values).
    let control_store = {
        let control = EventStore::new(pool.clone());
        let fresh = Uuid::now_v7();
        let answer = control
            .append(batch("tenant-c", "s", ExpectedVersion::NoStream, 2).idempotent(fresh))
            .await
            .unwrap();
        shape(&answer)
    };
    let first_b = store
        .append(batch("tenant-b", "s", ExpectedVersion::NoStream, 2).idempotent(command))
        .await
        .unwrap();
    assert_eq!(shape(&first_b), control_store);
    assert!(!first_b.replayed, "not a replay of tenant-a's command");
    assert!(
        first_b
            .events
            .iter()
            .all(|e| first_a.events.iter().all(|o| o.event_id != e.event_id))
    );

    // A different request under the id in tenant-c is tenant-c's first use of it, not a reuse.
    let other = store
        .append(batch("tenant-c", "other", ExpectedVersion::Any, 1).idempotent(command))
        .await
        .unwrap();
    assert!(!other.replayed);

    // Retries are answered per tenant, each with its own first result.
    let again_b = store
        .append(batch("tenant-b", "s", ExpectedVersion::NoStream, 2).idempotent(command))
        .await
        .unwrap();
    assert!(again_b.replayed);
    assert_eq!(again_b.events, first_b.events);
    let again_a = store
        .append(batch("tenant-a", "s", ExpectedVersion::NoStream, 2).idempotent(command))
        .await
        .unwrap();
    assert_eq!(again_a.events, first_a.events);
    assert!(matches!(
        store
            .append(batch("tenant-b", "s", ExpectedVersion::Any, 1).idempotent(command))
            .await,
        Err(StoreError::CommandIdReused { .. })
    ));

    assert_eq!(
        store
            .command_result("tenant-a", command)
            .await
            .unwrap()
            .unwrap()
            .events,
        first_a.events
    );
    assert_eq!(
        store
            .command_result("tenant-b", command)
            .await
            .unwrap()
            .unwrap()
            .events,
        first_b.events
    );
    assert!(
        store
            .command_result("tenant-d", command)
            .await
            .unwrap()
            .is_none()
    );
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM command_log WHERE command_id = $1")
        .bind(command)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, 3);
}

/// The migrations before tenant-scoped ids, read from the migrations folder.
async fn migrator_before_tenant_scoping() -> Migrator {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let dir = std::env::temp_dir().join(format!("annals-migrations-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.as_str() < "20261202100001" {
            std::fs::copy(entry.path(), dir.join(&name)).unwrap();
        }
    }
    let migrator = Migrator::new(dir.as_path()).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    migrator
}

#[sqlx::test(migrations = false)]
async fn data_written_before_tenant_scoping_stays_valid(pool: PgPool) {
    migrator_before_tenant_scoping()
        .await
        .run(&pool)
        .await
        .unwrap();
    // Written under the old keys: commands with ids, and a projection's bookkeeping.
    let store = EventStore::new(pool.clone());
    let (c1, c2) = (Uuid::now_v7(), Uuid::now_v7());
    let first = store
        .append(batch("tenant-a", "old-1", ExpectedVersion::NoStream, 2).idempotent(c1))
        .await
        .unwrap();
    store
        .append(batch("tenant-b", "old-2", ExpectedVersion::NoStream, 1).idempotent(c2))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO projection_streams (projection, stream_id, version, last_position) \
         VALUES ('tasks', 'old-1', 2, $1)",
    )
    .bind(first.last_position().0)
    .execute(&pool)
    .await
    .unwrap();

    MIGRATOR.run(&pool).await.unwrap();

    let tenants: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT command_id, tenant_id FROM command_log ORDER BY command_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut expected = vec![(c1, "tenant-a".to_owned()), (c2, "tenant-b".to_owned())];
    expected.sort();
    assert_eq!(tenants, expected);
    let (tenant, version): (String, i64) = sqlx::query_as(
        "SELECT tenant_id, version FROM projection_streams WHERE stream_id = 'old-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((tenant.as_str(), version), ("tenant-a", 2));

    // A retry of the old command is still answered with its first result; the stream goes on.
    let retried = store
        .append(batch("tenant-a", "old-1", ExpectedVersion::NoStream, 2).idempotent(c1))
        .await
        .unwrap();
    assert!(retried.replayed);
    assert_eq!(retried.events, first.events);
    let next = store
        .append(batch("tenant-a", "old-1", ExpectedVersion::Exact(2), 1))
        .await
        .unwrap();
    assert_eq!(next.streams[0].version, 3);
    // The same ids are free in another tenant.
    let theirs = store
        .append(batch("tenant-c", "old-1", ExpectedVersion::NoStream, 1).idempotent(c1))
        .await
        .unwrap();
    assert!(!theirs.replayed);
    assert!(store.verify_all().await.unwrap().is_intact());
}
