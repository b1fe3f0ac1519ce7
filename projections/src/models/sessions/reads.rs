//! Reads of the `agent_sessions` model: its row types and SELECTs (served by query-api).

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// A row of `agent_sessions` as the SELECTs of this module read it (JSONB and decimals as
/// text).
#[derive(Debug, sqlx::FromRow)]
pub struct SessionRow {
    /// The session's id.
    pub session_id: Uuid,
    /// The user it runs for.
    pub user_ref: String,
    /// The agent type.
    pub agent_type: String,
    /// The agent configuration, JSON text.
    pub agent_config: String,
    /// Its status.
    pub status: String,
    /// The token cost so far, decimal text.
    pub token_cost: String,
    /// Tokens used so far.
    pub tokens_used: i64,
    /// The estimated cost, decimal text, if any.
    pub estimated_cost: Option<String>,
    /// The cost limit, decimal text, if any.
    pub max_cost_limit: Option<String>,
    /// Governance approvals applied to it.
    pub approvals: i32,
    /// Governance rejections applied to it.
    pub rejections: i32,
    /// Why it is blocked, if it is.
    pub block_reason: Option<String>,
    /// Why it ended, if it did.
    pub end_reason: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it started, if it did.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended, if it did.
    pub ended_at: Option<DateTime<Utc>>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Its stream version.
    pub version: i64,
    /// The store position of its last event.
    pub last_position: i64,
}

macro_rules! session_columns {
    () => {
        "session_id, user_ref, agent_type, agent_config::text AS agent_config, status, \
         token_cost::text AS token_cost, tokens_used, estimated_cost::text AS estimated_cost, \
         max_cost_limit::text AS max_cost_limit, approvals, rejections, block_reason, \
         end_reason, created_by, created_at, started_at, ended_at, updated_at, version, \
         last_position"
    };
}

/// A row of `agent_session_personas` as [`SESSION_PERSONAS`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct PersonaRow {
    /// The persona.
    pub persona_id: String,
    /// What activated it.
    pub activation_trigger: String,
    /// When it was activated.
    pub activated_at: DateTime<Utc>,
    /// When it was deactivated, if it was.
    pub deactivated_at: Option<DateTime<Utc>>,
    /// Whether it is active.
    pub is_active: bool,
}

/// A row of the view `active_agent_sessions` as [`LIST_ACTIVE_SESSIONS`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct ActiveRow {
    /// The session's id.
    pub session_id: Uuid,
    /// The user it runs for.
    pub user_ref: String,
    /// The agent type.
    pub agent_type: String,
    /// Its status.
    pub status: String,
    /// The token cost so far, decimal text.
    pub token_cost: String,
    /// Governance approvals applied to it.
    pub approvals: i32,
    /// Governance rejections applied to it.
    pub rejections: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A session: `$1` tenant, `$2` session.
pub const GET_SESSION: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM agent_sessions WHERE tenant_id = $1 AND session_id = $2"
);

/// A session's persona activations in activation order: `$1` tenant, `$2` session, `$3`
/// limit.
pub const SESSION_PERSONAS: &str = "SELECT persona_id, activation_trigger, activated_at, deactivated_at, is_active \
                           FROM agent_session_personas WHERE tenant_id = $1 AND session_id = $2 \
                          ORDER BY activated_position, persona_id LIMIT $3";

/// A keyset page of a tenant's sessions, newest first: `$1` tenant, `$2` user, `$3` status,
/// `$4` agent type, `$5`/`$6` the `(created_at, session_id)` of the last row of the previous
/// page, `$7` limit.
pub const LIST_SESSIONS: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM agent_sessions \
      WHERE tenant_id = $1 \
        AND ($2::text IS NULL OR user_ref = $2) \
        AND ($3::text IS NULL OR status = $3) \
        AND ($4::text IS NULL OR agent_type = $4) \
        AND ($5::timestamptz IS NULL OR (created_at, session_id) < ($5, $6)) \
      ORDER BY created_at DESC, session_id DESC LIMIT $7"
);

/// A keyset page of a tenant's live sessions, newest first: `$1` tenant, `$2` user, `$3`/`$4`
/// the `(created_at, session_id)` of the last row of the previous page, `$5` limit.
pub const LIST_ACTIVE_SESSIONS: &str = "SELECT session_id, user_ref, agent_type, status, token_cost::text AS token_cost, \
                                approvals, rejections, created_at \
                           FROM active_agent_sessions \
                          WHERE tenant_id = $1 \
                            AND ($2::text IS NULL OR user_ref = $2) \
                            AND ($3::timestamptz IS NULL OR (created_at, session_id) < ($3, $4)) \
                          ORDER BY created_at DESC, session_id DESC LIMIT $5";

/// A row of the view `user_activity_view` (over `user_activity`) as [`LIST_USER_ACTIVITY`]
/// reads it (decimals as text).
#[derive(Debug, sqlx::FromRow)]
pub struct ActivityRow {
    /// The user.
    pub user_ref: String,
    /// Sessions the user ran.
    pub session_count: i64,
    /// Their total cost, decimal text.
    pub total_cost: String,
    /// The mean cost per session, decimal text, if defined.
    pub mean_cost_per_session: Option<String>,
    /// When the user's last session started.
    pub last_session_at: DateTime<Utc>,
}

/// A keyset page of a tenant's per-user activity, by user: `$1` tenant, `$2` user, `$3` the
/// user of the last row of the previous page, `$4` limit.
pub const LIST_USER_ACTIVITY: &str = "SELECT user_ref, session_count, total_cost::text AS total_cost, \
                                mean_cost_per_session::text AS mean_cost_per_session, last_session_at \
                           FROM user_activity_view \
                          WHERE tenant_id = $1 \
                            AND ($2::text IS NULL OR user_ref = $2) \
                            AND ($3::text IS NULL OR user_ref > $3) \
                          ORDER BY user_ref LIMIT $4";

/// A row of `cost_daily` as [`LIST_DAILY_COSTS`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct CostRow {
    /// The UTC day.
    pub day: NaiveDate,
    /// The user.
    pub user_ref: String,
    /// The day's cost, decimal text.
    pub total_cost: String,
    /// Cost events that day.
    pub cost_events: i64,
    /// Tokens used that day.
    pub tokens_used: i64,
}

/// A keyset page of a tenant's daily costs per user, by day and user: `$1` tenant, `$2`/`$3`
/// day from/to (inclusive), `$4` user, `$5`/`$6` the `(day, user_ref)` of the last row of the
/// previous page, `$7` limit.
pub const LIST_DAILY_COSTS: &str = "SELECT day, user_ref, total_cost::text AS total_cost, cost_events, tokens_used \
                           FROM cost_daily \
                          WHERE tenant_id = $1 \
                            AND ($2::date IS NULL OR day >= $2) \
                            AND ($3::date IS NULL OR day <= $3) \
                            AND ($4::text IS NULL OR user_ref = $4) \
                            AND ($5::date IS NULL OR (day, user_ref) > ($5, $6)) \
                          ORDER BY day, user_ref LIMIT $7";
