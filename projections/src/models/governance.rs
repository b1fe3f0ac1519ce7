//! `governance`: governance decisions (seed 002) and approval counts per tenant, UTC day,
//! framework and event type.

use aggregates::governance::GovernanceEvent;
use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::PgConnection;

use super::{decode, json};
use crate::projection::{Projection, ProjectionError};

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

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let GovernanceEvent::Recorded(d) = decode(event)?;
        let pos = event.global_position.0;
        sqlx::query(
            "WITH d AS ( \
               INSERT INTO governance_decisions (decision_id, tenant_id, session_id, event_type, \
                 framework_type, approved, reason, validation_context, decision_details, \
                 fallback_triggered, correlation_id, created_by, created_at, last_position) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING 1) \
             INSERT INTO governance_daily AS g (tenant_id, day, framework_type, event_type, \
               decision_count, approved_count, last_position) \
             SELECT $2, ($13 AT TIME ZONE 'UTC')::date, $5, $4, 1, CASE WHEN $6 THEN 1 ELSE 0 END, $14 \
               FROM d \
             ON CONFLICT (tenant_id, day, framework_type, event_type) DO UPDATE \
             SET decision_count = g.decision_count + 1, \
                 approved_count = g.approved_count + excluded.approved_count, \
                 last_position = GREATEST(g.last_position, excluded.last_position)",
        )
        .bind(d.decision_id.as_uuid())
        .bind(&event.tenant_id)
        .bind(d.session_id.as_uuid())
        .bind(d.event_type.as_str())
        .bind(d.framework_type.as_str())
        .bind(d.approved)
        .bind(d.reason.as_ref().map(|r| r.as_str()))
        .bind(json(&d.validation_context))
        .bind(json(&d.decision_details))
        .bind(d.fallback_triggered)
        .bind(d.correlation_id)
        .bind(&d.created_by)
        .bind(d.created_at)
        .bind(pos)
        .execute(conn)
        .await?;
        Ok(())
    }
}
