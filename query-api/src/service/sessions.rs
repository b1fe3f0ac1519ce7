//! `AgentSessionQueries`: sessions, persona activations, live sessions with approval counts.

use aggregates::agent_session::AgentSessionStatus;
use chrono::{DateTime, Utc};
use schemas::v1 as pb;
use schemas::v1::agent_session_queries_server::AgentSessionQueries;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::QueryService;
use crate::convert::{self, s, spellings, ts, ts_opt};
use crate::cursor::{Cursor, page_size, paginate, time_key};
use crate::error::QueryError;
use crate::reader::Model;

/// Most persona activations returned with one session.
const MAX_PERSONAS: i64 = 1_000;

#[derive(sqlx::FromRow)]
struct SessionRow {
    session_id: Uuid,
    user_ref: String,
    agent_type: String,
    agent_config: String,
    status: String,
    token_cost: String,
    tokens_used: i64,
    estimated_cost: Option<String>,
    max_cost_limit: Option<String>,
    approvals: i32,
    rejections: i32,
    block_reason: Option<String>,
    end_reason: Option<String>,
    created_by: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    version: i64,
    last_position: i64,
}

macro_rules! session_columns {
    () => {
        "session_id, user_ref, agent_type, agent_config::text AS agent_config, status, \
         token_cost::text AS token_cost, tokens_used, estimated_cost::text AS estimated_cost, \
         max_cost_limit::text AS max_cost_limit, approvals, rejections, block_reason, \
         end_reason, created_by, created_at, started_at, ended_at, updated_at, version, \
         last_position"
    };
}

impl From<SessionRow> for pb::AgentSessionView {
    fn from(r: SessionRow) -> Self {
        Self {
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
}

#[derive(sqlx::FromRow)]
struct PersonaRow {
    persona_id: String,
    activation_trigger: String,
    activated_at: DateTime<Utc>,
    deactivated_at: Option<DateTime<Utc>>,
    is_active: bool,
}

#[derive(sqlx::FromRow)]
struct ActiveRow {
    session_id: Uuid,
    user_ref: String,
    agent_type: String,
    status: String,
    token_cost: String,
    approvals: i32,
    rejections: i32,
    created_at: DateTime<Utc>,
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
                    const SESSION: &str = concat!(
                        "SELECT ",
                        session_columns!(),
                        " FROM agent_sessions WHERE tenant_id = $1 AND session_id = $2"
                    );
                    let session: SessionRow = sqlx::query_as(SESSION)
                        .bind(q.tenant())
                        .bind(id)
                        .fetch_optional(&mut *q.conn)
                        .await?
                        .ok_or_else(|| QueryError::NotFound(format!("agent session {id}")))?;
                    let personas: Vec<PersonaRow> = sqlx::query_as(
                        "SELECT persona_id, activation_trigger, activated_at, deactivated_at, is_active \
                           FROM agent_session_personas WHERE tenant_id = $1 AND session_id = $2 \
                          ORDER BY activated_position, persona_id LIMIT $3",
                    )
                    .bind(q.tenant())
                    .bind(id)
                    .bind(MAX_PERSONAS)
                    .fetch_all(&mut *q.conn)
                    .await?;
                    Ok(pb::GetSessionResponse {
                        position: q.position,
                        session: Some(session.into()),
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
                    const SQL: &str = concat!(
                        "SELECT ",
                        session_columns!(),
                        " FROM agent_sessions \
                          WHERE tenant_id = $1 \
                            AND ($2::text IS NULL OR user_ref = $2) \
                            AND ($3::text IS NULL OR status = $3) \
                            AND ($4::text IS NULL OR agent_type = $4) \
                            AND ($5::timestamptz IS NULL OR (created_at, session_id) < ($5, $6)) \
                          ORDER BY created_at DESC, session_id DESC LIMIT $7"
                    );
                    let rows: Vec<SessionRow> = sqlx::query_as(SQL)
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
                        sessions: rows.into_iter().map(Into::into).collect(),
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
                    let rows: Vec<ActiveRow> = sqlx::query_as(
                        "SELECT session_id, user_ref, agent_type, status, token_cost::text AS token_cost, \
                                approvals, rejections, created_at \
                           FROM active_agent_sessions \
                          WHERE tenant_id = $1 \
                            AND ($2::text IS NULL OR user_ref = $2) \
                            AND ($3::timestamptz IS NULL OR (created_at, session_id) < ($3, $4)) \
                          ORDER BY created_at DESC, session_id DESC LIMIT $5",
                    )
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
