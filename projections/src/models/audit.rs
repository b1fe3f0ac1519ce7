//! `audit`: one append-only audit row per event, over every stream type.
//!
//! Changed fields: each payload is flattened to dotted field names (nested objects expanded,
//! arrays kept whole; a partial-update `{"set": v}` becomes `v`, `"clear"` becomes null) and
//! compared with the resource's previous fields (`audit_resource_state`); every field whose
//! value differs is recorded as `{"before": .., "after": ..}`. Before values of a resource's
//! first event are null.
//!
//! Values: what the events hold, stored faithfully, except NUL in any string of the payload or
//! the metadata (actor, actor type, client ip, user agent; payload values and keys), which
//! `jsonb` and `text` cannot hold: it is stored as U+FFFD (see [`super`], "Values a column
//! cannot hold"). Numbers of the payload stay JSON numbers in `changes`: no conversion.
//!
//! Set-based: a batch loads the previous fields of its resources in one statement, diffs its
//! events in memory in stream order, then inserts every audit row with one statement and
//! writes every resource's new fields with another.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

pub mod reads;

use super::{by_tenant, load_rows, storable_json, storable_text, ts, write_rows};
use crate::projection::{Projection, ProjectionError};

const LOAD_STATE: &str = "SELECT to_jsonb(s) FROM audit_resource_state s \
     WHERE s.resource_id = ANY($1) AND s.tenant_id = $2";
/// Append-only: a second row for a position or event id fails the batch. Column arrays rather
/// than a JSON recordset: the audit log is the widest write of a rebuild (one row per event),
/// and typed arrays skip a JSON parse per column.
const INSERT_LOG: &str = "INSERT INTO audit_log (global_position, event_id, tenant_id, action, \
       actor, actor_type, resource_type, resource_id, resource_version, changes, command_id, \
       correlation_id, causation_id, client_ip, user_agent, occurred_at, event_hash, \
       last_position) \
     SELECT g, e, t, a, ac, at, rt, ri, rv, ch::jsonb, cm, co, ca, ip, ua, oc, h, g \
       FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::bigint[], $10::text[], $11::uuid[], $12::uuid[], \
         $13::uuid[], $14::text[], $15::text[], $16::timestamptz[], $17::text[]) \
         AS u(g, e, t, a, ac, at, rt, ri, rv, ch, cm, co, ca, ip, ua, oc, h)";
const UPSERT_STATE: &str = "INSERT INTO audit_resource_state \
       SELECT * FROM jsonb_populate_recordset(NULL::audit_resource_state, $1) \
     ON CONFLICT (tenant_id, resource_id) DO UPDATE \
     SET fields = excluded.fields, last_position = excluded.last_position";

/// An `audit_resource_state` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateRow {
    resource_id: String,
    tenant_id: String,
    fields: Map<String, Value>,
    last_position: i64,
}

/// The batch's `audit_log` rows, column by column.
#[derive(Debug, Default)]
struct LogColumns<'a> {
    global_position: Vec<i64>,
    event_id: Vec<Uuid>,
    tenant_id: Vec<&'a str>,
    action: Vec<&'a str>,
    actor: Vec<String>,
    actor_type: Vec<String>,
    resource_type: Vec<&'a str>,
    resource_id: Vec<&'a str>,
    resource_version: Vec<i64>,
    changes: Vec<String>,
    command_id: Vec<Option<Uuid>>,
    correlation_id: Vec<Option<Uuid>>,
    causation_id: Vec<Option<Uuid>>,
    client_ip: Vec<Option<String>>,
    user_agent: Vec<Option<String>>,
    occurred_at: Vec<DateTime<Utc>>,
    event_hash: Vec<String>,
}

impl LogColumns<'_> {
    async fn insert(self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        if self.global_position.is_empty() {
            return Ok(());
        }
        sqlx::query(INSERT_LOG)
            .bind(self.global_position)
            .bind(self.event_id)
            .bind(self.tenant_id)
            .bind(self.action)
            .bind(self.actor)
            .bind(self.actor_type)
            .bind(self.resource_type)
            .bind(self.resource_id)
            .bind(self.resource_version)
            .bind(self.changes)
            .bind(self.command_id)
            .bind(self.correlation_id)
            .bind(self.causation_id)
            .bind(self.client_ip)
            .bind(self.user_agent)
            .bind(self.occurred_at)
            .bind(self.event_hash)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The audit-log projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditProjection;

const TABLES: &[&str] = &["audit_log", "audit_resource_state"];

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn stream_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for (tenant, events) in by_tenant(events) {
            Self::apply_tenant(conn, tenant, &events).await?;
        }
        Ok(())
    }
}

impl AuditProjection {
    /// Applies one tenant's events of a batch (resource ids are stream ids, unique per tenant).
    async fn apply_tenant(
        conn: &mut PgConnection,
        tenant: &str,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut ids: Vec<String> = events.iter().map(|e| e.stream_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut states: HashMap<String, StateRow> =
            load_rows::<_, StateRow>(conn, LOAD_STATE, tenant, ids)
                .await?
                .into_iter()
                .map(|s| (s.resource_id.clone(), s))
                .collect();
        let mut log = LogColumns::default();
        for event in events {
            let meta = event
                .metadata()
                .map_err(|e| ProjectionError::decode(event, e))?;
            let mut payload = event
                .payload_json()
                .map_err(|e| ProjectionError::decode(event, e))?;
            storable_json(&mut payload);
            let fields = flatten_payload(&event.event_type, &payload);
            let pos = event.global_position.0;
            let state = states
                .entry(event.stream_id.clone())
                .or_insert_with(|| StateRow {
                    resource_id: event.stream_id.clone(),
                    tenant_id: event.tenant_id.clone(),
                    fields: Map::new(),
                    last_position: pos,
                });
            let changes = diff_into(&mut state.fields, fields);
            state.last_position = pos;
            log.global_position.push(pos);
            log.event_id.push(event.event_id);
            log.tenant_id.push(&event.tenant_id);
            log.action.push(&event.event_type);
            log.actor.push(storable_text(meta.actor));
            log.actor_type.push(storable_text(meta.actor_type));
            log.resource_type.push(&event.stream_type);
            log.resource_id.push(&event.stream_id);
            log.resource_version.push(super::version(event));
            log.changes.push(changes);
            log.command_id.push(meta.command_id);
            log.correlation_id.push(meta.correlation_id);
            log.causation_id.push(meta.causation_id);
            log.client_ip.push(meta.client_ip.map(storable_text));
            log.user_agent.push(meta.user_agent.map(storable_text));
            log.occurred_at.push(ts(event.recorded_at));
            log.event_hash.push(hex::encode(event.hash));
        }
        log.insert(conn).await?;
        let mut touched: Vec<&StateRow> = events
            .iter()
            .filter_map(|e| states.get(&e.stream_id))
            .collect();
        touched.sort_by(|a, b| a.resource_id.cmp(&b.resource_id));
        touched.dedup_by(|a, b| a.resource_id == b.resource_id);
        write_rows(conn, UPSERT_STATE, &touched).await
    }
}

/// `{field: {"before": .., "after": ..}}` as JSON text for every field of `after` whose value
/// differs from `before` (a missing field differs from everything, JSON null included, like
/// SQL's `IS DISTINCT FROM` over `jsonb` with a missing key); `after`'s fields then move into
/// `before`. Written straight into the text (fields in key order): no map of changes, no
/// copies of the values.
fn diff_into(before: &mut Map<String, Value>, after: Map<String, Value>) -> String {
    let mut out = String::from("{");
    for (key, value) in after {
        let old = before.get(&key);
        if !old.is_some_and(|old| same(old, &value)) {
            if out.len() > 1 {
                out.push(',');
            }
            push_json(&mut out, &Value::String(key.clone()));
            out.push_str(":{\"before\":");
            push_json(&mut out, old.unwrap_or(&Value::Null));
            out.push_str(",\"after\":");
            push_json(&mut out, &value);
            out.push('}');
        }
        before.insert(key, value);
    }
    out.push('}');
    out
}

/// Appends `value` as JSON text (what `Value::to_string` gives, without a new string).
fn push_json(out: &mut String, value: &Value) {
    use std::fmt::Write;
    // Writing into a `String` cannot fail.
    let _ = write!(out, "{value}");
}

/// `jsonb` equality: numbers compare by value (`1` equals `1.0`), everything else structurally.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || x.as_f64().is_some_and(|x| y.as_f64() == Some(x))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Flattens a payload into dotted field names (see the module docs).
pub fn flatten_payload(event_type: &str, payload: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    // Only partial updates use the bare string "clear" as a value marker.
    let patches = event_type.ends_with(".updated");
    flatten_into(&mut out, "", payload, patches);
    out
}

fn flatten_into(out: &mut Map<String, Value>, prefix: &str, value: &Value, patches: bool) {
    match value {
        Value::Object(map) if !prefix.is_empty() && map.len() == 1 && map.contains_key("set") => {
            if let Some(v) = map.get("set") {
                flatten_into(out, prefix, v, false);
            }
        }
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(out, &key, v, patches && prefix.is_empty());
            }
        }
        Value::String(s) if patches && s == "clear" => {
            out.insert(prefix.to_owned(), Value::Null);
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_records_changed_and_new_fields_and_moves_them_into_the_state() {
        let mut state = json!({"a": 1, "b": "x", "keep": [1]})
            .as_object()
            .cloned()
            .unwrap();
        let after = json!({"a": 1.0, "b": "y", "c": null, "keep": [1]})
            .as_object()
            .cloned()
            .unwrap();
        let changes: Value = serde_json::from_str(&diff_into(&mut state, after)).unwrap();
        assert_eq!(
            changes,
            json!({"b": {"before": "x", "after": "y"}, "c": {"before": null, "after": null}})
        );
        assert_eq!(
            Value::Object(state),
            json!({"a": 1.0, "b": "y", "c": null, "keep": [1]})
        );
        assert_eq!(diff_into(&mut Map::new(), Map::new()), "{}");
    }

    #[test]
    fn flattens_nested_objects_and_patches() {
        let f = flatten_payload(
            "task.updated",
            &json!({"task_id": "t", "title": "x", "due_date": {"set": "2030-01-01"},
                    "priority": "clear", "recurrence": {"set": {"pattern": "daily", "interval": 2}},
                    "tags": ["a"]}),
        );
        assert_eq!(f["due_date"], json!("2030-01-01"));
        assert_eq!(f["priority"], Value::Null);
        assert_eq!(f["recurrence.pattern"], json!("daily"));
        assert_eq!(f["tags"], json!(["a"]));
        let f = flatten_payload("problem.submitted", &json!({"problem": {"title": "clear"}}));
        assert_eq!(f["problem.title"], json!("clear"));
    }
}
