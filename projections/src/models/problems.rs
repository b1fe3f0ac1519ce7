//! `problems`: the problem pipeline read model (seed 000) and its per-tenant stage summary.
//!
//! Values (see [`super`], "Values a column cannot hold"): NUL in strings and JSON is stored as
//! U+FFFD; file sizes (`BIGINT`), levels, hours and execution seconds (`INTEGER`) go through a
//! checked conversion: a value past the column's range (e.g. a file size of 2^63 or more)
//! dead-letters the event with [`ProjectionError::OutOfRange`] instead of being stored clamped.
//!
//! Set-based: a batch loads the problems, analysis plans and deliverables it changes (one
//! statement each), folds its events into them in memory, writes each table with one
//! statement (the children it adds included) and adds the pipeline counts as deltas.

use std::collections::{BTreeMap, HashMap};

use aggregates::problem::{ProblemEvent, ProblemStage};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub mod reads;

use super::{by_tenant, decode, fit, json, load_rows, num, ts, version, write_rows};
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

const LOAD_PROBLEMS: &str =
    "SELECT to_jsonb(p) FROM problems p WHERE p.problem_id = ANY($1) AND p.tenant_id = $2";
const LOAD_PLANS: &str = "SELECT to_jsonb(p) FROM problem_analysis_plans p \
     WHERE p.plan_id = ANY($1) AND p.tenant_id = $2";
const LOAD_DELIVERABLES: &str = "SELECT to_jsonb(d) FROM problem_deliverables d \
     WHERE d.deliverable_id = ANY($1) AND d.tenant_id = $2";
const UPSERT_PROBLEMS: &str = "INSERT INTO problems \
       SELECT * FROM jsonb_populate_recordset(NULL::problems, $1) \
     ON CONFLICT (tenant_id, problem_id) DO UPDATE SET \
       title = excluded.title, raw_text = excluded.raw_text, submitter = excluded.submitter, \
       urgency = excluded.urgency, metadata = excluded.metadata, \
       organization_id = excluded.organization_id, stage = excluded.stage, \
       stage_entered_at = excluded.stage_entered_at, end_reason = excluded.end_reason, \
       created_by = excluded.created_by, created_at = excluded.created_at, \
       updated_at = excluded.updated_at, ended_at = excluded.ended_at, \
       version = excluded.version, last_position = excluded.last_position";
/// A problem's frame: the last definition wins.
const UPSERT_FRAMES: &str = "INSERT INTO problem_frames \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_frames, $1) \
     ON CONFLICT (tenant_id, problem_id) DO UPDATE SET goal = excluded.goal, scope = excluded.scope, \
       kpis = excluded.kpis, stakeholders = excluded.stakeholders, \
       assumptions = excluded.assumptions, constraints = excluded.constraints, \
       confidence = excluded.confidence, clarifying_questions = excluded.clarifying_questions, \
       defined_at = excluded.defined_at, last_position = excluded.last_position";
const INSERT_NODES: &str = "INSERT INTO problem_tree_nodes \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_tree_nodes, $1)";
/// A node's priority: the last prioritisation wins.
const UPSERT_PRIORITIES: &str = "INSERT INTO problem_node_priorities \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_node_priorities, $1) \
     ON CONFLICT (tenant_id, node_id) DO UPDATE SET impact = excluded.impact, \
       feasibility = excluded.feasibility, priority_score = excluded.priority_score, \
       rationale = excluded.rationale, estimated_hours = excluded.estimated_hours, \
       estimated_cost = excluded.estimated_cost, confidence = excluded.confidence, \
       is_recommended = excluded.is_recommended, prioritized_at = excluded.prioritized_at, \
       last_position = excluded.last_position";
const UPSERT_PLANS: &str = "INSERT INTO problem_analysis_plans \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_analysis_plans, $1) \
     ON CONFLICT (tenant_id, plan_id) DO UPDATE SET status = excluded.status, \
       last_position = excluded.last_position";
const INSERT_RESULTS: &str = "INSERT INTO problem_analysis_results \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_analysis_results, $1)";
const INSERT_ARTIFACTS: &str = "INSERT INTO problem_artifacts \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_artifacts, $1)";
const INSERT_RECOMMENDATIONS: &str = "INSERT INTO problem_recommendations \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_recommendations, $1)";
const UPSERT_DELIVERABLES: &str = "INSERT INTO problem_deliverables \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_deliverables, $1) \
     ON CONFLICT (tenant_id, deliverable_id) DO UPDATE SET status = excluded.status, \
       failure_reason = excluded.failure_reason, updated_at = excluded.updated_at, \
       last_position = excluded.last_position";
const INSERT_FEEDBACK: &str = "INSERT INTO problem_feedback \
       SELECT * FROM jsonb_populate_recordset(NULL::problem_feedback, $1)";
/// Adds the batch's pipeline deltas per tenant and stage.
const BUMP_PIPELINE: &str = "INSERT INTO problem_pipeline_summary AS s (tenant_id, stage, \
       problem_count, exited_count, total_seconds_in_stage, last_position) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::numeric[], \
       $6::bigint[]) \
     ON CONFLICT (tenant_id, stage) DO UPDATE \
     SET problem_count = s.problem_count + excluded.problem_count, \
         exited_count = s.exited_count + excluded.exited_count, \
         total_seconds_in_stage = s.total_seconds_in_stage + excluded.total_seconds_in_stage, \
         last_position = GREATEST(s.last_position, excluded.last_position)";

/// A `problems` row (column order of the table).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProblemRow {
    problem_id: Uuid,
    tenant_id: String,
    title: Option<String>,
    raw_text: String,
    submitter: String,
    urgency: String,
    metadata: Value,
    organization_id: Option<Uuid>,
    stage: String,
    stage_entered_at: DateTime<Utc>,
    end_reason: Option<String>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    version: i64,
    last_position: i64,
}

/// A `problem_analysis_plans` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlanRow {
    plan_id: Uuid,
    problem_id: Uuid,
    tenant_id: String,
    question_id: Uuid,
    title: String,
    methods: Value,
    data_requirements: Value,
    estimated_hours: Option<i32>,
    owner: Option<String>,
    dependencies: Value,
    acceptance_criteria: Value,
    status: String,
    created_at: DateTime<Utc>,
    last_position: i64,
}

/// A `problem_deliverables` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeliverableRow {
    deliverable_id: Uuid,
    problem_id: Uuid,
    tenant_id: String,
    deliverable_type: String,
    file_path: String,
    file_size: Option<i64>,
    mime_type: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    status: String,
    failure_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

/// Rows written as they are (inserted, or upserted last-wins), as JSON objects in table
/// column order: nothing in the batch reads them back.
type Row = serde_json::Map<String, Value>;

/// Pipeline deltas of one tenant and stage over a batch.
#[derive(Debug, Default)]
struct StageDelta {
    problems: i64,
    exited: i64,
    seconds: Decimal,
    last_position: i64,
}

#[derive(Default)]
struct Fold {
    problems: HashMap<Uuid, ProblemRow>,
    plans: HashMap<Uuid, PlanRow>,
    deliverables: HashMap<Uuid, DeliverableRow>,
    dirty_problems: BTreeMap<Uuid, ()>,
    dirty_plans: BTreeMap<Uuid, ()>,
    dirty_deliverables: BTreeMap<Uuid, ()>,
    frames: BTreeMap<Uuid, Row>,
    nodes: Vec<Row>,
    priorities: BTreeMap<Uuid, Row>,
    results: Vec<Row>,
    artifacts: Vec<Row>,
    recommendations: Vec<Row>,
    feedback: Vec<Row>,
    pipeline: BTreeMap<(String, String), StageDelta>,
}

/// A JSON object from `(column, value)` pairs.
fn row<const N: usize>(columns: [(&str, Value); N]) -> Row {
    columns
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Fold {
    fn stage(&mut self, tenant: &str, stage: &str) -> &mut StageDelta {
        self.pipeline
            .entry((tenant.to_owned(), stage.to_owned()))
            .or_default()
    }

    /// Keeps the problem row's version, position and update time current for child events.
    fn touch(
        &mut self,
        event: &RecordedEvent,
        problem_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        let p = self
            .problems
            .get_mut(&problem_id)
            .ok_or_else(|| ProjectionError::Inconsistent("problem not found".into()))?;
        p.updated_at = ts(at);
        p.version = version(event);
        p.last_position = event.global_position.0;
        self.dirty_problems.insert(problem_id, ());
        Ok(())
    }

    /// Moves a problem to `to`: the old stage loses it and gains its time in stage, the new
    /// stage gains it.
    fn transition(
        &mut self,
        event: &RecordedEvent,
        problem_id: Uuid,
        to: ProblemStage,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), ProjectionError> {
        let at = ts(at);
        let pos = event.global_position.0;
        let p = self.problems.get_mut(&problem_id).ok_or_else(|| {
            ProjectionError::Inconsistent(format!("problem {problem_id} not found"))
        })?;
        let (from, entered, tenant) = (p.stage.clone(), p.stage_entered_at, p.tenant_id.clone());
        p.stage = to.as_str().to_owned();
        p.stage_entered_at = at;
        p.updated_at = at;
        if let Some(reason) = reason {
            p.end_reason = Some(reason.to_owned());
        }
        if to.is_terminal() {
            p.ended_at = Some(at);
        }
        p.version = version(event);
        p.last_position = pos;
        self.dirty_problems.insert(problem_id, ());
        let micros = (at - entered).num_microseconds().unwrap_or(0).max(0);
        let left = self.stage(&tenant, &from);
        left.problems -= 1;
        left.exited += 1;
        // Each term normalised, the sum not: numeric addition keeps the largest scale, so
        // the stored text is the same whether a batch adds one term or many.
        left.seconds += Decimal::new(micros, 6).normalize();
        left.last_position = left.last_position.max(pos);
        let entered = self.stage(&tenant, to.as_str());
        entered.problems += 1;
        entered.last_position = entered.last_position.max(pos);
        Ok(())
    }

    fn apply(&mut self, event: &RecordedEvent, e: &ProblemEvent) -> Result<(), ProjectionError> {
        let pos = event.global_position.0;
        let tenant = event.tenant_id.as_str();
        let (problem_id, at) = match e {
            ProblemEvent::Submitted(s) => {
                let p = &s.problem;
                let id = p.problem_id.as_uuid();
                if self.problems.contains_key(&id) {
                    return Err(ProjectionError::Inconsistent(
                        "problem already exists".into(),
                    ));
                }
                let at = ts(s.at);
                self.problems.insert(
                    id,
                    ProblemRow {
                        problem_id: id,
                        tenant_id: tenant.to_owned(),
                        title: p.title.as_ref().map(|t| t.as_str().to_owned()),
                        raw_text: p.raw_text.as_str().to_owned(),
                        submitter: p.submitter.as_str().to_owned(),
                        urgency: p.urgency.as_str().to_owned(),
                        metadata: json(&p.metadata).0,
                        organization_id: p.organization_id.map(|o| o.as_uuid()),
                        stage: "created".into(),
                        stage_entered_at: at,
                        end_reason: None,
                        created_by: s.created_by.clone(),
                        created_at: at,
                        updated_at: at,
                        ended_at: None,
                        version: version(event),
                        last_position: pos,
                    },
                );
                self.dirty_problems.insert(id, ());
                let created = self.stage(tenant, "created");
                created.problems += 1;
                created.last_position = created.last_position.max(pos);
                return Ok(());
            }
            ProblemEvent::StageAdvanced(s) => {
                return self.transition(event, s.problem_id.as_uuid(), s.to, None, s.at);
            }
            ProblemEvent::Failed(s) | ProblemEvent::Cancelled(s) => {
                let to = if matches!(e, ProblemEvent::Failed(_)) {
                    ProblemStage::Failed
                } else {
                    ProblemStage::Cancelled
                };
                return self.transition(
                    event,
                    s.problem_id.as_uuid(),
                    to,
                    Some(s.reason.as_str()),
                    s.at,
                );
            }
            ProblemEvent::FrameDefined(f) => {
                let fr = &f.frame;
                let id = f.problem_id.as_uuid();
                self.frames.insert(
                    id,
                    row([
                        ("problem_id", to_value(&id)),
                        ("tenant_id", Value::from(tenant)),
                        ("goal", Value::from(fr.goal.as_str())),
                        ("scope", json(&fr.scope).0),
                        ("kpis", json(&fr.kpis).0),
                        ("stakeholders", json(&fr.stakeholders).0),
                        ("assumptions", json(&fr.assumptions).0),
                        ("constraints", json(&fr.constraints).0),
                        ("confidence", Value::from(fr.confidence.as_str())),
                        ("clarifying_questions", json(&fr.clarifying_questions).0),
                        ("defined_at", to_value(&ts(f.at))),
                        ("last_position", Value::from(pos)),
                    ]),
                );
                (id, f.at)
            }
            ProblemEvent::TreeNodeAdded(n) => {
                let node = &n.node;
                self.nodes.push(row([
                    ("node_id", to_value(&node.node_id.as_uuid())),
                    ("problem_id", to_value(&n.problem_id.as_uuid())),
                    ("tenant_id", Value::from(tenant)),
                    ("parent_id", to_value(&node.parent_id.map(|p| p.as_uuid()))),
                    (
                        "level",
                        Value::from(fit::<i32, _>(event, "problem_tree_nodes.level", n.level)?),
                    ),
                    ("title", Value::from(node.title.as_str())),
                    ("hypotheses", json(&node.hypotheses).0),
                    ("required_data", json(&node.required_data).0),
                    (
                        "priority_hint",
                        to_value(&node.priority_hint.map(|h| h.as_str())),
                    ),
                    ("notes", to_value(&node.notes.as_ref().map(|t| t.as_str()))),
                    ("created_at", to_value(&ts(n.at))),
                    ("last_position", Value::from(pos)),
                ]));
                (n.problem_id.as_uuid(), n.at)
            }
            ProblemEvent::NodePrioritized(n) => {
                let p = &n.priority;
                let node = p.node_id.as_uuid();
                self.priorities.insert(
                    node,
                    row([
                        ("node_id", to_value(&node)),
                        ("problem_id", to_value(&n.problem_id.as_uuid())),
                        ("tenant_id", Value::from(tenant)),
                        ("impact", Value::from(i16::from(p.impact.get()))),
                        ("feasibility", Value::from(i16::from(p.feasibility.get()))),
                        ("priority_score", Value::from(num(n.priority_score))),
                        (
                            "rationale",
                            to_value(&p.rationale.as_ref().map(|t| t.as_str())),
                        ),
                        (
                            "estimated_hours",
                            to_value(
                                &p.estimated_hours
                                    .map(|h| {
                                        fit::<i32, _>(
                                            event,
                                            "problem_node_priorities.estimated_hours",
                                            h,
                                        )
                                    })
                                    .transpose()?,
                            ),
                        ),
                        (
                            "estimated_cost",
                            to_value(&p.estimated_cost.map(|c| num(c.get()))),
                        ),
                        ("confidence", to_value(&p.confidence.map(|c| num(c.get())))),
                        ("is_recommended", Value::from(p.is_recommended)),
                        ("prioritized_at", to_value(&ts(n.at))),
                        ("last_position", Value::from(pos)),
                    ]),
                );
                (n.problem_id.as_uuid(), n.at)
            }
            ProblemEvent::AnalysisPlanCreated(a) => {
                let p = &a.plan;
                let id = p.plan_id.as_uuid();
                if self.plans.contains_key(&id) {
                    return Err(ProjectionError::Inconsistent(
                        "analysis plan already exists".into(),
                    ));
                }
                self.plans.insert(
                    id,
                    PlanRow {
                        plan_id: id,
                        problem_id: a.problem_id.as_uuid(),
                        tenant_id: tenant.to_owned(),
                        question_id: p.question_id.as_uuid(),
                        title: p.title.as_str().to_owned(),
                        methods: json(&p.methods).0,
                        data_requirements: json(&p.data_requirements).0,
                        estimated_hours: p
                            .estimated_hours
                            .map(|h| fit(event, "problem_analysis_plans.estimated_hours", h))
                            .transpose()?,
                        owner: p.owner.as_ref().map(|o| o.as_str().to_owned()),
                        dependencies: json(&p.dependencies).0,
                        acceptance_criteria: json(&p.acceptance_criteria).0,
                        status: "planned".into(),
                        created_at: ts(a.at),
                        last_position: pos,
                    },
                );
                self.dirty_plans.insert(id, ());
                (a.problem_id.as_uuid(), a.at)
            }
            ProblemEvent::AnalysisResultRecorded(r) => {
                let res = &r.result;
                let (result_id, problem_id, at) =
                    (res.result_id.as_uuid(), r.problem_id.as_uuid(), ts(r.at));
                self.results.push(row([
                    ("result_id", to_value(&result_id)),
                    ("plan_id", to_value(&res.plan_id.as_uuid())),
                    ("problem_id", to_value(&problem_id)),
                    ("tenant_id", Value::from(tenant)),
                    (
                        "summary",
                        to_value(&res.summary.as_ref().map(|t| t.as_str())),
                    ),
                    ("key_findings", json(&res.key_findings).0),
                    ("metrics", json(&res.metrics).0),
                    (
                        "confidence",
                        to_value(&res.confidence.map(|c| num(c.get()))),
                    ),
                    (
                        "execution_time_secs",
                        to_value(
                            &res.execution_time_secs
                                .map(|s| {
                                    fit::<i32, _>(
                                        event,
                                        "problem_analysis_results.execution_time_secs",
                                        s,
                                    )
                                })
                                .transpose()?,
                        ),
                    ),
                    ("recorded_at", to_value(&at)),
                    ("last_position", Value::from(pos)),
                ]));
                for artifact in &res.artifacts {
                    let a = to_value(artifact);
                    let field = |k: &str| a.get(k).cloned().unwrap_or(Value::Null);
                    self.artifacts.push(row([
                        ("artifact_id", field("artifact_id")),
                        ("result_id", to_value(&result_id)),
                        ("problem_id", to_value(&problem_id)),
                        ("tenant_id", Value::from(tenant)),
                        ("artifact_type", field("artifact_type")),
                        ("file_path", field("file_path")),
                        (
                            "file_size",
                            to_value(
                                &artifact
                                    .file_size
                                    .map(|s| fit::<i64, _>(event, "problem_artifacts.file_size", s))
                                    .transpose()?,
                            ),
                        ),
                        ("mime_type", field("mime_type")),
                        ("description", field("description")),
                        ("created_at", to_value(&at)),
                        ("last_position", Value::from(pos)),
                    ]));
                }
                let plan_id = res.plan_id.as_uuid();
                let plan = self.plans.get_mut(&plan_id).ok_or_else(|| {
                    ProjectionError::Inconsistent("analysis plan not found".into())
                })?;
                plan.status = "completed".into();
                plan.last_position = pos;
                self.dirty_plans.insert(plan_id, ());
                (problem_id, r.at)
            }
            ProblemEvent::RecommendationAdded(r) => {
                let rec = &r.recommendation;
                self.recommendations.push(row([
                    (
                        "recommendation_id",
                        to_value(&rec.recommendation_id.as_uuid()),
                    ),
                    ("problem_id", to_value(&r.problem_id.as_uuid())),
                    ("tenant_id", Value::from(tenant)),
                    ("title", Value::from(rec.title.as_str())),
                    ("summary", Value::from(rec.summary.as_str())),
                    ("evidence", json(&rec.evidence).0),
                    ("actions", json(&rec.actions).0),
                    (
                        "expected_impact",
                        rec.expected_impact
                            .as_ref()
                            .map_or(Value::Null, |x| json(x).0),
                    ),
                    ("risks", json(&rec.risks).0),
                    (
                        "confidence",
                        to_value(&rec.confidence.map(|c| num(c.get()))),
                    ),
                    ("priority", Value::from(i16::from(rec.priority.get()))),
                    ("created_at", to_value(&ts(r.at))),
                    ("last_position", Value::from(pos)),
                ]));
                (r.problem_id.as_uuid(), r.at)
            }
            ProblemEvent::DeliverableAdded(d) => {
                let del = &d.deliverable;
                let id = del.deliverable_id.as_uuid();
                if self.deliverables.contains_key(&id) {
                    return Err(ProjectionError::Inconsistent(
                        "deliverable already exists".into(),
                    ));
                }
                let at = ts(d.at);
                self.deliverables.insert(
                    id,
                    DeliverableRow {
                        deliverable_id: id,
                        problem_id: d.problem_id.as_uuid(),
                        tenant_id: tenant.to_owned(),
                        deliverable_type: del.deliverable_type.as_str().to_owned(),
                        file_path: del.file_path.as_str().to_owned(),
                        file_size: del
                            .file_size
                            .map(|s| fit(event, "problem_deliverables.file_size", s))
                            .transpose()?,
                        mime_type: del.mime_type.as_ref().map(|m| m.as_str().to_owned()),
                        expires_at: del.expires_at.map(ts),
                        status: "generating".into(),
                        failure_reason: None,
                        created_at: at,
                        updated_at: at,
                        last_position: pos,
                    },
                );
                self.dirty_deliverables.insert(id, ());
                (d.problem_id.as_uuid(), d.at)
            }
            ProblemEvent::DeliverableReady(d) | ProblemEvent::DeliverableFailed(d) => {
                let status = if matches!(e, ProblemEvent::DeliverableReady(_)) {
                    "ready"
                } else {
                    "failed"
                };
                let id = d.deliverable_id.as_uuid();
                let del = self
                    .deliverables
                    .get_mut(&id)
                    .ok_or_else(|| ProjectionError::Inconsistent("deliverable not found".into()))?;
                del.status = status.to_owned();
                del.failure_reason = d.reason.as_ref().map(|t| t.as_str().to_owned());
                del.updated_at = ts(d.at);
                del.last_position = pos;
                self.dirty_deliverables.insert(id, ());
                (d.problem_id.as_uuid(), d.at)
            }
            ProblemEvent::FeedbackSubmitted(f) => {
                let fb = &f.feedback;
                self.feedback.push(row([
                    ("problem_id", to_value(&f.problem_id.as_uuid())),
                    ("user_ref", Value::from(fb.user.as_str())),
                    ("tenant_id", Value::from(tenant)),
                    ("rating", Value::from(i16::from(fb.rating.get()))),
                    ("text", to_value(&fb.text.as_ref().map(|t| t.as_str()))),
                    (
                        "improvement_suggestions",
                        json(&fb.improvement_suggestions).0,
                    ),
                    (
                        "category",
                        to_value(&fb.category.as_ref().map(|t| t.as_str())),
                    ),
                    ("submitted_at", to_value(&ts(f.at))),
                    ("last_position", Value::from(pos)),
                ]));
                (f.problem_id.as_uuid(), f.at)
            }
        };
        self.touch(event, problem_id, at)
    }

    async fn write(self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let problems: Vec<&ProblemRow> = self
            .dirty_problems
            .keys()
            .filter_map(|id| self.problems.get(id))
            .collect();
        write_rows(conn, UPSERT_PROBLEMS, &problems).await?;
        let frames: Vec<&Row> = self.frames.values().collect();
        write_rows(conn, UPSERT_FRAMES, &frames).await?;
        write_rows(conn, INSERT_NODES, &self.nodes).await?;
        let priorities: Vec<&Row> = self.priorities.values().collect();
        write_rows(conn, UPSERT_PRIORITIES, &priorities).await?;
        let plans: Vec<&PlanRow> = self
            .dirty_plans
            .keys()
            .filter_map(|id| self.plans.get(id))
            .collect();
        write_rows(conn, UPSERT_PLANS, &plans).await?;
        write_rows(conn, INSERT_RESULTS, &self.results).await?;
        write_rows(conn, INSERT_ARTIFACTS, &self.artifacts).await?;
        write_rows(conn, INSERT_RECOMMENDATIONS, &self.recommendations).await?;
        let deliverables: Vec<&DeliverableRow> = self
            .dirty_deliverables
            .keys()
            .filter_map(|id| self.deliverables.get(id))
            .collect();
        write_rows(conn, UPSERT_DELIVERABLES, &deliverables).await?;
        write_rows(conn, INSERT_FEEDBACK, &self.feedback).await?;
        if !self.pipeline.is_empty() {
            let n = self.pipeline.len();
            let (mut tenants, mut stages) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut problems, mut exited) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut seconds, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for ((tenant, stage), d) in &self.pipeline {
                tenants.push(tenant.as_str());
                stages.push(stage.as_str());
                problems.push(d.problems);
                exited.push(d.exited);
                seconds.push(num(d.seconds));
                positions.push(d.last_position);
            }
            sqlx::query(BUMP_PIPELINE)
                .bind(tenants)
                .bind(stages)
                .bind(problems)
                .bind(exited)
                .bind(seconds)
                .bind(positions)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

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

impl ProblemsProjection {
    /// Applies one tenant's events of a batch (problem and child ids are unique per tenant).
    async fn apply_tenant(
        conn: &mut PgConnection,
        tenant: &str,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let decoded: Vec<ProblemEvent> =
            events.iter().map(|e| decode(e)).collect::<Result<_, _>>()?;
        let (mut problems, mut plans, mut deliverables) = (Vec::new(), Vec::new(), Vec::new());
        for e in &decoded {
            problems.push(problem_of(e));
            match e {
                ProblemEvent::AnalysisPlanCreated(a) => plans.push(a.plan.plan_id.as_uuid()),
                ProblemEvent::AnalysisResultRecorded(r) => {
                    plans.push(r.result.plan_id.as_uuid());
                }
                ProblemEvent::DeliverableAdded(d) => {
                    deliverables.push(d.deliverable.deliverable_id.as_uuid());
                }
                ProblemEvent::DeliverableReady(d) | ProblemEvent::DeliverableFailed(d) => {
                    deliverables.push(d.deliverable_id.as_uuid());
                }
                _ => {}
            }
        }
        for ids in [&mut problems, &mut plans, &mut deliverables] {
            ids.sort_unstable();
            ids.dedup();
        }
        let mut fold = Fold::default();
        for r in load_rows::<_, ProblemRow>(conn, LOAD_PROBLEMS, tenant, problems).await? {
            fold.problems.insert(r.problem_id, r);
        }
        for r in load_rows::<_, PlanRow>(conn, LOAD_PLANS, tenant, plans).await? {
            fold.plans.insert(r.plan_id, r);
        }
        for r in
            load_rows::<_, DeliverableRow>(conn, LOAD_DELIVERABLES, tenant, deliverables).await?
        {
            fold.deliverables.insert(r.deliverable_id, r);
        }
        for (event, e) in events.iter().zip(&decoded) {
            fold.apply(event, e)?;
        }
        fold.write(conn).await
    }
}

/// The problem an event is about.
fn problem_of(e: &ProblemEvent) -> Uuid {
    match e {
        ProblemEvent::Submitted(s) => s.problem.problem_id,
        ProblemEvent::StageAdvanced(s) => s.problem_id,
        ProblemEvent::Failed(s) | ProblemEvent::Cancelled(s) => s.problem_id,
        ProblemEvent::FrameDefined(f) => f.problem_id,
        ProblemEvent::TreeNodeAdded(n) => n.problem_id,
        ProblemEvent::NodePrioritized(n) => n.problem_id,
        ProblemEvent::AnalysisPlanCreated(a) => a.problem_id,
        ProblemEvent::AnalysisResultRecorded(r) => r.problem_id,
        ProblemEvent::RecommendationAdded(r) => r.problem_id,
        ProblemEvent::DeliverableAdded(d) => d.problem_id,
        ProblemEvent::DeliverableReady(d) | ProblemEvent::DeliverableFailed(d) => d.problem_id,
        ProblemEvent::FeedbackSubmitted(f) => f.problem_id,
    }
    .as_uuid()
}
