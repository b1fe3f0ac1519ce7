//! Reads of the `problems` model: its row types and SELECTs (served by query-api).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A row of `problems` as the SELECTs of this module read it (metadata as JSON text).
#[derive(Debug, sqlx::FromRow)]
pub struct ProblemRow {
    /// The problem's id.
    pub problem_id: Uuid,
    /// Its title, if any.
    pub title: Option<String>,
    /// The text as submitted.
    pub raw_text: String,
    /// Who submitted it.
    pub submitter: String,
    /// Its urgency.
    pub urgency: String,
    /// Its metadata, JSON text.
    pub metadata: String,
    /// Its organisation, if any.
    pub organization_id: Option<Uuid>,
    /// Its pipeline stage.
    pub stage: String,
    /// When it entered that stage.
    pub stage_entered_at: DateTime<Utc>,
    /// Why it ended, if it did.
    pub end_reason: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it ended, if it did.
    pub ended_at: Option<DateTime<Utc>>,
    /// Its stream version.
    pub version: i64,
    /// The store position of its last event.
    pub last_position: i64,
}

macro_rules! problem_columns {
    () => {
        "problem_id, title, raw_text, submitter, urgency, metadata::text AS metadata, \
         organization_id, stage, stage_entered_at, end_reason, created_by, created_at, \
         updated_at, ended_at, version, last_position"
    };
}

/// A row of `problem_frames` as [`GET_FRAME`] reads it (JSONB columns as text).
#[derive(Debug, sqlx::FromRow)]
pub struct FrameRow {
    /// The goal.
    pub goal: String,
    /// The scope, JSON text.
    pub scope: String,
    /// The KPIs, JSON text.
    pub kpis: String,
    /// The stakeholders, JSON text.
    pub stakeholders: String,
    /// The assumptions, JSON text.
    pub assumptions: String,
    /// The constraints, JSON text.
    pub constraints: String,
    /// The confidence.
    pub confidence: String,
    /// The clarifying questions, JSON text.
    pub clarifying_questions: String,
    /// When the frame was defined.
    pub defined_at: DateTime<Utc>,
}

/// A node of `problem_tree_nodes` with its priority from `problem_node_priorities`, if any, as
/// [`ISSUE_TREE`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct NodeRow {
    /// The node's id.
    pub node_id: Uuid,
    /// Its parent, unless it is a root.
    pub parent_id: Option<Uuid>,
    /// Its depth.
    pub level: i32,
    /// Its title.
    pub title: String,
    /// Its hypotheses, JSON text.
    pub hypotheses: String,
    /// The data it needs, JSON text.
    pub required_data: String,
    /// Its priority hint, if any.
    pub priority_hint: Option<String>,
    /// Its notes, if any.
    pub notes: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The priority's impact, if prioritised.
    pub impact: Option<i16>,
    /// The priority's feasibility, if prioritised.
    pub feasibility: Option<i16>,
    /// The priority score as text, if prioritised.
    pub priority_score: Option<String>,
    /// The priority's rationale, if any.
    pub rationale: Option<String>,
    /// The estimated hours, if any.
    pub estimated_hours: Option<i32>,
    /// The estimated cost as text, if any.
    pub estimated_cost: Option<String>,
    /// The priority's confidence as text, if any.
    pub confidence: Option<String>,
    /// Whether the node is recommended, if prioritised.
    pub is_recommended: Option<bool>,
    /// When it was prioritised, if it was.
    pub prioritized_at: Option<DateTime<Utc>>,
}

/// A row of `problem_recommendations` as [`LIST_RECOMMENDATIONS`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct RecommendationRow {
    /// The recommendation's id.
    pub recommendation_id: Uuid,
    /// Its problem.
    pub problem_id: Uuid,
    /// Its title.
    pub title: String,
    /// Its summary.
    pub summary: String,
    /// Its evidence, JSON text.
    pub evidence: String,
    /// Its actions, JSON text.
    pub actions: String,
    /// Its expected impact, JSON text, if any.
    pub expected_impact: Option<String>,
    /// Its risks, JSON text.
    pub risks: String,
    /// Its confidence as text, if any.
    pub confidence: Option<String>,
    /// Its priority (lower first).
    pub priority: i16,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// A problem: `$1` tenant, `$2` problem.
pub const GET_PROBLEM: &str = concat!(
    "SELECT ",
    problem_columns!(),
    " FROM problems WHERE tenant_id = $1 AND problem_id = $2"
);

/// A problem's frame: `$1` tenant, `$2` problem.
pub const GET_FRAME: &str = "SELECT goal, scope::text AS scope, kpis::text AS kpis, \
                                stakeholders::text AS stakeholders, assumptions::text AS assumptions, \
                                constraints::text AS constraints, confidence, \
                                clarifying_questions::text AS clarifying_questions, defined_at \
                           FROM problem_frames WHERE tenant_id = $1 AND problem_id = $2";

/// A keyset page of a tenant's problems, newest first: `$1` tenant, `$2` stage, `$3` urgency,
/// `$4` submitter, `$5`/`$6` created from/to, `$7`/`$8` the `(created_at, problem_id)` of the
/// last row of the previous page, `$9` limit.
pub const LIST_PROBLEMS: &str = concat!(
    "SELECT ",
    problem_columns!(),
    " FROM problems \
      WHERE tenant_id = $1 \
        AND ($2::text IS NULL OR stage = $2) \
        AND ($3::text IS NULL OR urgency = $3) \
        AND ($4::text IS NULL OR submitter = $4) \
        AND ($5::timestamptz IS NULL OR created_at >= $5) \
        AND ($6::timestamptz IS NULL OR created_at < $6) \
        AND ($7::timestamptz IS NULL OR (created_at, problem_id) < ($7, $8)) \
      ORDER BY created_at DESC, problem_id DESC LIMIT $9"
);

/// `1` if the problem exists: `$1` tenant, `$2` problem.
pub const PROBLEM_EXISTS: &str = "SELECT 1 FROM problems WHERE tenant_id = $1 AND problem_id = $2";

/// A problem's tree nodes with their priorities in one statement (a join, not one query per
/// node), by level: `$1` tenant, `$2` problem, `$3` limit.
pub const ISSUE_TREE: &str = "SELECT n.node_id, n.parent_id, n.level, n.title, \
                                n.hypotheses::text AS hypotheses, n.required_data::text AS required_data, \
                                n.priority_hint, n.notes, n.created_at, \
                                p.impact, p.feasibility, p.priority_score::text AS priority_score, \
                                p.rationale, p.estimated_hours, p.estimated_cost::text AS estimated_cost, \
                                p.confidence::text AS confidence, p.is_recommended, p.prioritized_at \
                           FROM problem_tree_nodes n \
                           LEFT JOIN problem_node_priorities p \
                                  ON p.node_id = n.node_id AND p.tenant_id = n.tenant_id \
                          WHERE n.tenant_id = $1 AND n.problem_id = $2 \
                          ORDER BY n.level, n.created_at, n.node_id LIMIT $3";

/// A keyset page of a problem's recommendations, by priority: `$1` tenant, `$2` problem,
/// `$3`/`$4`/`$5` the `(priority, created_at, recommendation_id)` of the last row of the
/// previous page, `$6` limit.
pub const LIST_RECOMMENDATIONS: &str = "SELECT recommendation_id, problem_id, title, summary, evidence::text AS evidence, \
                                actions::text AS actions, expected_impact::text AS expected_impact, \
                                risks::text AS risks, confidence::text AS confidence, priority, created_at \
                           FROM problem_recommendations \
                          WHERE tenant_id = $1 AND problem_id = $2 \
                            AND ($3::smallint IS NULL \
                                 OR (priority, created_at, recommendation_id) > ($3, $4, $5)) \
                          ORDER BY priority, created_at, recommendation_id LIMIT $6";

/// A row of the view `problem_pipeline` (over `problem_pipeline_summary`) as
/// [`PROBLEM_PIPELINE`] reads it (seconds as decimal text).
#[derive(Debug, sqlx::FromRow)]
pub struct StageRow {
    /// The stage.
    pub stage: String,
    /// Problems that entered it.
    pub problem_count: i64,
    /// Problems that left it.
    pub exited_count: i64,
    /// Seconds spent in it by the problems that left it, decimal text.
    pub total_seconds_in_stage: String,
    /// Mean seconds in it, decimal text, if any problem left it.
    pub mean_seconds_in_stage: Option<String>,
}

/// A tenant's pipeline stages (unordered): `$1` tenant.
pub const PROBLEM_PIPELINE: &str = "SELECT stage, problem_count, exited_count, \
                                total_seconds_in_stage::text AS total_seconds_in_stage, \
                                mean_seconds_in_stage::text AS mean_seconds_in_stage \
                           FROM problem_pipeline WHERE tenant_id = $1";
