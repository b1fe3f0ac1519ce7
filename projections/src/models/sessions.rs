//! `agent_sessions`: agent sessions and persona activations (seed 002), per-user activity and
//! cost per tenant, user and day.
//!
//! Approval and rejection counts are kept on the session row (from
//! `agent_session.governance_applied`), so `active_agent_sessions` is a plain filter, not a
//! per-row count over decisions.
//!
//! Values (see [`super`], "Values a column cannot hold"): NUL in strings is stored as U+FFFD;
//! `tokens` of a cost event and every sum of them must fit `BIGINT` (`tokens_used` of the
//! session and of the day): an event whose tokens do not (2^63 or more, or a sum past it) is
//! dead-lettered with [`ProjectionError::OutOfRange`], never stored clamped. Money is exact
//! (`NUMERIC`).
//!
//! Set-based: a batch loads its sessions and their persona activations (one statement each),
//! folds its events into them in memory, writes each table back with one statement, and adds
//! the per-user and per-day sums as deltas (exact decimals, summed in memory).

use std::collections::{BTreeMap, HashMap, HashSet};

use aggregates::agent_session::AgentSessionEvent;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use event_store::RecordedEvent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub mod reads;

use super::{by_tenant, decode, fit, json, load_rows, num, ts, version, write_rows};
use crate::projection::{Projection, ProjectionError};

/// Sessions touched by a batch, whole; money as text so that no digit goes through a float.
const LOAD_SESSIONS: &str = "SELECT to_jsonb(s) || jsonb_build_object( \
       'token_cost', s.token_cost::text, 'estimated_cost', s.estimated_cost::text, \
       'max_cost_limit', s.max_cost_limit::text) \
     FROM agent_sessions s WHERE s.session_id = ANY($1) AND s.tenant_id = $2";
const LOAD_PERSONAS: &str = "SELECT to_jsonb(p) FROM agent_session_personas p \
     WHERE p.session_id = ANY($1) AND p.tenant_id = $2";
const UPSERT_SESSIONS: &str = "INSERT INTO agent_sessions \
       SELECT * FROM jsonb_populate_recordset(NULL::agent_sessions, $1) \
     ON CONFLICT (tenant_id, session_id) DO UPDATE SET \
       user_ref = excluded.user_ref, agent_type = excluded.agent_type, \
       agent_config = excluded.agent_config, status = excluded.status, \
       token_cost = excluded.token_cost, tokens_used = excluded.tokens_used, \
       estimated_cost = excluded.estimated_cost, max_cost_limit = excluded.max_cost_limit, \
       approvals = excluded.approvals, rejections = excluded.rejections, \
       block_reason = excluded.block_reason, end_reason = excluded.end_reason, \
       created_by = excluded.created_by, created_at = excluded.created_at, \
       started_at = excluded.started_at, ended_at = excluded.ended_at, \
       updated_at = excluded.updated_at, version = excluded.version, \
       last_position = excluded.last_position";
const UPSERT_PERSONAS: &str = "INSERT INTO agent_session_personas \
       SELECT * FROM jsonb_populate_recordset(NULL::agent_session_personas, $1) \
     ON CONFLICT (tenant_id, session_id, persona_id, activated_position) DO UPDATE \
     SET activation_trigger = excluded.activation_trigger, \
       activated_at = excluded.activated_at, deactivated_at = excluded.deactivated_at, \
       is_active = excluded.is_active, last_position = excluded.last_position";
/// Adds each user's sums; a user's row is created by their first session. A user without a
/// session in the batch keeps their last session time (NOT NULL is checked before the
/// conflict is, hence the lookup).
const BUMP_ACTIVITY: &str = "INSERT INTO user_activity AS u (tenant_id, user_ref, session_count, \
       total_cost, last_session_at, last_position) \
     SELECT t, r, n, c, COALESCE(at, (SELECT x.last_session_at FROM user_activity x \
                                       WHERE x.tenant_id = t AND x.user_ref = r)), p \
       FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::numeric[], $5::timestamptz[], \
         $6::bigint[]) AS d(t, r, n, c, at, p) \
     ON CONFLICT (tenant_id, user_ref) DO UPDATE \
     SET session_count = u.session_count + excluded.session_count, \
         total_cost = u.total_cost + excluded.total_cost, \
         last_session_at = GREATEST(u.last_session_at, excluded.last_session_at), \
         last_position = GREATEST(u.last_position, excluded.last_position)";
const BUMP_COST_DAILY: &str = "INSERT INTO cost_daily AS d (tenant_id, user_ref, day, total_cost, \
       cost_events, tokens_used, last_position) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::numeric[], $5::bigint[], \
       $6::bigint[], $7::bigint[]) \
     ON CONFLICT (tenant_id, user_ref, day) DO UPDATE \
     SET total_cost = d.total_cost + excluded.total_cost, \
         cost_events = d.cost_events + excluded.cost_events, \
         tokens_used = d.tokens_used + excluded.tokens_used, \
         last_position = GREATEST(d.last_position, excluded.last_position)";

/// An `agent_sessions` row (column order of the table); money as decimal text.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRow {
    session_id: Uuid,
    tenant_id: String,
    user_ref: String,
    agent_type: String,
    agent_config: Value,
    status: String,
    token_cost: String,
    tokens_used: i64,
    estimated_cost: Option<String>,
    max_cost_limit: Option<String>,
    approvals: i32,
    rejections: i32,
    block_reason: Option<String>,
    end_reason: Option<String>,
    created_by: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    version: i64,
    last_position: i64,
}

/// An `agent_session_personas` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PersonaRow {
    session_id: Uuid,
    persona_id: String,
    activated_position: i64,
    tenant_id: String,
    activation_trigger: String,
    activated_at: DateTime<Utc>,
    deactivated_at: Option<DateTime<Utc>>,
    is_active: bool,
    last_position: i64,
}

type PersonaKey = (Uuid, String, i64);

/// Sums of one user over a batch.
#[derive(Debug, Default)]
struct ActivityDelta {
    sessions: i64,
    cost: Decimal,
    last_session_at: Option<DateTime<Utc>>,
    last_position: i64,
}

/// Sums of one user and UTC day over a batch.
#[derive(Debug, Default)]
struct CostDelta {
    cost: Decimal,
    events: i64,
    tokens: i64,
    last_position: i64,
}

#[derive(Default)]
struct Fold {
    sessions: HashMap<Uuid, SessionRow>,
    personas: BTreeMap<PersonaKey, PersonaRow>,
    dirty_sessions: HashSet<Uuid>,
    dirty_personas: HashSet<PersonaKey>,
    activity: BTreeMap<(String, String), ActivityDelta>,
    cost: BTreeMap<(String, String, NaiveDate), CostDelta>,
}

impl Fold {
    /// The session row, advanced to `event` (version, position, update time).
    fn session(
        &mut self,
        event: &RecordedEvent,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<&mut SessionRow, ProjectionError> {
        self.dirty_sessions.insert(id);
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| ProjectionError::Inconsistent("agent session not found".into()))?;
        s.updated_at = ts(at);
        s.version = version(event);
        s.last_position = event.global_position.0;
        Ok(s)
    }

    /// Deactivates every active persona of a session (or only `persona`); how many.
    fn deactivate(
        &mut self,
        session: Uuid,
        persona: Option<&str>,
        at: DateTime<Utc>,
        pos: i64,
    ) -> usize {
        let mut n = 0;
        let range =
            (session, String::new(), i64::MIN)..=(session, String::from("\u{10ffff}"), i64::MAX);
        for (key, p) in self.personas.range_mut(range) {
            if p.is_active && persona.is_none_or(|id| id == p.persona_id) {
                p.is_active = false;
                p.deactivated_at = Some(ts(at));
                p.last_position = pos;
                self.dirty_personas.insert(key.clone());
                n += 1;
            }
        }
        n
    }

    fn end(
        &mut self,
        event: &RecordedEvent,
        session: Uuid,
        status: &str,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        let s = self.session(event, session, at)?;
        s.status = status.to_owned();
        s.end_reason = reason;
        s.ended_at = Some(ts(at));
        // The domain deactivates every active persona with a terminal status.
        self.deactivate(session, None, at, event.global_position.0);
        Ok(())
    }

    fn apply(
        &mut self,
        event: &RecordedEvent,
        e: &AgentSessionEvent,
    ) -> Result<(), ProjectionError> {
        let pos = event.global_position.0;
        match e {
            AgentSessionEvent::Created(c) => {
                let id = c.session_id.as_uuid();
                if self.sessions.contains_key(&id) {
                    return Err(ProjectionError::Inconsistent(
                        "agent session already exists".into(),
                    ));
                }
                let created = ts(c.created_at);
                self.sessions.insert(
                    id,
                    SessionRow {
                        session_id: id,
                        tenant_id: event.tenant_id.clone(),
                        user_ref: c.user.as_str().to_owned(),
                        agent_type: c.agent_type.as_str().to_owned(),
                        agent_config: json(&c.agent_config).0,
                        status: "initializing".into(),
                        token_cost: "0".into(),
                        tokens_used: 0,
                        estimated_cost: c.estimated_cost.map(|m| num(m.get())),
                        max_cost_limit: c.max_cost_limit.map(|m| num(m.get())),
                        approvals: 0,
                        rejections: 0,
                        block_reason: None,
                        end_reason: None,
                        created_by: c.created_by.clone(),
                        created_at: created,
                        started_at: None,
                        ended_at: None,
                        updated_at: created,
                        version: version(event),
                        last_position: pos,
                    },
                );
                self.dirty_sessions.insert(id);
                let a = self
                    .activity
                    .entry((event.tenant_id.clone(), c.user.as_str().to_owned()))
                    .or_default();
                a.sessions += 1;
                a.last_session_at = a.last_session_at.max(Some(created));
                a.last_position = a.last_position.max(pos);
                Ok(())
            }
            AgentSessionEvent::ApprovalRequested(t) => {
                self.session(event, t.session_id.as_uuid(), t.at)?.status =
                    "pending_approval".into();
                Ok(())
            }
            AgentSessionEvent::Approved(d) => {
                self.session(event, d.session_id.as_uuid(), d.at)?.status = "approved".into();
                Ok(())
            }
            AgentSessionEvent::Started(t) => {
                let s = self.session(event, t.session_id.as_uuid(), t.at)?;
                s.status = "running".into();
                s.started_at = Some(ts(t.at));
                Ok(())
            }
            AgentSessionEvent::GovernanceApplied(g) => {
                let s = self.session(event, g.session_id.as_uuid(), g.at)?;
                if g.approved {
                    s.approvals += 1;
                } else {
                    s.rejections += 1;
                }
                Ok(())
            }
            AgentSessionEvent::Blocked(b) => {
                let s = self.session(event, b.session_id.as_uuid(), b.at)?;
                s.status = "blocked".into();
                s.block_reason = Some(b.reason.as_str().to_owned());
                Ok(())
            }
            AgentSessionEvent::CostRecorded(c) => {
                let tokens: i64 = c
                    .tokens
                    .map_or(Ok(0), |t| fit(event, "agent_sessions.tokens_used", t))?;
                let s = self.session(event, c.session_id.as_uuid(), c.at)?;
                // The session total is exact, from the event.
                s.token_cost = num(c.total.get());
                s.tokens_used =
                    checked_sum(event, "agent_sessions.tokens_used", s.tokens_used, tokens)?;
                let (tenant, user) = (s.tenant_id.clone(), s.user_ref.clone());
                let amount = c.amount.get();
                let a = self
                    .activity
                    .entry((tenant.clone(), user.clone()))
                    .or_default();
                a.cost += amount;
                a.last_position = a.last_position.max(pos);
                let d = self
                    .cost
                    .entry((tenant, user, ts(c.at).date_naive()))
                    .or_default();
                d.cost += amount;
                d.events += 1;
                d.tokens = checked_sum(event, "cost_daily.tokens_used", d.tokens, tokens)?;
                d.last_position = d.last_position.max(pos);
                Ok(())
            }
            AgentSessionEvent::Completed(t) => {
                self.end(event, t.session_id.as_uuid(), "completed", None, t.at)
            }
            AgentSessionEvent::Failed(s) => self.end(
                event,
                s.session_id.as_uuid(),
                "failed",
                Some(s.reason.as_str().to_owned()),
                s.at,
            ),
            AgentSessionEvent::Cancelled(s) => self.end(
                event,
                s.session_id.as_uuid(),
                "cancelled",
                Some(s.reason.as_str().to_owned()),
                s.at,
            ),
            AgentSessionEvent::EmergencyStopped(d) => self.end(
                event,
                d.session_id.as_uuid(),
                "cancelled",
                Some(format!("emergency stop (decision {})", d.decision_id)),
                d.at,
            ),
            AgentSessionEvent::PersonaActivated(p) => {
                let session = p.session_id.as_uuid();
                self.session(event, session, p.at)?;
                let key = (session, p.persona_id.as_str().to_owned(), pos);
                if self.personas.contains_key(&key) {
                    return Err(ProjectionError::Inconsistent(
                        "persona activation already exists".into(),
                    ));
                }
                self.personas.insert(
                    key.clone(),
                    PersonaRow {
                        session_id: session,
                        persona_id: key.1.clone(),
                        activated_position: pos,
                        tenant_id: event.tenant_id.clone(),
                        activation_trigger: p.trigger.as_str().to_owned(),
                        activated_at: ts(p.at),
                        deactivated_at: None,
                        is_active: true,
                        last_position: pos,
                    },
                );
                self.dirty_personas.insert(key);
                Ok(())
            }
            AgentSessionEvent::PersonaDeactivated(p) => {
                let session = p.session_id.as_uuid();
                if self.deactivate(session, Some(p.persona_id.as_str()), p.at, pos) == 0 {
                    return Err(ProjectionError::Inconsistent(
                        "active persona not found".into(),
                    ));
                }
                self.session(event, session, p.at)?;
                Ok(())
            }
        }
    }

    async fn write(self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let mut sessions: Vec<&SessionRow> = self
            .dirty_sessions
            .iter()
            .filter_map(|id| self.sessions.get(id))
            .collect();
        sessions.sort_by_key(|s| s.session_id);
        write_rows(conn, UPSERT_SESSIONS, &sessions).await?;
        let personas: Vec<&PersonaRow> = self
            .personas
            .iter()
            .filter(|(k, _)| self.dirty_personas.contains(*k))
            .map(|(_, p)| p)
            .collect();
        write_rows(conn, UPSERT_PERSONAS, &personas).await?;
        if !self.activity.is_empty() {
            let n = self.activity.len();
            let (mut tenants, mut users) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut sessions, mut costs) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut last_sessions, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for ((tenant, user), a) in &self.activity {
                tenants.push(tenant.as_str());
                users.push(user.as_str());
                sessions.push(a.sessions);
                costs.push(num(a.cost));
                last_sessions.push(a.last_session_at);
                positions.push(a.last_position);
            }
            sqlx::query(BUMP_ACTIVITY)
                .bind(tenants)
                .bind(users)
                .bind(sessions)
                .bind(costs)
                .bind(last_sessions)
                .bind(positions)
                .execute(&mut *conn)
                .await?;
        }
        if !self.cost.is_empty() {
            let n = self.cost.len();
            let (mut tenants, mut users) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut days, mut costs) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut events, mut tokens) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let mut positions = Vec::with_capacity(n);
            for ((tenant, user, day), d) in &self.cost {
                tenants.push(tenant.as_str());
                users.push(user.as_str());
                days.push(*day);
                costs.push(num(d.cost));
                events.push(d.events);
                tokens.push(d.tokens);
                positions.push(d.last_position);
            }
            sqlx::query(BUMP_COST_DAILY)
                .bind(tenants)
                .bind(users)
                .bind(days)
                .bind(costs)
                .bind(events)
                .bind(tokens)
                .bind(positions)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

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

impl AgentSessionsProjection {
    /// Applies one tenant's events of a batch (session ids are unique per tenant).
    async fn apply_tenant(
        conn: &mut PgConnection,
        tenant: &str,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let decoded: Vec<AgentSessionEvent> =
            events.iter().map(|e| decode(e)).collect::<Result<_, _>>()?;
        let mut ids: Vec<Uuid> = decoded.iter().map(session_of).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut fold = Fold::default();
        for row in load_rows::<_, SessionRow>(conn, LOAD_SESSIONS, tenant, ids.clone()).await? {
            fold.sessions.insert(row.session_id, row);
        }
        for row in load_rows::<_, PersonaRow>(conn, LOAD_PERSONAS, tenant, ids).await? {
            fold.personas.insert(
                (
                    row.session_id,
                    row.persona_id.clone(),
                    row.activated_position,
                ),
                row,
            );
        }
        for (event, e) in events.iter().zip(&decoded) {
            fold.apply(event, e)?;
        }
        fold.write(conn).await
    }
}

/// The session an event is about.
/// `a + b`, or [`ProjectionError::OutOfRange`] when the sum leaves `BIGINT` (never clamped).
fn checked_sum(
    event: &RecordedEvent,
    column: &'static str,
    a: i64,
    b: i64,
) -> Result<i64, ProjectionError> {
    a.checked_add(b).ok_or_else(|| ProjectionError::OutOfRange {
        event_type: event.event_type.clone(),
        column,
        value: (i128::from(a) + i128::from(b)).to_string(),
    })
}

fn session_of(e: &AgentSessionEvent) -> Uuid {
    match e {
        AgentSessionEvent::Created(c) => c.session_id,
        AgentSessionEvent::ApprovalRequested(t)
        | AgentSessionEvent::Started(t)
        | AgentSessionEvent::Completed(t) => t.session_id,
        AgentSessionEvent::GovernanceApplied(g) => g.session_id,
        AgentSessionEvent::Approved(d) | AgentSessionEvent::EmergencyStopped(d) => d.session_id,
        AgentSessionEvent::Blocked(b) => b.session_id,
        AgentSessionEvent::CostRecorded(c) => c.session_id,
        AgentSessionEvent::Failed(s) | AgentSessionEvent::Cancelled(s) => s.session_id,
        AgentSessionEvent::PersonaActivated(p) => p.session_id,
        AgentSessionEvent::PersonaDeactivated(p) => p.session_id,
    }
    .as_uuid()
}
