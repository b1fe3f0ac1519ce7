//! `agent_sessions`: agent sessions and persona activations (seed 002), per-user activity and
//! cost per tenant, user and day.
//!
//! Approval and rejection counts are kept on the session row (from
//! `agent_session.governance_applied`), so `active_agent_sessions` is a plain filter, not a
//! per-row count over decisions.

use aggregates::agent_session::AgentSessionEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{decode, expect_row, json, num, version};
use crate::projection::{Projection, ProjectionError};

/// The agent-sessions projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentSessionsProjection;

const TABLES: &[&str] = &[
    "agent_sessions",
    "agent_session_personas",
    "user_activity",
    "cost_daily",
];

#[async_trait]
impl Projection for AgentSessionsProjection {
    fn name(&self) -> &'static str {
        "agent_sessions"
    }

    fn stream_types(&self) -> Option<&'static [&'static str]> {
        Some(&["agent_session"])
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let e: AgentSessionEvent = decode(event)?;
        let pos = event.global_position.0;
        let ver = version(event);
        match &e {
            AgentSessionEvent::Created(c) => {
                sqlx::query(
                    "INSERT INTO agent_sessions (session_id, tenant_id, user_ref, agent_type, \
                       agent_config, status, token_cost, tokens_used, estimated_cost, \
                       max_cost_limit, approvals, rejections, created_by, created_at, updated_at, \
                       version, last_position) \
                     VALUES ($1, $2, $3, $4, $5, 'initializing', 0, 0, $6::numeric, $7::numeric, \
                       0, 0, $8, $9, $9, $10, $11)",
                )
                .bind(c.session_id.as_uuid())
                .bind(&event.tenant_id)
                .bind(c.user.as_str())
                .bind(c.agent_type.as_str())
                .bind(json(&c.agent_config))
                .bind(c.estimated_cost.map(|m| num(m.get())))
                .bind(c.max_cost_limit.map(|m| num(m.get())))
                .bind(&c.created_by)
                .bind(c.created_at)
                .bind(ver)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO user_activity AS u (tenant_id, user_ref, session_count, \
                       total_cost, last_session_at, last_position) VALUES ($1, $2, 1, 0, $3, $4) \
                     ON CONFLICT (tenant_id, user_ref) DO UPDATE \
                     SET session_count = u.session_count + 1, \
                         last_session_at = GREATEST(u.last_session_at, excluded.last_session_at), \
                         last_position = GREATEST(u.last_position, excluded.last_position)",
                )
                .bind(&event.tenant_id)
                .bind(c.user.as_str())
                .bind(c.created_at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
            AgentSessionEvent::ApprovalRequested(t) => {
                set_status(
                    conn,
                    event,
                    t.session_id.as_uuid(),
                    "pending_approval",
                    t.at,
                )
                .await
            }
            AgentSessionEvent::Approved(d) => {
                set_status(conn, event, d.session_id.as_uuid(), "approved", d.at).await
            }
            AgentSessionEvent::Started(t) => {
                let r = sqlx::query(
                    "UPDATE agent_sessions SET status = 'running', started_at = $2, \
                       updated_at = $2, version = $3, last_position = $4 WHERE session_id = $1",
                )
                .bind(t.session_id.as_uuid())
                .bind(t.at)
                .bind(ver)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "agent session")
            }
            AgentSessionEvent::GovernanceApplied(g) => {
                let r = sqlx::query(
                    "UPDATE agent_sessions SET approvals = approvals + CASE WHEN $2 THEN 1 ELSE 0 END, \
                       rejections = rejections + CASE WHEN $2 THEN 0 ELSE 1 END, \
                       updated_at = $3, version = $4, last_position = $5 WHERE session_id = $1",
                )
                .bind(g.session_id.as_uuid())
                .bind(g.approved)
                .bind(g.at)
                .bind(ver)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "agent session")
            }
            AgentSessionEvent::Blocked(b) => {
                let r = sqlx::query(
                    "UPDATE agent_sessions SET status = 'blocked', block_reason = $2, \
                       updated_at = $3, version = $4, last_position = $5 WHERE session_id = $1",
                )
                .bind(b.session_id.as_uuid())
                .bind(b.reason.as_str())
                .bind(b.at)
                .bind(ver)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "agent session")
            }
            AgentSessionEvent::CostRecorded(c) => {
                let tokens = c.tokens.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX));
                // Session total (exact, from the event), user activity and the daily cost in
                // one round trip.
                let r = sqlx::query(
                    "WITH s AS ( \
                       UPDATE agent_sessions SET token_cost = $2::numeric, \
                         tokens_used = tokens_used + $4, updated_at = $5, version = $6, \
                         last_position = $7 WHERE session_id = $1 \
                       RETURNING tenant_id, user_ref), \
                     u AS ( \
                       UPDATE user_activity ua SET total_cost = ua.total_cost + $3::numeric, \
                         last_position = GREATEST(ua.last_position, $7) FROM s \
                       WHERE ua.tenant_id = s.tenant_id AND ua.user_ref = s.user_ref) \
                     INSERT INTO cost_daily AS d (tenant_id, user_ref, day, total_cost, \
                       cost_events, tokens_used, last_position) \
                     SELECT tenant_id, user_ref, ($5 AT TIME ZONE 'UTC')::date, $3::numeric, 1, $4, $7 \
                       FROM s \
                     ON CONFLICT (tenant_id, user_ref, day) DO UPDATE \
                     SET total_cost = d.total_cost + excluded.total_cost, \
                         cost_events = d.cost_events + 1, \
                         tokens_used = d.tokens_used + excluded.tokens_used, \
                         last_position = GREATEST(d.last_position, excluded.last_position)",
                )
                .bind(c.session_id.as_uuid())
                .bind(num(c.total.get()))
                .bind(num(c.amount.get()))
                .bind(tokens)
                .bind(c.at)
                .bind(ver)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "agent session")
            }
            AgentSessionEvent::Completed(t) => {
                end(conn, event, t.session_id.as_uuid(), "completed", None, t.at).await
            }
            AgentSessionEvent::Failed(s) => {
                end(
                    conn,
                    event,
                    s.session_id.as_uuid(),
                    "failed",
                    Some(s.reason.as_str().to_owned()),
                    s.at,
                )
                .await
            }
            AgentSessionEvent::Cancelled(s) => {
                end(
                    conn,
                    event,
                    s.session_id.as_uuid(),
                    "cancelled",
                    Some(s.reason.as_str().to_owned()),
                    s.at,
                )
                .await
            }
            AgentSessionEvent::EmergencyStopped(d) => {
                end(
                    conn,
                    event,
                    d.session_id.as_uuid(),
                    "cancelled",
                    Some(format!("emergency stop (decision {})", d.decision_id)),
                    d.at,
                )
                .await
            }
            AgentSessionEvent::PersonaActivated(p) => {
                sqlx::query(
                    "INSERT INTO agent_session_personas (session_id, persona_id, \
                       activated_position, tenant_id, activation_trigger, activated_at, \
                       is_active, last_position) VALUES ($1, $2, $3, $4, $5, $6, true, $3)",
                )
                .bind(p.session_id.as_uuid())
                .bind(p.persona_id.as_str())
                .bind(pos)
                .bind(&event.tenant_id)
                .bind(p.trigger.as_str())
                .bind(p.at)
                .execute(&mut *conn)
                .await?;
                touch(conn, event, p.session_id.as_uuid(), p.at).await
            }
            AgentSessionEvent::PersonaDeactivated(p) => {
                let r = sqlx::query(
                    "UPDATE agent_session_personas SET is_active = false, deactivated_at = $3, \
                       last_position = $4 WHERE session_id = $1 AND persona_id = $2 AND is_active",
                )
                .bind(p.session_id.as_uuid())
                .bind(p.persona_id.as_str())
                .bind(p.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "active persona")?;
                touch(conn, event, p.session_id.as_uuid(), p.at).await
            }
        }
    }
}

async fn set_status(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    session: Uuid,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let r = sqlx::query(
        "UPDATE agent_sessions SET status = $2, updated_at = $3, version = $4, last_position = $5 \
         WHERE session_id = $1",
    )
    .bind(session)
    .bind(status)
    .bind(at)
    .bind(version(event))
    .bind(event.global_position.0)
    .execute(conn)
    .await?;
    expect_row(r, "agent session")
}

async fn touch(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    session: Uuid,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let r = sqlx::query(
        "UPDATE agent_sessions SET updated_at = $2, version = $3, last_position = $4 \
         WHERE session_id = $1",
    )
    .bind(session)
    .bind(at)
    .bind(version(event))
    .bind(event.global_position.0)
    .execute(conn)
    .await?;
    expect_row(r, "agent session")
}

/// A terminal status: the domain deactivates every active persona with it.
async fn end(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    session: Uuid,
    status: &str,
    reason: Option<String>,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let pos = event.global_position.0;
    let r = sqlx::query(
        "UPDATE agent_sessions SET status = $2, end_reason = $3, ended_at = $4, updated_at = $4, \
           version = $5, last_position = $6 WHERE session_id = $1",
    )
    .bind(session)
    .bind(status)
    .bind(reason)
    .bind(at)
    .bind(version(event))
    .bind(pos)
    .execute(&mut *conn)
    .await?;
    expect_row(r, "agent session")?;
    sqlx::query(
        "UPDATE agent_session_personas SET is_active = false, deactivated_at = $2, \
           last_position = $3 WHERE session_id = $1 AND is_active",
    )
    .bind(session)
    .bind(at)
    .bind(pos)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
