//! Reads of the `governance` model: its row types and SELECTs (served by query-api).

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// A row of `governance_decisions` as [`LIST_DECISIONS`] reads it (JSONB columns as text).
#[derive(Debug, sqlx::FromRow)]
pub struct DecisionRow {
    /// The decision's id.
    pub decision_id: Uuid,
    /// The agent session the decision was made in.
    pub session_id: Uuid,
    /// The governance event type.
    pub event_type: String,
    /// The framework that decided.
    pub framework_type: String,
    /// Whether the decision approved.
    pub approved: bool,
    /// Why, if given.
    pub reason: Option<String>,
    /// The validation context, JSON text.
    pub validation_context: String,
    /// The decision details, JSON text.
    pub decision_details: String,
    /// Whether a fallback was triggered.
    pub fallback_triggered: bool,
    /// The correlation id, if any.
    pub correlation_id: Option<Uuid>,
    /// Who recorded the decision.
    pub created_by: String,
    /// When the decision was recorded.
    pub created_at: DateTime<Utc>,
}

/// A keyset page of a tenant's decisions, newest first: `$1` tenant, `$2` session, `$3`
/// approved, `$4` event type, `$5` framework, `$6`/`$7` created from/to, `$8`/`$9` the
/// `(created_at, decision_id)` of the last row of the previous page, `$10` limit.
pub const LIST_DECISIONS: &str = "SELECT decision_id, session_id, event_type, framework_type, approved, reason, \
                                validation_context::text AS validation_context, \
                                decision_details::text AS decision_details, fallback_triggered, \
                                correlation_id, created_by, created_at \
                           FROM governance_decisions \
                          WHERE tenant_id = $1 \
                            AND ($2::uuid IS NULL OR session_id = $2) \
                            AND ($3::boolean IS NULL OR approved = $3) \
                            AND ($4::text IS NULL OR event_type = $4) \
                            AND ($5::text IS NULL OR framework_type = $5) \
                            AND ($6::timestamptz IS NULL OR created_at >= $6) \
                            AND ($7::timestamptz IS NULL OR created_at < $7) \
                            AND ($8::timestamptz IS NULL OR (created_at, decision_id) < ($8, $9)) \
                          ORDER BY created_at DESC, decision_id DESC LIMIT $10";

/// A row of the view `governance_approval_rates` (over `governance_daily`) as
/// [`LIST_APPROVAL_RATES`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct RateRow {
    /// The UTC day.
    pub day: NaiveDate,
    /// The framework.
    pub framework_type: String,
    /// The governance event type.
    pub event_type: String,
    /// Decisions that day.
    pub decision_count: i64,
    /// Approvals among them.
    pub approved_count: i64,
    /// The approval rate, decimal text, if defined.
    pub approval_rate: Option<String>,
}

/// A keyset page of a tenant's approval rates, by day, framework and event type: `$1` tenant,
/// `$2`/`$3` day from/to (inclusive), `$4` framework, `$5` event type, `$6`/`$7`/`$8` the
/// `(day, framework_type, event_type)` of the last row of the previous page, `$9` limit.
pub const LIST_APPROVAL_RATES: &str = "SELECT day, framework_type, event_type, decision_count, approved_count, \
                                approval_rate::text AS approval_rate \
                           FROM governance_approval_rates \
                          WHERE tenant_id = $1 \
                            AND ($2::date IS NULL OR day >= $2) \
                            AND ($3::date IS NULL OR day <= $3) \
                            AND ($4::text IS NULL OR framework_type = $4) \
                            AND ($5::text IS NULL OR event_type = $5) \
                            AND ($6::date IS NULL OR (day, framework_type, event_type) > ($6, $7, $8)) \
                          ORDER BY day, framework_type, event_type LIMIT $9";
