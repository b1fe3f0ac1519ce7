//! Two roles (issue 15): the services' role appends and reads but cannot change or remove
//! anything stored; services refuse an owner login unless allowed.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use event_store::{
    AppendBatch, EventStore, ExpectedVersion, MIGRATOR, Metadata, NewEvent, Position,
    ServiceAccess, StoreError, StreamId,
};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// A pool on the test's database whose sessions act as `annals_service` (privileges are
/// checked against `current_user`, which `SET ROLE` changes), as a service login would.
async fn service_pool(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET ROLE annals_service").execute(conn).await?;
                Ok(())
            })
        })
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap()
}

fn batch(stream: &str, command: Option<Uuid>) -> AppendBatch {
    let events = vec![
        NewEvent::new("test.happened", 1, json!({ "i": 1 })),
        NewEvent::new("test.happened", 1, json!({ "i": 2 })),
    ];
    let b = AppendBatch::new(Metadata::new("tenant-a", "user-1", "user")).stream(
        StreamId::new(stream).unwrap(),
        "test",
        ExpectedVersion::Any,
        events,
    );
    match command {
        Some(id) => b.idempotent(id),
        None => b,
    }
}

async fn sqlstate(pool: &PgPool, statements: &[&str]) -> String {
    let mut tx = pool.begin().await.unwrap();
    let mut last = None;
    for s in statements {
        if let Err(e) = sqlx::query(s).execute(&mut *tx).await {
            last = Some(e);
            break;
        }
    }
    let _ = tx.rollback().await;
    match last {
        Some(sqlx::Error::Database(db)) => db.code().unwrap_or_default().into_owned(),
        Some(other) => panic!("{statements:?}: {other}"),
        None => "succeeded".to_owned(),
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_service_role_appends_reads_and_verifies(pool: PgPool) {
    let service = service_pool(&pool).await;
    let role = event_store::prepare_service(&service, &ServiceAccess::default())
        .await
        .unwrap();
    assert!(!role.is_privileged(), "{role:?}");

    let store = EventStore::new(service.clone());
    let command = Uuid::now_v7();
    let first = store.append(batch("s-1", Some(command))).await.unwrap();
    let replay = store.append(batch("s-1", Some(command))).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.events, first.events);
    store.append(batch("s-2", None)).await.unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let all = loop {
        let b = store.read_all(Position::START, 100).await.unwrap();
        if !b.held_back {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "held back for 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(all.events.len(), 4);
    assert!(store.verify_all().await.unwrap().is_intact());
}

/// Every way of rewriting history that the owner has is refused to the services' role with a
/// permission error — including the audit log's maintenance switch.
#[sqlx::test(migrator = "MIGRATOR")]
async fn the_service_role_cannot_change_or_remove_anything_stored(pool: PgPool) {
    EventStore::new(pool.clone())
        .append(batch("s-1", Some(Uuid::now_v7())))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (global_position, event_id, tenant_id, action, actor, \
           actor_type, resource_type, resource_id, resource_version, changes, occurred_at, \
           event_hash, last_position) \
         SELECT global_position, event_id, tenant_id, 'create', 'user-1', 'user', 'test', \
                stream_id, stream_version, '{}', recorded_at, encode(hash, 'hex'), \
                global_position FROM events LIMIT 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let service = service_pool(&pool).await;

    let attempts: &[&[&str]] = &[
        &["UPDATE events SET payload = '{\"i\":9}'"],
        &["DELETE FROM events"],
        &["TRUNCATE events"],
        &["ALTER TABLE events DISABLE TRIGGER USER"],
        &["ALTER TABLE events DISABLE TRIGGER ALL"],
        &["SET session_replication_role = replica"],
        &["DROP TABLE events CASCADE"],
        &[
            "INSERT INTO events SELECT global_position + 1, gen_random_uuid(), stream_id, \
           stream_type, stream_version + 10, tenant_id, event_type, schema_version, payload, \
           metadata, recorded_at, tx_id, hash FROM events LIMIT 1",
        ],
        &["UPDATE streams SET last_hash = sha256('x'::bytea)"],
        &["DELETE FROM streams"],
        &["DELETE FROM command_log"],
        &["UPDATE command_log SET fingerprint = '\\x00'"],
        &["UPDATE annals_position_epochs SET xid_offset = xid_offset + 1"],
        &["SELECT annals_rebase_positions()"],
        &["ALTER FUNCTION annals_append_group SECURITY INVOKER"],
        &["UPDATE audit_log SET actor = 'someone-else'"],
        &["DELETE FROM audit_log"],
        &["SET LOCAL annals.audit_swap = 'on'", "TRUNCATE audit_log"],
        &["ALTER TABLE audit_log DISABLE TRIGGER USER"],
        &["DELETE FROM _sqlx_migrations"],
        &["UPDATE annals_chain_leaves SET event_hash = sha256('x'::bytea)"],
        &["DELETE FROM annals_chain_leaves"],
        &["UPDATE annals_chain_nodes SET hash = sha256('x'::bytea)"],
        &["DELETE FROM annals_chain_nodes"],
        &["DELETE FROM annals_checkpoints"],
        &["UPDATE annals_checkpoints SET root_hash = sha256('x'::bytea)"],
        &["TRUNCATE annals_chain_leaves, annals_chain_nodes, annals_checkpoints"],
    ];
    for statements in attempts {
        assert_eq!(
            sqlstate(&service, statements).await,
            "42501",
            "{statements:?} must fail with a permission error"
        );
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 2);
    assert!(
        EventStore::new(pool)
            .verify_all()
            .await
            .unwrap()
            .is_intact()
    );
}

/// The guard of item 6: even a role that was granted TRUNCATE on the audit log (a
/// misconfiguration) cannot switch the append-only trigger off with the swap's setting; only
/// the table owner's maintenance path can.
#[sqlx::test(migrator = "MIGRATOR")]
async fn the_audit_swap_switch_needs_the_owner(pool: PgPool) {
    sqlx::query("GRANT TRUNCATE ON audit_log TO annals_service")
        .execute(&pool)
        .await
        .unwrap();
    let service = service_pool(&pool).await;
    assert_eq!(
        sqlstate(
            &service,
            &["SET LOCAL annals.audit_swap = 'on'", "TRUNCATE audit_log"]
        )
        .await,
        "ANI02"
    );
    assert_eq!(sqlstate(&service, &["TRUNCATE audit_log"]).await, "ANI02");
    assert_eq!(
        sqlstate(
            &pool,
            &["SET LOCAL annals.audit_swap = 'on'", "TRUNCATE audit_log"]
        )
        .await,
        "succeeded"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn services_refuse_an_owner_login_unless_allowed(pool: PgPool) {
    let refused = event_store::prepare_service(&pool, &ServiceAccess::default()).await;
    let Err(StoreError::PrivilegedLogin { role }) = refused else {
        panic!("an owner login must be refused: {refused:?}");
    };
    let message = StoreError::PrivilegedLogin { role: role.clone() }.to_string();
    assert!(message.contains("annals_service"), "{message}");

    let allowed = event_store::prepare_service(
        &pool,
        &ServiceAccess {
            migrate_url: None,
            allow_owner: true,
        },
    )
    .await
    .unwrap();
    assert!(allowed.is_privileged());
    assert_eq!(allowed.name, role);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_service_on_an_old_schema_asks_for_the_migrations(pool: PgPool) {
    let newest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();
    let service = service_pool(&pool).await;
    let behind = event_store::prepare_service(&service, &ServiceAccess::default()).await;
    assert!(
        matches!(
            behind,
            Err(StoreError::SchemaBehind { applied, required }) if applied < newest && required == newest
        ),
        "{behind:?}"
    );
}
