//! `ProblemQueries`: problems, frames, issue trees with priorities, recommendations.

use aggregates::problem::{ProblemStage, Urgency};
use projections::models::problems::reads::{
    FrameRow, GET_FRAME, GET_PROBLEM, ISSUE_TREE, LIST_PROBLEMS, LIST_RECOMMENDATIONS, NodeRow,
    PROBLEM_EXISTS, ProblemRow, RecommendationRow,
};
use schemas::v1 as pb;
use schemas::v1::problem_queries_server::ProblemQueries;
use tonic::{Request, Response, Status};

use super::QueryService;
use crate::convert::{self, s, spellings, ts, ts_opt};
use crate::cursor::{Cursor, page_size, paginate, time_key};
use crate::error::QueryError;
use crate::reader::Model;

/// Most tree nodes returned by `GetIssueTree`; a problem's tree is small by nature, the cap
/// only bounds the response of a pathological one.
const MAX_TREE_NODES: i64 = 5_000;

/// A problem as the API shows it.
fn problem_view(r: ProblemRow) -> pb::ProblemView {
    pb::ProblemView {
        problem_id: r.problem_id.to_string(),
        title: s(r.title),
        raw_text: r.raw_text,
        submitter: r.submitter,
        urgency: r.urgency,
        metadata_json: r.metadata,
        organization_id: convert::id(r.organization_id),
        stage: r.stage,
        stage_entered_at: Some(ts(r.stage_entered_at)),
        end_reason: s(r.end_reason),
        created_by: r.created_by,
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        ended_at: ts_opt(r.ended_at),
        version: convert::u64_of(r.version),
        last_position: r.last_position,
    }
}

/// A tree node as the API shows it, with its priority if it has one.
fn node_view(r: NodeRow) -> pb::TreeNodeView {
    let priority = match (r.impact, r.feasibility, r.prioritized_at) {
        (Some(impact), Some(feasibility), Some(at)) => Some(pb::NodePriorityView {
            impact: convert::u32_of(i64::from(impact)),
            feasibility: convert::u32_of(i64::from(feasibility)),
            priority_score: s(r.priority_score),
            rationale: s(r.rationale),
            estimated_hours: r.estimated_hours,
            estimated_cost: s(r.estimated_cost),
            confidence: s(r.confidence),
            is_recommended: r.is_recommended.unwrap_or(false),
            prioritized_at: Some(ts(at)),
        }),
        _ => None,
    };
    pb::TreeNodeView {
        node_id: r.node_id.to_string(),
        parent_id: convert::id(r.parent_id),
        level: convert::u32_of(i64::from(r.level)),
        title: r.title,
        hypotheses_json: r.hypotheses,
        required_data_json: r.required_data,
        priority_hint: s(r.priority_hint),
        notes: s(r.notes),
        created_at: Some(ts(r.created_at)),
        priority,
    }
}

/// A recommendation as the API shows it.
fn recommendation_view(r: RecommendationRow) -> pb::RecommendationView {
    pb::RecommendationView {
        recommendation_id: r.recommendation_id.to_string(),
        problem_id: r.problem_id.to_string(),
        title: r.title,
        summary: r.summary,
        evidence_json: r.evidence,
        actions_json: r.actions,
        expected_impact_json: s(r.expected_impact),
        risks_json: r.risks,
        confidence: s(r.confidence),
        priority: convert::u32_of(i64::from(r.priority)),
        created_at: Some(ts(r.created_at)),
    }
}

#[tonic::async_trait]
impl ProblemQueries for QueryService {
    async fn get_problem(
        &self,
        request: Request<pb::GetProblemRequest>,
    ) -> Result<Response<pb::GetProblemResponse>, Status> {
        self.read(
            "GetProblem",
            request,
            Model::Problems,
            |req, _| {
                let id = convert::uuid("problem_id", &req.problem_id)?;
                Ok(id)
            },
            |q, _, id| {
                Box::pin(async move {
                    let problem: ProblemRow = sqlx::query_as(GET_PROBLEM)
                        .bind(q.tenant())
                        .bind(id)
                        .fetch_optional(&mut *q.conn)
                        .await?
                        .ok_or_else(|| QueryError::NotFound(format!("problem {id}")))?;
                    let frame: Option<FrameRow> = sqlx::query_as(GET_FRAME)
                        .bind(q.tenant())
                        .bind(id)
                        .fetch_optional(&mut *q.conn)
                        .await?;
                    Ok(pb::GetProblemResponse {
                        position: q.position,
                        problem: Some(problem_view(problem)),
                        frame: frame.map(|f| pb::ProblemFrameView {
                            goal: f.goal,
                            scope_json: f.scope,
                            kpis_json: f.kpis,
                            stakeholders_json: f.stakeholders,
                            assumptions_json: f.assumptions,
                            constraints_json: f.constraints,
                            confidence: f.confidence,
                            clarifying_questions_json: f.clarifying_questions,
                            defined_at: Some(ts(f.defined_at)),
                        }),
                    })
                })
            },
        )
        .await
    }

    async fn list_problems(
        &self,
        request: Request<pb::ListProblemsRequest>,
    ) -> Result<Response<pb::ListProblemsResponse>, Status> {
        const RPC: &str = "ListProblems";
        self.read(
            RPC,
            request,
            Model::Problems,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let cursor = Cursor::decode(&req.page_token, RPC, 2)?;
                let after = match &cursor {
                    Some(c) => Some((c.time(0)?, c.uuid(1)?)),
                    None => None,
                };
                let stage = convert::vocab("stage", &req.stage, &spellings!(ProblemStage))?;
                let urgency = convert::vocab("urgency", &req.urgency, &spellings!(Urgency))?;
                let submitter = convert::filter("submitter", &req.submitter)?;
                let from = convert::time("created_from", req.created_from.as_ref())?;
                let to = convert::time("created_to", req.created_to.as_ref())?;
                Ok((limit, after, stage, urgency, submitter, from, to))
            },
            |q, _, (limit, after, stage, urgency, submitter, from, to)| {
                Box::pin(async move {
                    let rows: Vec<ProblemRow> = sqlx::query_as(LIST_PROBLEMS)
                        .bind(q.tenant())
                        .bind(stage)
                        .bind(urgency)
                        .bind(submitter)
                        .bind(from)
                        .bind(to)
                        .bind(after.map(|a| a.0))
                        .bind(after.map(|a| a.1))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![time_key(&r.created_at), r.problem_id.to_string()]
                    });
                    Ok(pb::ListProblemsResponse {
                        position: q.position,
                        next_page_token,
                        problems: rows.into_iter().map(problem_view).collect(),
                    })
                })
            },
        )
        .await
    }

    async fn get_issue_tree(
        &self,
        request: Request<pb::GetIssueTreeRequest>,
    ) -> Result<Response<pb::GetIssueTreeResponse>, Status> {
        self.read(
            "GetIssueTree",
            request,
            Model::Problems,
            |req, _| {
                let id = convert::uuid("problem_id", &req.problem_id)?;
                Ok(id)
            },
            |q, _, id| {
                Box::pin(async move {
                    let exists: Option<i32> = sqlx::query_scalar(PROBLEM_EXISTS)
                        .bind(q.tenant())
                        .bind(id)
                        .fetch_optional(&mut *q.conn)
                        .await?;
                    if exists.is_none() {
                        return Err(QueryError::NotFound(format!("problem {id}")));
                    }
                    // Nodes and their priorities in one statement (a join, not one query per node).
                    let rows: Vec<NodeRow> = sqlx::query_as(ISSUE_TREE)
                        .bind(q.tenant())
                        .bind(id)
                        .bind(MAX_TREE_NODES)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    Ok(pb::GetIssueTreeResponse {
                        position: q.position,
                        nodes: rows.into_iter().map(node_view).collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_recommendations(
        &self,
        request: Request<pb::ListRecommendationsRequest>,
    ) -> Result<Response<pb::ListRecommendationsResponse>, Status> {
        const RPC: &str = "ListRecommendations";
        self.read(
            RPC,
            request,
            Model::Problems,
            |req, _| {
                let id = convert::uuid("problem_id", &req.problem_id)?;
                let limit = page_size(req.page_size)?;
                let cursor = Cursor::decode(&req.page_token, RPC, 3)?;
                let after = match &cursor {
                    Some(c) => Some((c.int(0)?, c.time(1)?, c.uuid(2)?)),
                    None => None,
                };
                Ok((id, limit, after))
            },
            |q, _, (id, limit, after)| {
                Box::pin(async move {
                    let rows: Vec<RecommendationRow> = sqlx::query_as(LIST_RECOMMENDATIONS)
                        .bind(q.tenant())
                        .bind(id)
                        .bind(after.map(|a| i16::try_from(a.0).unwrap_or(i16::MAX)))
                        .bind(after.map(|a| a.1))
                        .bind(after.map(|a| a.2))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![
                            r.priority.to_string(),
                            time_key(&r.created_at),
                            r.recommendation_id.to_string(),
                        ]
                    });
                    Ok(pb::ListRecommendationsResponse {
                        position: q.position,
                        next_page_token,
                        recommendations: rows.into_iter().map(recommendation_view).collect(),
                    })
                })
            },
        )
        .await
    }
}
