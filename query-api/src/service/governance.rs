//! `GovernanceQueries`: governance decisions.

use aggregates::governance::GovernanceEventType;
use projections::models::governance::reads::{DecisionRow, LIST_DECISIONS};
use schemas::v1 as pb;
use schemas::v1::governance_queries_server::GovernanceQueries;
use tonic::{Request, Response, Status};

use super::QueryService;
use crate::convert::{self, s, spellings, ts};
use crate::cursor::{Cursor, page_size, paginate, time_key};
use crate::reader::Model;

/// A decision as the API shows it.
fn decision_view(r: DecisionRow) -> pb::DecisionView {
    pb::DecisionView {
        decision_id: r.decision_id.to_string(),
        session_id: r.session_id.to_string(),
        event_type: r.event_type,
        framework_type: r.framework_type,
        approved: r.approved,
        reason: s(r.reason),
        validation_context_json: r.validation_context,
        decision_details_json: r.decision_details,
        fallback_triggered: r.fallback_triggered,
        correlation_id: convert::id(r.correlation_id),
        created_by: r.created_by,
        created_at: Some(ts(r.created_at)),
    }
}

#[tonic::async_trait]
impl GovernanceQueries for QueryService {
    async fn list_decisions(
        &self,
        request: Request<pb::ListDecisionsRequest>,
    ) -> Result<Response<pb::ListDecisionsResponse>, Status> {
        const RPC: &str = "ListDecisions";
        self.read(
            RPC,
            request,
            Model::Governance,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let cursor = Cursor::decode(&req.page_token, RPC, 2)?;
                let after = match &cursor {
                    Some(c) => Some((c.time(0)?, c.uuid(1)?)),
                    None => None,
                };
                let session = convert::uuid_opt("session_id", &req.session_id)?;
                let event_type = convert::vocab(
                    "event_type",
                    &req.event_type,
                    &spellings!(GovernanceEventType),
                )?;
                let framework = convert::filter("framework_type", &req.framework_type)?;
                let from = convert::time("created_from", req.created_from.as_ref())?;
                let to = convert::time("created_to", req.created_to.as_ref())?;
                Ok((limit, after, session, event_type, framework, from, to))
            },
            |q, req, (limit, after, session, event_type, framework, from, to)| {
                Box::pin(async move {
                    let rows: Vec<DecisionRow> = sqlx::query_as(LIST_DECISIONS)
                        .bind(q.tenant())
                        .bind(session)
                        .bind(req.approved)
                        .bind(event_type)
                        .bind(framework)
                        .bind(from)
                        .bind(to)
                        .bind(after.map(|a| a.0))
                        .bind(after.map(|a| a.1))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![time_key(&r.created_at), r.decision_id.to_string()]
                    });
                    Ok(pb::ListDecisionsResponse {
                        position: q.position,
                        next_page_token,
                        decisions: rows.into_iter().map(decision_view).collect(),
                    })
                })
            },
        )
        .await
    }
}
