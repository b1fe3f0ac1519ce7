//! `SummaryQueries`: the summaries maintained by the projections.

use aggregates::problem::ProblemStage;
use projections::models::governance::reads::{LIST_APPROVAL_RATES, RateRow};
use projections::models::problems::reads::{PROBLEM_PIPELINE, StageRow};
use projections::models::sessions::reads::{
    ActivityRow, CostRow, LIST_DAILY_COSTS, LIST_USER_ACTIVITY,
};
use projections::models::tasks::reads::{LIST_TASK_SUMMARIES, TaskSummaryRow};
use schemas::v1 as pb;
use schemas::v1::summary_queries_server::SummaryQueries;
use tonic::{Request, Response, Status};

use super::QueryService;
use crate::convert::{self, s, ts};
use crate::cursor::{Cursor, page_size, paginate};
use crate::reader::Model;

#[tonic::async_trait]
impl SummaryQueries for QueryService {
    async fn get_problem_pipeline(
        &self,
        request: Request<pb::GetProblemPipelineRequest>,
    ) -> Result<Response<pb::GetProblemPipelineResponse>, Status> {
        self.read(
            "GetProblemPipeline",
            request,
            Model::Problems,
            |_, _| Ok(()),
            |q, _, ()| {
                Box::pin(async move {
                    let mut rows: Vec<StageRow> = sqlx::query_as(PROBLEM_PIPELINE)
                        .bind(q.tenant())
                        .fetch_all(&mut *q.conn)
                        .await?;
                    // Pipeline order, not alphabetical: the order of the domain's stage list.
                    let order = |stage: &str| {
                        ProblemStage::ALL
                            .iter()
                            .position(|s| s.as_str() == stage)
                            .unwrap_or(usize::MAX)
                    };
                    rows.sort_by(|a, b| {
                        order(&a.stage)
                            .cmp(&order(&b.stage))
                            .then_with(|| a.stage.cmp(&b.stage))
                    });
                    Ok(pb::GetProblemPipelineResponse {
                        position: q.position,
                        stages: rows
                            .into_iter()
                            .map(|r| pb::PipelineStage {
                                stage: r.stage,
                                problem_count: convert::u64_of(r.problem_count),
                                exited_count: convert::u64_of(r.exited_count),
                                total_seconds_in_stage: r.total_seconds_in_stage,
                                mean_seconds_in_stage: s(r.mean_seconds_in_stage),
                            })
                            .collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_task_summaries(
        &self,
        request: Request<pb::ListTaskSummariesRequest>,
    ) -> Result<Response<pb::ListTaskSummariesResponse>, Status> {
        const RPC: &str = "ListTaskSummaries";
        self.read(
            RPC,
            request,
            Model::Tasks,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let after = match Cursor::decode(&req.page_token, RPC, 1)? {
                    Some(c) => Some(c.text(0)?),
                    None => None,
                };
                let owner = convert::filter("owner", &req.owner)?;
                Ok((limit, after, owner))
            },
            |q, _, (limit, after, owner)| {
                Box::pin(async move {
                    let rows: Vec<TaskSummaryRow> = sqlx::query_as(LIST_TASK_SUMMARIES)
                        .bind(q.tenant())
                        .bind(owner)
                        .bind(after)
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) =
                        paginate(rows, limit, RPC, |r| vec![r.owner.clone()]);
                    Ok(pb::ListTaskSummariesResponse {
                        position: q.position,
                        next_page_token,
                        summaries: rows
                            .into_iter()
                            .map(|r| pb::TaskSummary {
                                owner: r.owner,
                                active_count: convert::u64_of(r.active_count),
                                completed_count: convert::u64_of(r.completed_count),
                                deleted_count: convert::u64_of(r.deleted_count),
                                overdue_count: convert::u64_of(r.overdue_count),
                                completion_rate: s(r.completion_rate),
                            })
                            .collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_user_activity(
        &self,
        request: Request<pb::ListUserActivityRequest>,
    ) -> Result<Response<pb::ListUserActivityResponse>, Status> {
        const RPC: &str = "ListUserActivity";
        self.read(
            RPC,
            request,
            Model::AgentSessions,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let after = match Cursor::decode(&req.page_token, RPC, 1)? {
                    Some(c) => Some(c.text(0)?),
                    None => None,
                };
                let user = convert::filter("user", &req.user)?;
                Ok((limit, after, user))
            },
            |q, _, (limit, after, user)| {
                Box::pin(async move {
                    let rows: Vec<ActivityRow> = sqlx::query_as(LIST_USER_ACTIVITY)
                        .bind(q.tenant())
                        .bind(user)
                        .bind(after)
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) =
                        paginate(rows, limit, RPC, |r| vec![r.user_ref.clone()]);
                    Ok(pb::ListUserActivityResponse {
                        position: q.position,
                        next_page_token,
                        users: rows
                            .into_iter()
                            .map(|r| pb::UserActivity {
                                user: r.user_ref,
                                session_count: convert::u64_of(r.session_count),
                                total_cost: r.total_cost,
                                mean_cost_per_session: s(r.mean_cost_per_session),
                                last_session_at: Some(ts(r.last_session_at)),
                            })
                            .collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_approval_rates(
        &self,
        request: Request<pb::ListApprovalRatesRequest>,
    ) -> Result<Response<pb::ListApprovalRatesResponse>, Status> {
        const RPC: &str = "ListApprovalRates";
        self.read(
            RPC,
            request,
            Model::Governance,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let after = match Cursor::decode(&req.page_token, RPC, 3)? {
                    Some(c) => Some((c.date(0)?, c.text(1)?, c.text(2)?)),
                    None => None,
                };
                let day_from = convert::day("day_from", &req.day_from)?;
                let day_to = convert::day("day_to", &req.day_to)?;
                let framework = convert::filter("framework_type", &req.framework_type)?;
                let event_type = convert::filter("event_type", &req.event_type)?;
                Ok((limit, after, day_from, day_to, framework, event_type))
            },
            |q, _, (limit, after, day_from, day_to, framework, event_type)| {
                Box::pin(async move {
                    let rows: Vec<RateRow> = sqlx::query_as(LIST_APPROVAL_RATES)
                        .bind(q.tenant())
                        .bind(day_from)
                        .bind(day_to)
                        .bind(framework)
                        .bind(event_type)
                        .bind(after.as_ref().map(|a| a.0))
                        .bind(after.as_ref().map(|a| a.1.clone()))
                        .bind(after.as_ref().map(|a| a.2.clone()))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![
                            r.day.to_string(),
                            r.framework_type.clone(),
                            r.event_type.clone(),
                        ]
                    });
                    Ok(pb::ListApprovalRatesResponse {
                        position: q.position,
                        next_page_token,
                        rates: rows
                            .into_iter()
                            .map(|r| pb::ApprovalRate {
                                day: r.day.to_string(),
                                framework_type: r.framework_type,
                                event_type: r.event_type,
                                decision_count: convert::u64_of(r.decision_count),
                                approved_count: convert::u64_of(r.approved_count),
                                approval_rate: s(r.approval_rate),
                            })
                            .collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_daily_costs(
        &self,
        request: Request<pb::ListDailyCostsRequest>,
    ) -> Result<Response<pb::ListDailyCostsResponse>, Status> {
        const RPC: &str = "ListDailyCosts";
        self.read(
            RPC,
            request,
            Model::AgentSessions,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let after = match Cursor::decode(&req.page_token, RPC, 2)? {
                    Some(c) => Some((c.date(0)?, c.text(1)?)),
                    None => None,
                };
                let day_from = convert::day("day_from", &req.day_from)?;
                let day_to = convert::day("day_to", &req.day_to)?;
                let user = convert::filter("user", &req.user)?;
                Ok((limit, after, day_from, day_to, user))
            },
            |q, _, (limit, after, day_from, day_to, user)| {
                Box::pin(async move {
                    let rows: Vec<CostRow> = sqlx::query_as(LIST_DAILY_COSTS)
                        .bind(q.tenant())
                        .bind(day_from)
                        .bind(day_to)
                        .bind(user)
                        .bind(after.as_ref().map(|a| a.0))
                        .bind(after.as_ref().map(|a| a.1.clone()))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![r.day.to_string(), r.user_ref.clone()]
                    });
                    Ok(pb::ListDailyCostsResponse {
                        position: q.position,
                        next_page_token,
                        costs: rows
                            .into_iter()
                            .map(|r| pb::DailyCost {
                                day: r.day.to_string(),
                                user: r.user_ref,
                                total_cost: r.total_cost,
                                cost_events: convert::u64_of(r.cost_events),
                                tokens_used: convert::u64_of(r.tokens_used),
                            })
                            .collect(),
                    })
                })
            },
        )
        .await
    }
}
