//! Reads of the `audit` model: its row type and SELECT (served by query-api).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A row of `audit_log` as [`AUDIT_PAGE`] reads it (changes as JSON text).
#[derive(Debug, sqlx::FromRow)]
pub struct AuditRow {
    /// The event's global position.
    pub global_position: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event type.
    pub action: String,
    /// Who caused it.
    pub actor: String,
    /// What kind of actor.
    pub actor_type: String,
    /// The stream type.
    pub resource_type: String,
    /// The stream id.
    pub resource_id: String,
    /// The stream version.
    pub resource_version: i64,
    /// The changed fields with their before and after values, JSON text.
    pub changes: String,
    /// The command that caused it, if known.
    pub command_id: Option<Uuid>,
    /// The correlation id, if any.
    pub correlation_id: Option<Uuid>,
    /// The causation id, if any.
    pub causation_id: Option<Uuid>,
    /// The client's address, if known.
    pub client_ip: Option<String>,
    /// The client's user agent, if known.
    pub user_agent: Option<String>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The event's hash.
    pub event_hash: String,
}

/// Rows of one page after `$8`, up to `$9`, in global order: `$1` tenant, `$2` resource type,
/// `$3` resource id, `$4` actor, `$5` correlation id, `$6`/`$7` occurred from/to, `$10` limit.
pub const AUDIT_PAGE: &str = "SELECT global_position, event_id, action, actor, actor_type, \
        resource_type, resource_id, resource_version, changes::text AS changes, command_id, \
        correlation_id, causation_id, client_ip, user_agent, occurred_at, event_hash \
   FROM audit_log \
  WHERE tenant_id = $1 \
    AND ($2::text IS NULL OR resource_type = $2) \
    AND ($3::text IS NULL OR resource_id = $3) \
    AND ($4::text IS NULL OR actor = $4) \
    AND ($5::uuid IS NULL OR correlation_id = $5) \
    AND ($6::timestamptz IS NULL OR occurred_at >= $6) \
    AND ($7::timestamptz IS NULL OR occurred_at < $7) \
    AND global_position > $8 AND global_position <= $9 \
  ORDER BY global_position LIMIT $10";
