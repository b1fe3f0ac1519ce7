//! Values the event store accepts but a column cannot hold as such, appended directly through
//! `EventStore::append` (bypassing the API edge) and run through the real projections:
//! - NUL in every string the domain accepts (payload values and object keys at any depth, and
//!   the metadata's client ip and user agent): no dead letter, every model
//!   holds as many rows as for the same events without NUL, with U+FFFD in place of NUL, the
//!   audit row exists and queries over the rows work;
//! - `tokens` and file sizes of `u64::MAX`: a `BIGINT` cannot hold them, so (the chosen
//!   behaviour, see `projections::models`) the event is dead-lettered with a reason naming the
//!   column, never stored clamped; the audit log still records it faithfully.
#![allow(clippy::unwrap_used)] // integration tests: a failed unwrap is a failed test

use std::collections::HashMap;

use aggregates::DomainEvent;
use aggregates::agent_session::AgentSessionEvent;
use aggregates::governance::GovernanceEvent;
use aggregates::problem::ProblemEvent;
use aggregates::task::{Task, TaskEvent};
use event_store::{
    AppendBatch, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId,
};
use projections::models::{self, storable_json};
use projections::testkit::{
    all_events, catch_up_all, create_task, exec, minutes, problem_scenario, session_scenario, uuid,
};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The tenant of the original events (no NUL anywhere).
const PLAIN: &str = "tenant-plain";
/// The tenant of their copies with NUL in every string the domain accepts.
const NUL: &str = "tenant-nul";
/// The tenant of the copies with numbers past `BIGINT`.
const BIG: &str = "tenant-big";

/// Whether the projections can decode `payload` as `stream_type`'s event once its strings are
/// made storable (what `projections::models` does before decoding).
fn decodes(stream_type: &str, event_type: &str, version: u32, payload: &Value) -> bool {
    let mut p = payload.clone();
    storable_json(&mut p);
    match stream_type {
        "problem" => ProblemEvent::from_stored(event_type, version, p).is_ok(),
        "task" => TaskEvent::from_stored(event_type, version, p).is_ok(),
        "agent_session" => AgentSessionEvent::from_stored(event_type, version, p).is_ok(),
        "governance_decision" => GovernanceEvent::from_stored(event_type, version, p).is_ok(),
        other => panic!("unknown stream type {other}"),
    }
}

/// Every UUID spelled in `value` replaced through `ids` (new ones made on first sight), so that
/// a copy is a set of new aggregates with the same references between them.
fn remap(value: &mut Value, ids: &mut HashMap<Uuid, Uuid>) {
    match value {
        Value::String(s) => {
            if let Ok(id) = Uuid::parse_str(s) {
                *s = ids.entry(id).or_insert_with(Uuid::now_v7).to_string();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| remap(v, ids)),
        Value::Object(map) => map.values_mut().for_each(|v| remap(v, ids)),
        _ => {}
    }
}

/// Puts NUL into every string of `root` (values and keys) where the event still decodes:
/// everything the domain accepts as text. Returns how many strings now hold NUL.
fn poison(root: &mut Value, accepts: &dyn Fn(&Value) -> bool) -> usize {
    fn paths(value: &Value, at: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, bool)>) {
        match value {
            Value::String(_) => out.push((at.clone(), false)),
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    at.push(Step::Index(i));
                    paths(v, at, out);
                    at.pop();
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    at.push(Step::Key(k.clone()));
                    out.push((at.clone(), true));
                    paths(v, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    let mut poisoned = 0;
    // Deepest first, so that renaming a key does not invalidate the paths below it.
    all.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    for (path, is_key) in all {
        let mut candidate = root.clone();
        if !inject(&mut candidate, &path, is_key) {
            continue;
        }
        if accepts(&candidate) {
            *root = candidate;
            poisoned += 1;
        }
    }
    poisoned
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Wraps the string (or the key) at `path` in NUL characters.
fn inject(root: &mut Value, path: &[Step], is_key: bool) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = root;
    for step in parents {
        node = match (step, node) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k).unwrap(),
            (Step::Index(i), Value::Array(a)) => &mut a[*i],
            _ => return false,
        };
    }
    match (last, node) {
        (Step::Key(k), Value::Object(m)) if is_key => {
            let v = m.remove(k).unwrap();
            m.insert(format!("\0{k}\0"), v);
            true
        }
        (Step::Key(k), Value::Object(m)) => match m.get_mut(k) {
            Some(Value::String(s)) => {
                *s = format!("\0{s}\0x\0");
                true
            }
            _ => false,
        },
        (Step::Index(i), Value::Array(a)) => match &mut a[*i] {
            Value::String(s) => {
                *s = format!("\0{s}\0x\0");
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Appends a copy of `events` under `tenant`, one append per event in their order, with new
/// aggregate ids; `change` edits each payload (given the event type).
async fn append_copy(
    store: &EventStore,
    tenant: &str,
    meta: &Metadata,
    events: &[RecordedEvent],
    mut change: impl FnMut(&RecordedEvent, &mut Value),
) {
    let mut ids = HashMap::new();
    for e in events {
        let mut payload = e.payload_json().unwrap();
        remap(&mut payload, &mut ids);
        change(e, &mut payload);
        let mut stream = Value::String(e.stream_id.clone());
        remap(&mut stream, &mut ids);
        let mut m = meta.clone();
        m.tenant = tenant.to_owned();
        store
            .append(AppendBatch::new(m).stream(
                StreamId::new(stream.as_str().unwrap()).unwrap(),
                e.stream_type.clone(),
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    e.event_type.clone(),
                    e.schema_version,
                    payload,
                )],
            ))
            .await
            .unwrap();
    }
}

/// Actor, client ip, user agent and the changed title of an audit row.
type AuditedRow = (String, Option<String>, Option<String>, Option<String>);

/// Rows of `table` per tenant.
async fn rows_of(pool: &PgPool, table: &str, tenant: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE tenant_id = $1"
    ))
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "event_store::MIGRATOR")]
async fn nul_and_huge_numbers_never_poison_the_projections(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    problem_scenario(&store, PLAIN, 1, 0).await;
    session_scenario(&store, PLAIN, 1, "alice").await;
    let task = uuid(0xbeef);
    exec::<Task>(
        &store,
        PLAIN,
        task,
        create_task(task, "alice", Some(minutes(600)), true),
        minutes(0),
        "alice",
    )
    .await;
    let originals = all_events(&store).await;

    // NUL everywhere the domain accepts a string, and in the metadata strings the store accepts
    // it in (it refuses control characters in the actor and its type).
    let mut meta = Metadata::new(NUL, "alice", "user");
    meta.client_ip = Some("10.0.0.7\0".into());
    meta.user_agent = Some("\0annals-tests/1\0".into());
    let mut poisoned: HashMap<String, usize> = HashMap::new();
    append_copy(&store, NUL, &meta, &originals, |e, payload| {
        let accepts = |p: &Value| decodes(&e.stream_type, &e.event_type, e.schema_version, p);
        *poisoned.entry(e.event_type.clone()).or_default() += poison(payload, &accepts);
        assert!(accepts(payload), "{} still decodes", e.event_type);
    })
    .await;
    // The domain's free text holds NUL now: titles, raw text, descriptions, reasons, metadata.
    for event_type in [
        "problem.submitted",
        "problem.frame_defined",
        "problem.tree_node_added",
        "problem.recommendation_added",
        "task.created",
        "agent_session.persona_activated",
        "governance_decision.recorded",
    ] {
        assert!(
            poisoned.get(event_type).copied().unwrap_or(0) > 0,
            "no NUL in {event_type}: {poisoned:?}"
        );
    }

    // Numbers past BIGINT: tokens of a cost, the size of an artifact and of a deliverable.
    let big = Metadata::new(BIG, "alice", "user");
    let of_type = |t: &str| -> Vec<RecordedEvent> {
        originals
            .iter()
            .filter(|e| e.stream_type == t)
            .cloned()
            .collect()
    };
    append_copy(&store, BIG, &big, &of_type("agent_session"), |e, p| {
        if e.event_type == "agent_session.cost_recorded" {
            p["tokens"] = Value::from(u64::MAX);
        }
    })
    .await;
    append_copy(&store, BIG, &big, &of_type("problem"), |e, p| {
        if e.event_type == "problem.analysis_result_recorded" {
            p["result"]["artifacts"][0]["file_size"] = Value::from(u64::MAX);
        }
    })
    .await;
    append_copy(&store, BIG, &big, &of_type("problem"), |e, p| {
        if e.event_type == "problem.deliverable_added" {
            p["deliverable"]["file_size"] = Value::from(u64::MAX);
        }
    })
    .await;

    catch_up_all(&store).await;

    // No dead letter for NUL: every model holds the copy whole.
    let dead: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT projection, tenant_id, event_type, kind, error FROM projection_dead_letters \
         ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        dead.iter().all(|d| d.1 == BIG),
        "dead letters outside the huge numbers: {dead:?}"
    );
    for p in models::all() {
        for table in p.tables() {
            let has_tenant: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
                  WHERE table_schema = current_schema() AND table_name = $1 \
                    AND column_name = 'tenant_id')",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
            if !has_tenant {
                continue;
            }
            let plain = rows_of(&pool, table, PLAIN).await;
            // The scenarios set no reminder; every other table has rows to compare.
            assert!(plain > 0 || *table == "task_reminders", "{table} is empty");
            assert_eq!(rows_of(&pool, table, NUL).await, plain, "rows of {table}");
        }
    }
    // U+FFFD stands where NUL was; queries over the rows (text and JSON operators) work.
    let title: String = sqlx::query_scalar("SELECT title FROM tasks WHERE tenant_id = $1")
        .bind(NUL)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        title.starts_with('\u{FFFD}') && title.ends_with("\u{FFFD}x\u{FFFD}"),
        "{title:?}"
    );
    let submitted: (String, String) =
        sqlx::query_as("SELECT raw_text, metadata::text FROM problems WHERE tenant_id = $1")
            .bind(NUL)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(submitted.0.contains('\u{FFFD}'), "{submitted:?}");
    assert!(
        submitted.1.contains("\u{FFFD}source\u{FFFD}"),
        "{submitted:?}"
    );
    let audited: Vec<AuditedRow> = sqlx::query_as(
        "SELECT actor, client_ip, user_agent, changes -> 'title' ->> 'after' FROM audit_log \
          WHERE tenant_id = $1 AND action = 'task.created'",
    )
    .bind(NUL)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].0, "alice");
    assert_eq!(audited[0].1.as_deref(), Some("10.0.0.7\u{FFFD}"));
    assert_eq!(
        audited[0].2.as_deref(),
        Some("\u{FFFD}annals-tests/1\u{FFFD}")
    );
    assert_eq!(audited[0].3.as_deref(), Some(title.as_str()));

    // Every event has its audit row, the huge numbers included, held exactly.
    let (events, audited): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM audit_log)")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(audited, events);
    // Only the first cost changes `tokens` (the later ones repeat the value).
    let tokens: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT changes -> 'tokens' ->> 'after' FROM audit_log \
          WHERE tenant_id = $1 AND action = 'agent_session.cost_recorded' \
          ORDER BY global_position",
    )
    .bind(BIG)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tokens.first(),
        Some(&Some(u64::MAX.to_string())),
        "{tokens:?}"
    );

    // A BIGINT cannot hold them: dead-lettered with the column named, nothing clamped.
    let failed = |event_type: &str| {
        dead.iter()
            .filter(|d| d.2 == event_type && d.3 == "failed")
            .map(|d| d.4.clone())
            .collect::<Vec<_>>()
    };
    let reasons = failed("agent_session.cost_recorded");
    assert_eq!(reasons.len(), 1, "{dead:?}");
    assert!(
        reasons[0].contains("18446744073709551615 does not fit agent_sessions.tokens_used"),
        "{reasons:?}"
    );
    let reasons = failed("problem.analysis_result_recorded");
    assert_eq!(reasons.len(), 1, "{dead:?}");
    assert!(
        reasons[0].contains("problem_artifacts.file_size"),
        "{reasons:?}"
    );
    let reasons = failed("problem.deliverable_added");
    assert_eq!(reasons.len(), 1, "{dead:?}");
    assert!(
        reasons[0].contains("problem_deliverables.file_size"),
        "{reasons:?}"
    );
    let clamped: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM agent_sessions WHERE tokens_used = $1) \
              + (SELECT count(*) FROM cost_daily WHERE tokens_used = $1) \
              + (SELECT count(*) FROM problem_artifacts WHERE file_size = $1) \
              + (SELECT count(*) FROM problem_deliverables WHERE file_size = $1)",
    )
    .bind(i64::MAX)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(clamped, 0, "no value is stored clamped");
}
