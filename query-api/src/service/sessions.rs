//! `AgentSessionQueries`: sessions, persona activations, live sessions with approval counts.

use aggregates::agent_session::AgentSessionStatus;
use projections::models::sessions::reads::{
    ActiveRow, GET_SESSION, LIST_ACTIVE_SESSIONS, LIST_SESSIONS, PersonaRow, SESSION_PERSONAS,
    SessionRow,
};
use schemas::v1 as pb;
use schemas::v1::agent_session_queries_server::AgentSessionQueries;
use tonic::{Request, Response, Status};

use super::QueryService;
use crate::convert::{self, s, spellings, ts, ts_opt};
use crate::cursor::{Cursor, page_size, paginate, time_key};
use crate::error::QueryError;
use crate::reader::Model;

/// Most persona activations returned with one session.
const MAX_PERSONAS: i64 = 1_000;

/// A session as the API shows it.
fn session_view(r: SessionRow) -> pb::AgentSessionView {
    pb::AgentSessionView {
        session_id: r.session_id.to_string(),
        user: r.user_ref,
        agent_type: r.agent_type,
        agent_config_json: r.agent_config,
        status: r.status,
        token_cost: r.token_cost,
        tokens_used: convert::u64_of(r.tokens_used),
        estimated_cost: s(r.estimated_cost),
        max_cost_limit: s(r.max_cost_limit),
        approvals: convert::u32_of(i64::from(r.approvals)),
        rejections: convert::u32_of(i64::from(r.rejections)),
        block_reason: s(r.block_reason),
        end_reason: s(r.end_reason),
        created_by: r.created_by,
        created_at: Some(ts(r.created_at)),
        started_at: ts_opt(r.started_at),
        ended_at: ts_opt(r.ended_at),
        updated_at: Some(ts(r.updated_at)),
        version: convert::u64_of(r.version),
        last_position: r.last_position,
    }
}

#[tonic::async_trait]
impl AgentSessionQueries for QueryService {
    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        self.read(
            "GetSession",
            request,
            Model::AgentSessions,
            |req, _| {
                let id = convert::uuid("session_id", &req.session_id)?;
                Ok(id)
            },
            |q, _, id| {
                Box::pin(async move {
                    let session: SessionRow = sqlx::query_as(GET_SESSION)
                        .bind(q.tenant())
                        .bind(id)
                        .fetch_optional(&mut *q.conn)
                        .await?
                        .ok_or_else(|| QueryError::NotFound(format!("agent session {id}")))?;
                    let personas: Vec<PersonaRow> = sqlx::query_as(SESSION_PERSONAS)
                        .bind(q.tenant())
                        .bind(id)
                        .bind(MAX_PERSONAS)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    Ok(pb::GetSessionResponse {
                        position: q.position,
                        session: Some(session_view(session)),
                        personas: personas
                            .into_iter()
                            .map(|p| pb::PersonaActivationView {
                                persona_id: p.persona_id,
                                activation_trigger: p.activation_trigger,
                                activated_at: Some(ts(p.activated_at)),
                                deactivated_at: ts_opt(p.deactivated_at),
                                is_active: p.is_active,
                            })
                            .collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        const RPC: &str = "ListSessions";
        self.read(
            RPC,
            request,
            Model::AgentSessions,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let cursor = Cursor::decode(&req.page_token, RPC, 2)?;
                let after = match &cursor {
                    Some(c) => Some((c.time(0)?, c.uuid(1)?)),
                    None => None,
                };
                let user = convert::filter("user", &req.user)?;
                let status =
                    convert::vocab("status", &req.status, &spellings!(AgentSessionStatus))?;
                let agent_type = convert::filter("agent_type", &req.agent_type)?;
                Ok((limit, after, user, status, agent_type))
            },
            |q, _, (limit, after, user, status, agent_type)| {
                Box::pin(async move {
                    let rows: Vec<SessionRow> = sqlx::query_as(LIST_SESSIONS)
                        .bind(q.tenant())
                        .bind(user)
                        .bind(status)
                        .bind(agent_type)
                        .bind(after.map(|a| a.0))
                        .bind(after.map(|a| a.1))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![time_key(&r.created_at), r.session_id.to_string()]
                    });
                    Ok(pb::ListSessionsResponse {
                        position: q.position,
                        next_page_token,
                        sessions: rows.into_iter().map(session_view).collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_active_sessions(
        &self,
        request: Request<pb::ListActiveSessionsRequest>,
    ) -> Result<Response<pb::ListActiveSessionsResponse>, Status> {
        const RPC: &str = "ListActiveSessions";
        self.read(
            RPC,
            request,
            Model::AgentSessions,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let cursor = Cursor::decode(&req.page_token, RPC, 2)?;
                let after = match &cursor {
                    Some(c) => Some((c.time(0)?, c.uuid(1)?)),
                    None => None,
                };
                let user = convert::filter("user", &req.user)?;
                Ok((limit, after, user))
            },
            |q, _, (limit, after, user)| {
                Box::pin(async move {
                    let rows: Vec<ActiveRow> = sqlx::query_as(LIST_ACTIVE_SESSIONS)
                        .bind(q.tenant())
                        .bind(user)
                        .bind(after.map(|a| a.0))
                        .bind(after.map(|a| a.1))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![time_key(&r.created_at), r.session_id.to_string()]
                    });
                    Ok(pb::ListActiveSessionsResponse {
                        position: q.position,
                        next_page_token,
                        sessions: rows
                            .into_iter()
                            .map(|r| pb::ActiveSession {
                                session_id: r.session_id.to_string(),
                                user: r.user_ref,
                                agent_type: r.agent_type,
                                status: r.status,
                                token_cost: r.token_cost,
                                approvals: convert::u32_of(i64::from(r.approvals)),
                                rejections: convert::u32_of(i64::from(r.rejections)),
                                created_at: Some(ts(r.created_at)),
                            })
                            .collect(),
                    })
                })
            },
        )
        .await
    }
}
