//! `governance`: governance decisions (seed 002) and approval counts per tenant, UTC day,
//! framework and event type.
//!
//! Values (see [`super`], "Values a column cannot hold"): NUL in strings and JSON is stored as
//! U+FFFD; the JSON sub-structures keep their numbers as `jsonb` numbers (no conversion).
//!
//! Set-based: a batch inserts its decisions with one statement and adds its counts, summed per
//! key in memory, with another.

use std::collections::BTreeMap;

use aggregates::governance::GovernanceEvent;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use event_store::RecordedEvent;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub mod reads;

use super::{decode, ts, write_rows};
use crate::projection::{Projection, ProjectionError};

/// Decisions are immutable: a second row for an id fails the batch.
const INSERT_DECISIONS: &str = "INSERT INTO governance_decisions \
     SELECT * FROM jsonb_populate_recordset(NULL::governance_decisions, $1)";
/// Adds the batch's counts per key; `last_position` is the highest contributing position.
const BUMP_DAILY: &str = "INSERT INTO governance_daily AS g (tenant_id, day, framework_type, \
       event_type, decision_count, approved_count, last_position) \
     SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::text[], $5::bigint[], \
       $6::bigint[], $7::bigint[]) \
     ON CONFLICT (tenant_id, day, framework_type, event_type) DO UPDATE \
     SET decision_count = g.decision_count + excluded.decision_count, \
         approved_count = g.approved_count + excluded.approved_count, \
         last_position = GREATEST(g.last_position, excluded.last_position)";

/// A `governance_decisions` row (column order of the table).
#[derive(Debug, Serialize)]
struct DecisionRow {
    decision_id: Uuid,
    tenant_id: String,
    session_id: Uuid,
    event_type: String,
    framework_type: String,
    approved: bool,
    reason: Option<String>,
    validation_context: Value,
    decision_details: Value,
    fallback_triggered: bool,
    correlation_id: Option<Uuid>,
    created_by: String,
    created_at: DateTime<Utc>,
    last_position: i64,
}

/// Counts of one (tenant, day, framework, event type) over a batch.
#[derive(Debug, Default)]
struct DailyDelta {
    decisions: i64,
    approved: i64,
    last_position: i64,
}

/// The governance projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct GovernanceProjection;

const TABLES: &[&str] = &["governance_decisions", "governance_daily"];

#[async_trait]
impl Projection for GovernanceProjection {
    fn name(&self) -> &'static str {
        "governance"
    }

    fn stream_types(&self) -> Option<&'static [&'static str]> {
        Some(&["governance_decision"])
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut rows = Vec::with_capacity(events.len());
        let mut daily: BTreeMap<(String, NaiveDate, String, String), DailyDelta> = BTreeMap::new();
        for event in events {
            let GovernanceEvent::Recorded(d) = decode(event)?;
            let pos = event.global_position.0;
            let created_at = ts(d.created_at);
            let delta = daily
                .entry((
                    event.tenant_id.clone(),
                    created_at.date_naive(),
                    d.framework_type.as_str().to_owned(),
                    d.event_type.as_str().to_owned(),
                ))
                .or_default();
            delta.decisions += 1;
            delta.approved += i64::from(d.approved);
            delta.last_position = delta.last_position.max(pos);
            rows.push(DecisionRow {
                decision_id: d.decision_id.as_uuid(),
                tenant_id: event.tenant_id.clone(),
                session_id: d.session_id.as_uuid(),
                event_type: d.event_type.as_str().to_owned(),
                framework_type: d.framework_type.as_str().to_owned(),
                approved: d.approved,
                reason: d.reason.as_ref().map(|r| r.as_str().to_owned()),
                validation_context: super::json(&d.validation_context).0,
                decision_details: super::json(&d.decision_details).0,
                fallback_triggered: d.fallback_triggered,
                correlation_id: d.correlation_id,
                created_by: d.created_by,
                created_at,
                last_position: pos,
            });
        }
        write_rows(conn, INSERT_DECISIONS, &rows).await?;
        let mut cols: (
            Vec<String>,
            Vec<NaiveDate>,
            Vec<String>,
            Vec<String>,
            Vec<i64>,
            Vec<i64>,
            Vec<i64>,
        ) = Default::default();
        for ((tenant, day, framework, event_type), d) in daily {
            cols.0.push(tenant);
            cols.1.push(day);
            cols.2.push(framework);
            cols.3.push(event_type);
            cols.4.push(d.decisions);
            cols.5.push(d.approved);
            cols.6.push(d.last_position);
        }
        if cols.0.is_empty() {
            return Ok(());
        }
        sqlx::query(BUMP_DAILY)
            .bind(cols.0)
            .bind(cols.1)
            .bind(cols.2)
            .bind(cols.3)
            .bind(cols.4)
            .bind(cols.5)
            .bind(cols.6)
            .execute(conn)
            .await?;
        Ok(())
    }
}
