//! The projections of this crate and the fixed list of them.
//!
//! | projection | stream types | tables |
//! |---|---|---|
//! | `problems` | `problem` | problems, frames, tree nodes, node priorities, analysis plans, results, artifacts, recommendations, deliverables, feedback; `problem_pipeline_summary` |
//! | `tasks` | `task` | tasks, task_reminders; `task_user_summary` (overdue derived at query time by `task_user_summary_view` / `overdue_tasks`) |
//! | `agent_sessions` | `agent_session` | agent_sessions, agent_session_personas; `user_activity`, `cost_daily` (views `active_agent_sessions`, `user_activity_view`) |
//! | `governance` | `governance_decision` | governance_decisions; `governance_daily` (view `governance_approval_rates`) |
//! | `audit` | all | audit_log, audit_resource_state |
//!
//! Each model owns its reads next to its writes: `<model>::reads` holds the row types and the
//! SELECTs (named constants) that query-api runs against the model's tables and views,
//! summaries included (a summary's reads sit with the projection that writes it).
//!
//! # Values a column cannot hold
//!
//! The event store accepts what the API edge may refuse (older events, other writers), so every
//! model applies these rules instead of failing or clamping on a value:
//! - **NUL** (U+0000) in any string of a payload or of the metadata (values and object keys,
//!   at any depth) is stored as U+FFFD ([`NUL_REPLACEMENT`]): Postgres `text` and `jsonb`
//!   cannot hold it at all. Everything else of the string is kept; the event store keeps the
//!   original bytes (its `json` column), so a rebuild from a future encoding loses nothing.
//! - **Integers** go into their column through a checked conversion ([`fit`]): a value the
//!   column's type cannot hold (e.g. `tokens` or a file size of 2^63 or more in a `BIGINT`, a
//!   level above 2^31-1 in an `INTEGER`) fails the event with [`ProjectionError::OutOfRange`],
//!   which the runner dead-letters with that reason; nothing is stored clamped. Sums are
//!   checked the same way in memory; a per-day sum that overflows in SQL fails the event with
//!   Postgres's `bigint out of range`, dead-lettered likewise.
//! - **Decimals** are exact (`NUMERIC`, passed as text: [`num`]).

use std::sync::Arc;

use aggregates::DomainEvent;
use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use rust_decimal::Decimal;

use crate::projection::{Projection, ProjectionError};

pub mod audit;
pub mod governance;
pub mod problems;
pub mod sessions;
pub mod tasks;

/// Every projection, in a fixed order.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(problems::ProblemsProjection),
        Arc::new(tasks::TasksProjection),
        Arc::new(sessions::AgentSessionsProjection),
        Arc::new(governance::GovernanceProjection),
        Arc::new(audit::AuditProjection),
    ]
}

/// The projection called `name`.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all().into_iter().find(|p| p.name() == name)
}

/// Decodes (and upcasts) an event of aggregate event type `E`, its strings made storable
/// ([`storable_json`]).
pub(crate) fn decode<E: DomainEvent>(event: &RecordedEvent) -> Result<E, ProjectionError> {
    let mut payload = event
        .payload_json()
        .map_err(|e| ProjectionError::decode(event, e))?;
    storable_json(&mut payload);
    E::from_stored(&event.event_type, event.schema_version, payload)
        .map_err(|e| ProjectionError::decode(event, e))
}

/// JSON of any serialisable value (sub-structures stored as JSONB).
pub(crate) fn json<T: serde::Serialize>(value: &T) -> sqlx::types::Json<serde_json::Value> {
    sqlx::types::Json(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
}

/// A decimal as text for a `$n::numeric` parameter (exact; sqlx has no decimal feature here).
pub(crate) fn num(d: Decimal) -> String {
    d.to_string()
}

/// What the read models store in place of NUL (see the module docs): U+FFFD.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `text` as a Postgres `text` or `jsonb` string can hold it: NUL replaced by
/// [`NUL_REPLACEMENT`], anything else unchanged.
pub fn storable_text(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// Makes every string of `value` storable ([`storable_text`]): values and object keys, at any
/// depth. Two keys that differ only by NUL against U+FFFD become one (the later one wins).
pub fn storable_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => *s = storable_text(std::mem::take(s)),
        Value::Array(items) => items.iter_mut().for_each(storable_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (storable_text(k), v))
                    .collect();
            }
            map.values_mut().for_each(storable_json);
        }
        _ => {}
    }
}

/// `value` converted to its column's integer type `T`, or [`ProjectionError::OutOfRange`]
/// naming `column` (`table.column`): a read model never clamps.
pub(crate) fn fit<T, U>(
    event: &RecordedEvent,
    column: &'static str,
    value: U,
) -> Result<T, ProjectionError>
where
    T: TryFrom<U>,
    U: Copy + std::fmt::Display,
{
    T::try_from(value).map_err(|_| ProjectionError::OutOfRange {
        event_type: event.event_type.clone(),
        column,
        value: value.to_string(),
    })
}

/// The stream version as BIGINT.
pub(crate) fn version(event: &RecordedEvent) -> i64 {
    i64::try_from(event.stream_version).unwrap_or(i64::MAX)
}

/// An instant as the read models store it: Postgres keeps microseconds, and the binding of a
/// `DateTime` truncates (not rounds) the nanoseconds, so the set-based writes do the same.
pub(crate) fn ts(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    at.trunc_subsecs(6)
}

/// The events of a batch split by tenant (tenants in a fixed order, each tenant's events in
/// batch order). Ids are unique per tenant only, so a model folds one tenant's events at a time
/// and keys its rows by id within that tenant.
pub(crate) fn by_tenant(events: &[RecordedEvent]) -> Vec<(&str, Vec<&RecordedEvent>)> {
    let mut groups: std::collections::BTreeMap<&str, Vec<&RecordedEvent>> =
        std::collections::BTreeMap::new();
    for event in events {
        groups
            .entry(event.tenant_id.as_str())
            .or_default()
            .push(event);
    }
    groups.into_iter().collect()
}

/// Rows of `tenant` in a table whose key is in `keys`, each read whole as JSON
/// (`to_jsonb(row)`) into its row type: one statement for a batch. `sql` is a named constant
/// taking the keys as `$1` and the tenant as `$2`.
pub(crate) async fn load_rows<K, R>(
    conn: &mut sqlx::PgConnection,
    sql: &'static str,
    tenant: &str,
    keys: Vec<K>,
) -> Result<Vec<R>, ProjectionError>
where
    K: for<'q> sqlx::Encode<'q, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + sqlx::postgres::PgHasArrayType
        + Send,
    R: serde::de::DeserializeOwned + Send + Unpin + 'static,
{
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<sqlx::types::Json<R>> = sqlx::query_scalar(sql)
        .bind(keys)
        .bind(tenant)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Writes `rows` with one statement: `sql` is a named constant reading them as `$1`, a JSON
/// array, through `jsonb_populate_recordset(NULL::<table>, $1)` (the table's own row type, so a
/// rebuild's `search_path` picks the shadow table's).
pub(crate) async fn write_rows<R: serde::Serialize + Sync>(
    conn: &mut sqlx::PgConnection,
    sql: &'static str,
    rows: &[R],
) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(sql)
        .bind(sqlx::types::Json(rows))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_becomes_the_replacement_character_in_values_and_keys_at_any_depth() {
        let mut v = json!({"a\u{0}": ["x\u{0}y", {"k": "\u{0}"}], "n": 18446744073709551615u64,
                           "plain": "unchanged"});
        storable_json(&mut v);
        assert_eq!(
            v,
            json!({"a\u{FFFD}": ["x\u{FFFD}y", {"k": "\u{FFFD}"}], "n": 18446744073709551615u64,
                   "plain": "unchanged"})
        );
        assert_eq!(storable_text("\u{0}".into()), "\u{FFFD}");
        assert!(!v.to_string().contains("\\u0000"));
    }
}
