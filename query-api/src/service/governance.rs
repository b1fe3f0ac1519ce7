//! `GovernanceQueries`: governance decisions.

use aggregates::governance::GovernanceEventType;
use chrono::{DateTime, Utc};
use schemas::v1 as pb;
use schemas::v1::governance_queries_server::GovernanceQueries;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::QueryService;
use crate::convert::{self, s, spellings, ts};
use crate::cursor::{Cursor, page_size, paginate, time_key};
use crate::reader::Model;

#[derive(sqlx::FromRow)]
struct DecisionRow {
    decision_id: Uuid,
    session_id: Uuid,
    event_type: String,
    framework_type: String,
    approved: bool,
    reason: Option<String>,
    validation_context: String,
    decision_details: String,
    fallback_triggered: bool,
    correlation_id: Option<Uuid>,
    created_by: String,
    created_at: DateTime<Utc>,
}

impl From<DecisionRow> for pb::DecisionView {
    fn from(r: DecisionRow) -> Self {
        Self {
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
                    let rows: Vec<DecisionRow> = sqlx::query_as(
                        "SELECT decision_id, session_id, event_type, framework_type, approved, reason, \
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
                          ORDER BY created_at DESC, decision_id DESC LIMIT $10",
                    )
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
                        decisions: rows.into_iter().map(Into::into).collect(),
                    })
                })
            },
        )
        .await
    }
}
