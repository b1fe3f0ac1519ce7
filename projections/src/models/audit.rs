//! `audit`: one append-only audit row per event, over every stream type.
//!
//! Changed fields: each payload is flattened to dotted field names (nested objects expanded,
//! arrays kept whole; a partial-update `{"set": v}` becomes `v`, `"clear"` becomes null) and
//! compared with the resource's previous fields (`audit_resource_state`); every field whose
//! value differs is recorded as `{"before": .., "after": ..}`. Before values of a resource's
//! first event are null. Diff, state update and insert are one statement per event.

use async_trait::async_trait;
use event_store::RecordedEvent;
use serde_json::{Map, Value};
use sqlx::PgConnection;

use crate::projection::{Projection, ProjectionError};

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

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let meta = event
            .metadata()
            .map_err(|e| ProjectionError::decode(event, e))?;
        let payload = event
            .payload_json()
            .map_err(|e| ProjectionError::decode(event, e))?;
        let fields = flatten_payload(&event.event_type, &payload);
        sqlx::query(
            "WITH prev AS ( \
               SELECT COALESCE((SELECT fields FROM audit_resource_state WHERE resource_id = $1), \
                               '{}'::jsonb) AS f), \
             changes AS ( \
               SELECT COALESCE(jsonb_object_agg(n.key, \
                        jsonb_build_object('before', prev.f -> n.key, 'after', n.value)), \
                        '{}'::jsonb) AS c \
                 FROM prev, jsonb_each($2::jsonb) n \
                WHERE (prev.f -> n.key) IS DISTINCT FROM n.value), \
             state AS ( \
               INSERT INTO audit_resource_state (resource_id, tenant_id, fields, last_position) \
               SELECT $1, $3, prev.f || $2::jsonb, $4 FROM prev \
               ON CONFLICT (resource_id) DO UPDATE \
               SET fields = excluded.fields, last_position = excluded.last_position) \
             INSERT INTO audit_log (global_position, event_id, tenant_id, action, actor, \
               actor_type, resource_type, resource_id, resource_version, changes, command_id, \
               correlation_id, causation_id, client_ip, user_agent, occurred_at, event_hash, \
               last_position) \
             SELECT $4, $5, $3, $6, $7, $8, $9, $1, $10, changes.c, $11, $12, $13, $14, $15, \
               $16, $17, $4 FROM changes",
        )
        .bind(&event.stream_id)
        .bind(sqlx::types::Json(Value::Object(fields)))
        .bind(&event.tenant_id)
        .bind(event.global_position.0)
        .bind(event.event_id)
        .bind(&event.event_type)
        .bind(&meta.actor)
        .bind(&meta.actor_type)
        .bind(&event.stream_type)
        .bind(super::version(event))
        .bind(meta.command_id)
        .bind(meta.correlation_id)
        .bind(meta.causation_id)
        .bind(meta.client_ip.as_deref())
        .bind(meta.user_agent.as_deref())
        .bind(event.recorded_at)
        .bind(hex::encode(event.hash))
        .execute(conn)
        .await?;
        Ok(())
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
