//! `HistoryQueries`: events of a stream (upcast), state as of a version or instant, integrity.
//!
//! Roles `admin` and `auditor` only. A stream of another tenant does not exist for the caller
//! (`NOT_FOUND`); a range verification covers only the caller's tenant's events.

use aggregates::agent_session::AgentSession;
use aggregates::governance::GovernanceDecision;
use aggregates::problem::Problem;
use aggregates::task::Task;
use aggregates::{Aggregate, DomainEvent};
use chrono::{DateTime, Utc};
use event_store::aggregate;
use event_store::checkpoint::{self, VerifyingKey};
use event_store::{
    ChainReport, Direction, Position, RecordedEvent, SignedCheckpoint, StoreError, StreamId,
    VerifyReport,
};
use schemas::v1 as pb;
use schemas::v1::history_queries_server::HistoryQueries;
use serde_json::Value;
use tonic::{Request, Response, Status};

use super::QueryService;
use crate::convert::{self, ts};
use crate::error::QueryError;
use crate::reader::Model;
use crate::state;

/// Where an as-of replay stops.
#[derive(Debug, Clone, Copy)]
enum AsOf {
    /// After this stream version.
    Version(u64),
    /// After the longest prefix of events recorded at or before this instant.
    At(DateTime<Utc>),
}

impl AsOf {
    fn includes(self, event: &RecordedEvent) -> bool {
        match self {
            AsOf::Version(v) => event.stream_version <= v,
            AsOf::At(t) => event.recorded_at <= t,
        }
    }
}

/// Upcasts one stored event of aggregate `A`: (current schema version, payload).
fn upcast_as<A: Aggregate>(event: &RecordedEvent) -> Result<(u32, Value), QueryError> {
    let payload = event.payload_json()?;
    let domain = A::Event::from_stored(&event.event_type, event.schema_version, payload)
        .map_err(|e| QueryError::Corrupt(format!("event {}: {e}", event.event_id)))?;
    Ok((domain.schema_version(), domain.to_payload()))
}

fn upcast(event: &RecordedEvent) -> Result<(u32, Value), QueryError> {
    match event.stream_type.as_str() {
        Problem::STREAM_TYPE => upcast_as::<Problem>(event),
        Task::STREAM_TYPE => upcast_as::<Task>(event),
        AgentSession::STREAM_TYPE => upcast_as::<AgentSession>(event),
        GovernanceDecision::STREAM_TYPE => upcast_as::<GovernanceDecision>(event),
        other => Err(QueryError::Corrupt(format!("unknown stream type {other}"))),
    }
}

fn history_event(event: &RecordedEvent) -> Result<pb::HistoryEvent, QueryError> {
    let (schema_version, payload) = upcast(event)?;
    Ok(pb::HistoryEvent {
        global_position: event.global_position.0,
        event_id: event.event_id.to_string(),
        stream_id: event.stream_id.clone(),
        stream_type: event.stream_type.clone(),
        stream_version: event.stream_version,
        event_type: event.event_type.clone(),
        stored_schema_version: event.schema_version,
        schema_version,
        payload_json: payload.to_string(),
        metadata_json: event.metadata.clone(),
        recorded_at: Some(ts(event.recorded_at)),
        hash: hex::encode(event.hash),
    })
}

/// Folds the stream of aggregate `A` up to `as_of` with the store's fold loop
/// ([`event_store::aggregate::load_until`]); returns the state as JSON, the last folded
/// event's version and recording time.
async fn fold<A: Aggregate>(
    service: &QueryService,
    tenant: &str,
    stream: &StreamId,
    as_of: AsOf,
    to_json: fn(&A::State) -> Value,
) -> Result<(Value, u64, Option<DateTime<Utc>>), QueryError> {
    let loaded = aggregate::load_until::<A>(&service.store, tenant, stream, |e| as_of.includes(e))
        .await?
        // `own_stream` found the stream to be the tenant's; another type means it changed.
        .ok_or_else(|| QueryError::NotFound(format!("stream {stream}")))?;
    Ok((to_json(&loaded.state), loaded.version, loaded.recorded_at))
}

fn tampered(t: &event_store::Tampering) -> pb::TamperedEvent {
    let kind = serde_json::to_value(&t.kind)
        .ok()
        .and_then(|v| v.get("kind").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", t.kind));
    pb::TamperedEvent {
        stream_id: t.stream_id.clone(),
        global_position: t.global_position.map_or(0, |p| p.0),
        stream_version: t.stream_version.unwrap_or(0),
        event_id: String::new(),
        kind,
    }
}

impl QueryService {
    /// `tenant`'s stream of that id, if it has one (ids are scoped to the tenant); its stream
    /// type.
    async fn own_stream(&self, tenant: &str, raw: &str) -> Result<(StreamId, String), QueryError> {
        let stream =
            StreamId::new(raw).map_err(|e| QueryError::invalid("stream_id", e.to_string()))?;
        match self.store.stream_head(tenant, &stream).await? {
            Some(head) => Ok((stream, head.stream_type)),
            None => Err(QueryError::NotFound(format!("stream {raw}"))),
        }
    }

    /// The report as the response, naming the event id of every bad position (one query).
    async fn verify_response(
        &self,
        position: i64,
        report: VerifyReport,
    ) -> Result<pb::VerifyIntegrityResponse, QueryError> {
        let mut bad: Vec<pb::TamperedEvent> = report.tampered.iter().map(tampered).collect();
        let positions: Vec<i64> = bad
            .iter()
            .map(|t| t.global_position)
            .filter(|p| *p > 0)
            .collect();
        if !positions.is_empty() {
            let ids: Vec<(i64, uuid::Uuid)> = sqlx::query_as(
                "SELECT global_position, event_id FROM events WHERE global_position = ANY($1)",
            )
            .bind(&positions)
            .fetch_all(self.reader.pool())
            .await?;
            for t in &mut bad {
                if let Some((_, id)) = ids.iter().find(|(p, _)| *p == t.global_position) {
                    t.event_id = id.to_string();
                }
            }
        }
        let first_bad = report.first_bad().map(tampered).and_then(|first| {
            bad.iter()
                .find(|t| t.stream_id == first.stream_id)
                .cloned()
                .or(Some(first))
        });
        Ok(pb::VerifyIntegrityResponse {
            position,
            intact: report.is_intact(),
            events_checked: report.events_checked,
            streams_checked: report.streams_checked,
            first_bad,
            tampered: bad,
            checkpoint: None,
            first_bad_leaf: 0,
        })
    }
}

/// What a `VerifyIntegrity` request asks for (validated).
enum Plan {
    Range(Position, Position),
    Stream,
    Checkpoint(VerifyingKey),
}

fn checkpoint_pb(cp: &SignedCheckpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        leaf_count: cp.leaf_count,
        last_position: cp.last_position.0,
        root_hash: hex::encode(cp.root_hash),
        signed_at: Some(ts(cp.signed_at)),
        key_id: cp.key_id.clone(),
        signature: hex::encode(cp.signature),
    }
}

impl QueryService {
    /// The whole store against the newest checkpoint `key` signed. Findings in other tenants'
    /// streams are reported by position and kind only, never by stream or event id.
    async fn verify_against_checkpoint(
        &self,
        tenant: &str,
        position: i64,
        key: &VerifyingKey,
    ) -> Result<pb::VerifyIntegrityResponse, QueryError> {
        let cp = self
            .store
            .latest_checkpoint(key)
            .await?
            .ok_or_else(|| QueryError::NotFound("a checkpoint signed by this key".into()))?;
        let report: ChainReport = self.store.verify_checkpoint(&cp, key, |_, _| {}).await?;
        let mut positions: Vec<i64> = report
            .streams_broken
            .iter()
            .filter_map(|t| t.global_position.map(|p| p.0))
            .collect();
        if let Some(p) = report.first_bad.as_ref().and_then(|b| b.found_position) {
            positions.push(p.0);
        }
        let own: Vec<(i64, uuid::Uuid)> = sqlx::query_as(
            "SELECT global_position, event_id FROM events \
              WHERE global_position = ANY($1) AND tenant_id = $2",
        )
        .bind(&positions)
        .bind(tenant)
        .fetch_all(self.reader.pool())
        .await?;
        let own_id = |p: i64| {
            own.iter()
                .find(|(q, _)| *q == p)
                .map(|(_, id)| id.to_string())
        };
        let tampered: Vec<pb::TamperedEvent> = report
            .streams_broken
            .iter()
            .filter_map(|t| {
                let id = own_id(t.global_position?.0)?;
                let mut out = tampered(t);
                out.event_id = id;
                Some(out)
            })
            .collect();
        let first_bad = report.first_bad.as_ref().map(|b| {
            let found = b.found_position.map(|p| p.0);
            let event_id = found.and_then(own_id);
            let stream_id = event_id
                .as_ref()
                .and_then(|_| {
                    report
                        .streams_broken
                        .iter()
                        .find(|t| t.global_position.map(|p| p.0) == found)
                })
                .map(|t| t.stream_id.clone())
                .unwrap_or_default();
            pb::TamperedEvent {
                stream_id,
                global_position: b.global_position.map_or(0, |p| p.0),
                stream_version: 0,
                event_id: event_id.unwrap_or_default(),
                kind: serde_json::to_value(b.fault)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            }
        });
        Ok(pb::VerifyIntegrityResponse {
            position,
            intact: report.intact,
            events_checked: report.events_checked,
            streams_checked: 0,
            first_bad_leaf: report.first_bad.as_ref().map_or(0, |b| b.leaf_index),
            first_bad,
            tampered,
            checkpoint: Some(checkpoint_pb(&cp)),
        })
    }
}

/// Where a range verification starts and ends (validated).
fn range(range: &pb::PositionRange) -> Result<(Position, Position), QueryError> {
    if range.from_position < 0 || range.to_position < 0 {
        return Err(QueryError::invalid(
            "range",
            "positions must not be negative",
        ));
    }
    let to = if range.to_position == 0 {
        i64::MAX
    } else {
        range.to_position
    };
    if to < range.from_position {
        return Err(QueryError::invalid(
            "range.to_position",
            "must not be below from_position",
        ));
    }
    Ok((Position(range.from_position), Position(to)))
}

#[tonic::async_trait]
impl HistoryQueries for QueryService {
    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        self.answer(
            "ReadStream",
            request,
            Model::Store,
            |req, principal| {
                principal.require_history()?;
                crate::cursor::page_size(req.max_count)
                    .map_err(|_| QueryError::invalid("max_count", "must be at most 500"))
            },
            |c, req, limit| {
                Box::pin(async move {
                    let (stream, _) = c
                        .service
                        .own_stream(&c.principal.tenant, &req.stream_id)
                        .await?;
                    let from = req.from_version.max(1);
                    // One more than asked tells whether the stream continues.
                    let mut events = c
                        .service
                        .store
                        .read_stream(
                            &c.principal.tenant,
                            &stream,
                            from,
                            Direction::Forward,
                            u32::try_from(limit + 1).unwrap_or(u32::MAX),
                        )
                        .await?;
                    let more = events.len() as i64 > limit;
                    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                    let next_from_version = match (more, events.last()) {
                        (true, Some(last)) => last.stream_version + 1,
                        _ => 0,
                    };
                    Ok(pb::ReadStreamResponse {
                        position: c.position,
                        events: events.iter().map(history_event).collect::<Result<_, _>>()?,
                        next_from_version,
                    })
                })
            },
        )
        .await
    }

    async fn get_state_as_of(
        &self,
        request: Request<pb::GetStateAsOfRequest>,
    ) -> Result<Response<pb::GetStateAsOfResponse>, Status> {
        self.answer(
            "GetStateAsOf",
            request,
            Model::Store,
            |req, principal| {
                principal.require_history()?;
                match &req.as_of {
                    Some(pb::get_state_as_of_request::AsOf::Version(v)) => Ok(AsOf::Version(*v)),
                    Some(pb::get_state_as_of_request::AsOf::At(t)) => Ok(AsOf::At(
                        convert::time("at", Some(t))?
                            .ok_or_else(|| QueryError::invalid("at", "is required"))?,
                    )),
                    None => Err(QueryError::invalid("as_of", "set version or at")),
                }
            },
            |c, req, as_of| {
                Box::pin(async move {
                    let service = c.service;
                    let tenant = c.principal.tenant.as_str();
                    let (stream, stream_type) = service.own_stream(tenant, &req.stream_id).await?;
                    let (state, version, recorded_at) = match stream_type.as_str() {
                        Problem::STREAM_TYPE => {
                            fold::<Problem>(service, tenant, &stream, as_of, |s| {
                                s.as_ref().map_or(Value::Null, state::problem)
                            })
                            .await?
                        }
                        Task::STREAM_TYPE => {
                            fold::<Task>(service, tenant, &stream, as_of, |s| {
                                s.as_ref().map_or(Value::Null, state::task)
                            })
                            .await?
                        }
                        AgentSession::STREAM_TYPE => {
                            fold::<AgentSession>(service, tenant, &stream, as_of, |s| {
                                s.as_ref().map_or(Value::Null, state::agent_session)
                            })
                            .await?
                        }
                        GovernanceDecision::STREAM_TYPE => {
                            fold::<GovernanceDecision>(service, tenant, &stream, as_of, |s| {
                                serde_json::to_value(s).unwrap_or(Value::Null)
                            })
                            .await?
                        }
                        other => {
                            return Err(QueryError::Corrupt(format!(
                                "unknown stream type {other}"
                            )));
                        }
                    };
                    Ok(pb::GetStateAsOfResponse {
                        position: c.position,
                        stream_type,
                        version,
                        recorded_at: recorded_at.map(ts),
                        state_json: state.to_string(),
                    })
                })
            },
        )
        .await
    }

    async fn verify_integrity(
        &self,
        request: Request<pb::VerifyIntegrityRequest>,
    ) -> Result<Response<pb::VerifyIntegrityResponse>, Status> {
        self.answer(
            "VerifyIntegrity",
            request,
            Model::Store,
            |req, principal| {
                principal.require_history()?;
                match &req.scope {
                    Some(pb::verify_integrity_request::Scope::StreamId(_)) => Ok(Plan::Stream),
                    Some(pb::verify_integrity_request::Scope::Range(r)) => {
                        range(r).map(|(from, to)| Plan::Range(from, to))
                    }
                    Some(pb::verify_integrity_request::Scope::CheckpointPublicKey(k)) => {
                        checkpoint::verifying_key_from_hex(k)
                            .map(Plan::Checkpoint)
                            .map_err(|e| {
                                QueryError::invalid("checkpoint_public_key", e.to_string())
                            })
                    }
                    None => Err(QueryError::invalid(
                        "scope",
                        "set stream_id, range or checkpoint_public_key",
                    )),
                }
            },
            |c, req, plan| {
                Box::pin(async move {
                    let tenant = c.principal.tenant.as_str();
                    let report = match (plan, &req.scope) {
                        (Plan::Checkpoint(key), _) => {
                            return c
                                .service
                                .verify_against_checkpoint(tenant, c.position, &key)
                                .await;
                        }
                        (Plan::Range(from, to), _) => {
                            c.service
                                .store
                                .verify_positions(from, to, Some(tenant))
                                .await?
                        }
                        (
                            Plan::Stream,
                            Some(pb::verify_integrity_request::Scope::StreamId(raw)),
                        ) => {
                            let (stream, _) = c.service.own_stream(tenant, raw).await?;
                            c.service.store.verify_stream(tenant, &stream).await?
                        }
                        // Validation let through a range or a stream id only.
                        (Plan::Stream, _) => {
                            return Err(QueryError::invalid("scope", "set stream_id or range"));
                        }
                    };
                    c.service.verify_response(c.position, report).await
                })
            },
        )
        .await
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        self.answer(
            "GetInclusionProof",
            request,
            Model::Store,
            |req, principal| {
                principal.require_history()?;
                uuid::Uuid::parse_str(&req.event_id)
                    .map_err(|_| QueryError::invalid("event_id", "not a UUID"))
            },
            |c, _req, event_id| {
                Box::pin(async move {
                    let missing = || QueryError::NotFound(format!("event {event_id}"));
                    let proof = match c.service.store.inclusion_proof(event_id, None).await {
                        Ok(Some(p)) => p,
                        Ok(None) => return Err(missing()),
                        // Not sealed or not signed yet: the proof does not exist (yet).
                        Err(StoreError::Checkpoint(why)) => {
                            return Err(QueryError::NotFound(format!(
                                "an inclusion proof of event {event_id} ({why})"
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    // Another tenant's event does not exist for the caller.
                    if proof.event.tenant_id != c.principal.tenant {
                        return Err(missing());
                    }
                    Ok(pb::GetInclusionProofResponse {
                        position: c.position,
                        leaf_index: proof.leaf_index,
                        tree_size: proof.checkpoint.leaf_count,
                        audit_path: proof.audit_path.iter().map(hex::encode).collect(),
                        checkpoint: Some(checkpoint_pb(&proof.checkpoint)),
                        proof_json: serde_json::to_string(&proof)
                            .map_err(|e| QueryError::Corrupt(e.to_string()))?,
                    })
                })
            },
        )
        .await
    }
}
