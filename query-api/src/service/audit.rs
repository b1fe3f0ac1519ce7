//! `AuditQueries`: the audit trail, paged or streamed, with viewer redaction.
//!
//! # What a viewer sees
//!
//! Role `viewer` gets every audit entry of its tenant, with the personal fields removed: `actor`,
//! `actor_type`, `client_ip` and `user_agent` are empty, and `changes_json` keeps the *names*
//! of the changed fields with empty objects instead of their before/after values (values can
//! be personal: a title, a description, a destination address). `redacted` is set on such
//! entries. A viewer may not filter by actor (it would reveal who did what). Every other role
//! sees entries in full.

use chrono::{DateTime, Utc};
use projections::models::audit::reads::{AUDIT_PAGE, AuditRow};
use schemas::auth::{Principal, Role};
use schemas::v1 as pb;
use schemas::v1::audit_queries_server::AuditQueries;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{EXPORT_BUFFER, EXPORT_PAGE, QueryService};
use crate::convert::{self, s, ts};
use crate::cursor::{Cursor, page_size, paginate};
use crate::error::QueryError;
use crate::reader::{Model, Reader};

/// A validated audit filter.
#[derive(Debug, Clone)]
struct Filter {
    resource_type: Option<String>,
    resource_id: Option<String>,
    actor: Option<String>,
    correlation_id: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl Filter {
    fn parse(filter: Option<&pb::AuditFilter>, principal: &Principal) -> Result<Self, QueryError> {
        let default = pb::AuditFilter::default();
        let f = filter.unwrap_or(&default);
        let actor = convert::filter("filter.actor", &f.actor)?;
        if actor.is_some() && !principal.role.sees_personal_fields() {
            return Err(schemas::auth::AuthError::Forbidden {
                role: principal.role,
                action: "filter the audit trail by actor (personal data)",
            }
            .into());
        }
        Ok(Self {
            resource_type: convert::filter("filter.resource_type", &f.resource_type)?,
            resource_id: convert::filter("filter.resource_id", &f.resource_id)?,
            actor,
            correlation_id: convert::uuid_opt("filter.correlation_id", &f.correlation_id)?,
            from: convert::time("filter.occurred_from", f.occurred_from.as_ref())?,
            to: convert::time("filter.occurred_to", f.occurred_to.as_ref())?,
        })
    }

    /// Rows after `after` and at most `upto`, at most `limit` of them, in a session of its own
    /// (each page of an export).
    async fn page(
        &self,
        reader: &Reader,
        tenant: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, QueryError> {
        let mut tx = reader.begin(tenant).await?;
        let rows = self.page_on(&mut tx, tenant, after, upto, limit).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Like [`Filter::page`], on the request's session.
    async fn page_on(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, QueryError> {
        let rows = sqlx::query_as(AUDIT_PAGE)
            .bind(tenant)
            .bind(&self.resource_type)
            .bind(&self.resource_id)
            .bind(&self.actor)
            .bind(self.correlation_id)
            .bind(self.from)
            .bind(self.to)
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(conn)
            .await?;
        Ok(rows)
    }
}

/// The entry as the caller's role may see it (see the module docs).
fn entry(r: AuditRow, role: Role) -> pb::AuditEntry {
    let redact = !role.sees_personal_fields();
    let changes = if redact {
        redact_changes(&r.changes)
    } else {
        r.changes
    };
    let personal = |v: String| if redact { String::new() } else { v };
    pb::AuditEntry {
        global_position: r.global_position,
        event_id: r.event_id.to_string(),
        action: r.action,
        actor: personal(r.actor),
        actor_type: personal(r.actor_type),
        resource_type: r.resource_type,
        resource_id: r.resource_id,
        resource_version: convert::u64_of(r.resource_version),
        changes_json: changes,
        command_id: convert::id(r.command_id),
        correlation_id: convert::id(r.correlation_id),
        causation_id: convert::id(r.causation_id),
        client_ip: personal(s(r.client_ip)),
        user_agent: personal(s(r.user_agent)),
        occurred_at: Some(ts(r.occurred_at)),
        event_hash: r.event_hash,
        redacted: redact,
    }
}

/// `{"title": {"before": "a", "after": "b"}}` -> `{"title": {}}`; anything unexpected -> `{}`.
fn redact_changes(changes: &str) -> String {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(changes) {
        Ok(map) => {
            let names: serde_json::Map<String, serde_json::Value> = map
                .into_iter()
                .map(|(k, _)| (k, serde_json::Value::Object(serde_json::Map::new())))
                .collect();
            serde_json::Value::Object(names).to_string()
        }
        Err(_) => "{}".to_owned(),
    }
}

#[tonic::async_trait]
impl AuditQueries for QueryService {
    async fn list_audit_trail(
        &self,
        request: Request<pb::ListAuditTrailRequest>,
    ) -> Result<Response<pb::ListAuditTrailResponse>, Status> {
        const RPC: &str = "ListAuditTrail";
        self.read(
            RPC,
            request,
            Model::Audit,
            |req, principal| {
                let limit = page_size(req.page_size)?;
                let after = match Cursor::decode(&req.page_token, RPC, 1)? {
                    Some(c) => c.int(0)?,
                    None => 0,
                };
                let filter = Filter::parse(req.filter.as_ref(), principal)?;
                Ok((limit, after, filter))
            },
            |q, _, (limit, after, filter)| {
                Box::pin(async move {
                    let rows = filter
                        .page_on(
                            &mut *q.conn,
                            &q.principal.tenant,
                            after,
                            i64::MAX,
                            limit + 1,
                        )
                        .await?;
                    let (rows, next_page_token) =
                        paginate(rows, limit, RPC, |r| vec![r.global_position.to_string()]);
                    Ok(pb::ListAuditTrailResponse {
                        position: q.position,
                        next_page_token,
                        entries: rows
                            .into_iter()
                            .map(|r| entry(r, q.principal.role))
                            .collect(),
                    })
                })
            },
        )
        .await
    }

    type ExportAuditTrailStream = ReceiverStream<Result<pb::AuditEntry, Status>>;

    async fn export_audit_trail(
        &self,
        request: Request<pb::ExportAuditTrailRequest>,
    ) -> Result<Response<Self::ExportAuditTrailStream>, Status> {
        // The export ends at the position it starts at (the position reached), so that it is a
        // fixed set of rows however long the client takes to read it.
        self.answer(
            "ExportAuditTrail",
            request,
            Model::Audit,
            |req, principal| Filter::parse(req.filter.as_ref(), principal),
            |c, _, filter| {
                Box::pin(async move {
                    let upto = c.position;
                    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_BUFFER);
                    let reader = c.service.reader.clone();
                    let principal = c.principal.clone();
                    let span = tracing::Span::current();
                    tokio::spawn(async move {
                        let mut after = 0;
                        let mut sent: u64 = 0;
                        loop {
                            let rows = match filter
                                .page(&reader, &principal.tenant, after, upto, EXPORT_PAGE)
                                .await
                            {
                                Ok(rows) => rows,
                                Err(err) => {
                                    // The client learns that the export is incomplete.
                                    let _ = tx.send(Err(Status::from(err))).await;
                                    return;
                                }
                            };
                            let last_page = (rows.len() as i64) < EXPORT_PAGE;
                            for row in rows {
                                after = row.global_position;
                                // A closed channel means the client went away: stop reading.
                                if tx.send(Ok(entry(row, principal.role))).await.is_err() {
                                    tracing::info!(
                                        parent: &span,
                                        sent,
                                        "export cancelled by the client"
                                    );
                                    return;
                                }
                                sent += 1;
                            }
                            if last_page {
                                tracing::info!(parent: &span, sent, upto, "export finished");
                                return;
                            }
                        }
                    });
                    Ok(ReceiverStream::new(rx))
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_field_names_only() {
        let out = redact_changes(r#"{"title":{"before":"a","after":"b"},"due":{"after":1}}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"title": {}, "due": {}}));
        assert_eq!(redact_changes("not json"), "{}");
    }
}
