//! `problems`: the problem pipeline read model (seed 000) and its per-tenant stage summary.

use aggregates::problem::{ProblemEvent, ProblemStage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{decode, expect_row, json, num, seconds_between, version};
use crate::projection::{Projection, ProjectionError};

/// The problems projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemsProjection;

const TABLES: &[&str] = &[
    "problems",
    "problem_frames",
    "problem_tree_nodes",
    "problem_node_priorities",
    "problem_analysis_plans",
    "problem_analysis_results",
    "problem_artifacts",
    "problem_recommendations",
    "problem_deliverables",
    "problem_feedback",
    "problem_pipeline_summary",
];

#[async_trait]
impl Projection for ProblemsProjection {
    fn name(&self) -> &'static str {
        "problems"
    }

    fn stream_types(&self) -> Option<&'static [&'static str]> {
        Some(&["problem"])
    }

    fn tables(&self) -> &'static [&'static str] {
        TABLES
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let e: ProblemEvent = decode(event)?;
        let pos = event.global_position.0;
        let tenant = &event.tenant_id;
        let (problem_id, at) = match &e {
            ProblemEvent::Submitted(s) => {
                let p = &s.problem;
                sqlx::query(
                    "INSERT INTO problems (problem_id, tenant_id, title, raw_text, submitter, \
                       urgency, metadata, organization_id, stage, stage_entered_at, created_by, \
                       created_at, updated_at, version, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'created', $9, $10, $9, $9, $11, $12)",
                )
                .bind(p.problem_id.as_uuid())
                .bind(tenant)
                .bind(p.title.as_ref().map(|t| t.as_str()))
                .bind(p.raw_text.as_str())
                .bind(p.submitter.as_str())
                .bind(p.urgency.as_str())
                .bind(json(&p.metadata))
                .bind(p.organization_id.map(|o| o.as_uuid()))
                .bind(s.at)
                .bind(&s.created_by)
                .bind(version(event))
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO problem_pipeline_summary AS s (tenant_id, stage, problem_count, \
                       exited_count, total_seconds_in_stage, last_position) \
                     VALUES ($1, 'created', 1, 0, 0, $2) \
                     ON CONFLICT (tenant_id, stage) DO UPDATE \
                     SET problem_count = s.problem_count + 1, last_position = GREATEST(s.last_position, excluded.last_position)",
                )
                .bind(tenant)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            ProblemEvent::StageAdvanced(s) => {
                transition(conn, event, s.problem_id.as_uuid(), s.to, None, s.at).await?;
                return Ok(());
            }
            ProblemEvent::Failed(s) | ProblemEvent::Cancelled(s) => {
                let to = if matches!(e, ProblemEvent::Failed(_)) {
                    ProblemStage::Failed
                } else {
                    ProblemStage::Cancelled
                };
                transition(
                    conn,
                    event,
                    s.problem_id.as_uuid(),
                    to,
                    Some(s.reason.as_str()),
                    s.at,
                )
                .await?;
                return Ok(());
            }
            ProblemEvent::FrameDefined(f) => {
                let fr = &f.frame;
                sqlx::query(
                    "INSERT INTO problem_frames (problem_id, tenant_id, goal, scope, kpis, \
                       stakeholders, assumptions, constraints, confidence, clarifying_questions, \
                       defined_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (problem_id) DO UPDATE SET goal = excluded.goal, \
                       scope = excluded.scope, kpis = excluded.kpis, \
                       stakeholders = excluded.stakeholders, assumptions = excluded.assumptions, \
                       constraints = excluded.constraints, confidence = excluded.confidence, \
                       clarifying_questions = excluded.clarifying_questions, \
                       defined_at = excluded.defined_at, last_position = excluded.last_position",
                )
                .bind(f.problem_id.as_uuid())
                .bind(tenant)
                .bind(fr.goal.as_str())
                .bind(json(&fr.scope))
                .bind(json(&fr.kpis))
                .bind(json(&fr.stakeholders))
                .bind(json(&fr.assumptions))
                .bind(json(&fr.constraints))
                .bind(fr.confidence.as_str())
                .bind(json(&fr.clarifying_questions))
                .bind(f.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                (f.problem_id.as_uuid(), f.at)
            }
            ProblemEvent::TreeNodeAdded(n) => {
                let node = &n.node;
                sqlx::query(
                    "INSERT INTO problem_tree_nodes (node_id, problem_id, tenant_id, parent_id, \
                       level, title, hypotheses, required_data, priority_hint, notes, created_at, \
                       last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(node.node_id.as_uuid())
                .bind(n.problem_id.as_uuid())
                .bind(tenant)
                .bind(node.parent_id.map(|p| p.as_uuid()))
                .bind(i32::try_from(n.level).unwrap_or(i32::MAX))
                .bind(node.title.as_str())
                .bind(json(&node.hypotheses))
                .bind(json(&node.required_data))
                .bind(node.priority_hint.map(|h| h.as_str()))
                .bind(node.notes.as_ref().map(|t| t.as_str()))
                .bind(n.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                (n.problem_id.as_uuid(), n.at)
            }
            ProblemEvent::NodePrioritized(n) => {
                let p = &n.priority;
                sqlx::query(
                    "INSERT INTO problem_node_priorities (node_id, problem_id, tenant_id, impact, \
                       feasibility, priority_score, rationale, estimated_hours, estimated_cost, \
                       confidence, is_recommended, prioritized_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8, $9::numeric, $10::numeric, \
                       $11, $12, $13) \
                     ON CONFLICT (node_id) DO UPDATE SET impact = excluded.impact, \
                       feasibility = excluded.feasibility, priority_score = excluded.priority_score, \
                       rationale = excluded.rationale, estimated_hours = excluded.estimated_hours, \
                       estimated_cost = excluded.estimated_cost, confidence = excluded.confidence, \
                       is_recommended = excluded.is_recommended, \
                       prioritized_at = excluded.prioritized_at, \
                       last_position = excluded.last_position",
                )
                .bind(p.node_id.as_uuid())
                .bind(n.problem_id.as_uuid())
                .bind(tenant)
                .bind(i16::from(p.impact.get()))
                .bind(i16::from(p.feasibility.get()))
                .bind(num(n.priority_score))
                .bind(p.rationale.as_ref().map(|t| t.as_str()))
                .bind(p.estimated_hours.map(|h| i32::try_from(h).unwrap_or(i32::MAX)))
                .bind(p.estimated_cost.map(|c| num(c.get())))
                .bind(p.confidence.map(|c| num(c.get())))
                .bind(p.is_recommended)
                .bind(n.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                (n.problem_id.as_uuid(), n.at)
            }
            ProblemEvent::AnalysisPlanCreated(a) => {
                let p = &a.plan;
                sqlx::query(
                    "INSERT INTO problem_analysis_plans (plan_id, problem_id, tenant_id, \
                       question_id, title, methods, data_requirements, estimated_hours, owner, \
                       dependencies, acceptance_criteria, status, created_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'planned', $12, $13)",
                )
                .bind(p.plan_id.as_uuid())
                .bind(a.problem_id.as_uuid())
                .bind(tenant)
                .bind(p.question_id.as_uuid())
                .bind(p.title.as_str())
                .bind(json(&p.methods))
                .bind(json(&p.data_requirements))
                .bind(
                    p.estimated_hours
                        .map(|h| i32::try_from(h).unwrap_or(i32::MAX)),
                )
                .bind(p.owner.as_ref().map(|o| o.as_str()))
                .bind(json(&p.dependencies))
                .bind(json(&p.acceptance_criteria))
                .bind(a.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                (a.problem_id.as_uuid(), a.at)
            }
            ProblemEvent::AnalysisResultRecorded(r) => {
                let res = &r.result;
                sqlx::query(
                    "INSERT INTO problem_analysis_results (result_id, plan_id, problem_id, \
                       tenant_id, summary, key_findings, metrics, confidence, \
                       execution_time_secs, recorded_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9, $10, $11)",
                )
                .bind(res.result_id.as_uuid())
                .bind(res.plan_id.as_uuid())
                .bind(r.problem_id.as_uuid())
                .bind(tenant)
                .bind(res.summary.as_ref().map(|t| t.as_str()))
                .bind(json(&res.key_findings))
                .bind(json(&res.metrics))
                .bind(res.confidence.map(|c| num(c.get())))
                .bind(
                    res.execution_time_secs
                        .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
                )
                .bind(r.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                if !res.artifacts.is_empty() {
                    // All artifacts in one statement.
                    sqlx::query(
                        "INSERT INTO problem_artifacts (artifact_id, result_id, problem_id, \
                           tenant_id, artifact_type, file_path, file_size, mime_type, \
                           description, created_at, last_position) \
                         SELECT a.artifact_id, $2, $3, $4, a.artifact_type, a.file_path, \
                           a.file_size, a.mime_type, a.description, $5, $6 \
                           FROM jsonb_to_recordset($1) AS a(artifact_id uuid, artifact_type text, \
                             file_path text, file_size bigint, mime_type text, description text)",
                    )
                    .bind(json(&res.artifacts))
                    .bind(res.result_id.as_uuid())
                    .bind(r.problem_id.as_uuid())
                    .bind(tenant)
                    .bind(r.at)
                    .bind(pos)
                    .execute(&mut *conn)
                    .await?;
                }
                let done = sqlx::query(
                    "UPDATE problem_analysis_plans SET status = 'completed', last_position = $2 \
                     WHERE plan_id = $1",
                )
                .bind(res.plan_id.as_uuid())
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(done, "analysis plan")?;
                (r.problem_id.as_uuid(), r.at)
            }
            ProblemEvent::RecommendationAdded(r) => {
                let rec = &r.recommendation;
                sqlx::query(
                    "INSERT INTO problem_recommendations (recommendation_id, problem_id, \
                       tenant_id, title, summary, evidence, actions, expected_impact, risks, \
                       confidence, priority, created_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::numeric, $11, $12, $13)",
                )
                .bind(rec.recommendation_id.as_uuid())
                .bind(r.problem_id.as_uuid())
                .bind(tenant)
                .bind(rec.title.as_str())
                .bind(rec.summary.as_str())
                .bind(json(&rec.evidence))
                .bind(json(&rec.actions))
                .bind(rec.expected_impact.as_ref().map(json))
                .bind(json(&rec.risks))
                .bind(rec.confidence.map(|c| num(c.get())))
                .bind(i16::from(rec.priority.get()))
                .bind(r.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                (r.problem_id.as_uuid(), r.at)
            }
            ProblemEvent::DeliverableAdded(d) => {
                let del = &d.deliverable;
                sqlx::query(
                    "INSERT INTO problem_deliverables (deliverable_id, problem_id, tenant_id, \
                       deliverable_type, file_path, file_size, mime_type, expires_at, status, \
                       created_at, updated_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'generating', $9, $9, $10)",
                )
                .bind(del.deliverable_id.as_uuid())
                .bind(d.problem_id.as_uuid())
                .bind(tenant)
                .bind(del.deliverable_type.as_str())
                .bind(del.file_path.as_str())
                .bind(del.file_size.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
                .bind(del.mime_type.as_ref().map(|m| m.as_str()))
                .bind(del.expires_at)
                .bind(d.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                (d.problem_id.as_uuid(), d.at)
            }
            ProblemEvent::DeliverableReady(d) | ProblemEvent::DeliverableFailed(d) => {
                let status = if matches!(e, ProblemEvent::DeliverableReady(_)) {
                    "ready"
                } else {
                    "failed"
                };
                let r = sqlx::query(
                    "UPDATE problem_deliverables SET status = $2, failure_reason = $3, \
                       updated_at = $4, last_position = $5 WHERE deliverable_id = $1",
                )
                .bind(d.deliverable_id.as_uuid())
                .bind(status)
                .bind(d.reason.as_ref().map(|t| t.as_str()))
                .bind(d.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "deliverable")?;
                (d.problem_id.as_uuid(), d.at)
            }
            ProblemEvent::FeedbackSubmitted(f) => {
                let fb = &f.feedback;
                sqlx::query(
                    "INSERT INTO problem_feedback (problem_id, user_ref, tenant_id, rating, text, \
                       improvement_suggestions, category, submitted_at, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(f.problem_id.as_uuid())
                .bind(fb.user.as_str())
                .bind(tenant)
                .bind(i16::from(fb.rating.get()))
                .bind(fb.text.as_ref().map(|t| t.as_str()))
                .bind(json(&fb.improvement_suggestions))
                .bind(fb.category.as_ref().map(|t| t.as_str()))
                .bind(f.at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                (f.problem_id.as_uuid(), f.at)
            }
        };
        touch(conn, event, problem_id, at).await
    }
}

/// Keeps the problem row's version, position and update time current for child events.
async fn touch(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    problem_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let r = sqlx::query(
        "UPDATE problems SET updated_at = $2, version = $3, last_position = $4 \
         WHERE problem_id = $1",
    )
    .bind(problem_id)
    .bind(at)
    .bind(version(event))
    .bind(event.global_position.0)
    .execute(conn)
    .await?;
    expect_row(r, "problem")
}

/// Moves a problem to `to` and updates the pipeline summary: the old stage loses the problem
/// and gains its time in stage, the new stage gains it.
async fn transition(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    problem_id: Uuid,
    to: ProblemStage,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let pos = event.global_position.0;
    let terminal = to.is_terminal();
    // UPDATE .. FROM a snapshot of the same row returns the values before the update.
    let old = sqlx::query(
        "UPDATE problems p SET stage = $2, stage_entered_at = $3, updated_at = $3, \
           end_reason = COALESCE($4, p.end_reason), \
           ended_at = CASE WHEN $5 THEN $3 ELSE p.ended_at END, version = $6, last_position = $7 \
         FROM (SELECT stage, stage_entered_at FROM problems WHERE problem_id = $1) old \
         WHERE p.problem_id = $1 RETURNING old.stage, old.stage_entered_at, p.tenant_id",
    )
    .bind(problem_id)
    .bind(to.as_str())
    .bind(at)
    .bind(reason)
    .bind(terminal)
    .bind(version(event))
    .bind(pos)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| ProjectionError::Inconsistent(format!("problem {problem_id} not found")))?;
    let from: String = old.try_get("stage")?;
    let entered: DateTime<Utc> = old.try_get("stage_entered_at")?;
    let tenant: String = old.try_get("tenant_id")?;
    sqlx::query(
        "INSERT INTO problem_pipeline_summary AS s (tenant_id, stage, problem_count, exited_count, \
           total_seconds_in_stage, last_position) \
         VALUES ($1, $2, -1, 1, $3::numeric, $5), ($1, $4, 1, 0, 0, $5) \
         ON CONFLICT (tenant_id, stage) DO UPDATE \
         SET problem_count = s.problem_count + excluded.problem_count, \
             exited_count = s.exited_count + excluded.exited_count, \
             total_seconds_in_stage = s.total_seconds_in_stage + excluded.total_seconds_in_stage, \
             last_position = GREATEST(s.last_position, excluded.last_position)",
    )
    .bind(&tenant)
    .bind(&from)
    .bind(seconds_between(entered, at))
    .bind(to.as_str())
    .bind(pos)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
