//! Aggregate states as JSON, for `GetStateAsOf`.
//!
//! The aggregates' state types are deliberately not `Serialize` (they are the domain's private
//! decision state), so this module spells out the JSON of each one field by field from their
//! public fields. Maps keyed by ids become objects keyed by the id string; sets become sorted
//! arrays. A stream with no events yet is `null`.

use aggregates::agent_session::AgentSessionData;
use aggregates::problem::ProblemData;
use aggregates::task::{Reminder, TaskData};
use serde_json::{Map, Value, json};

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A task.
pub fn task(d: &TaskData) -> Value {
    json!({
        "id": to_value(&d.id),
        "owner": to_value(&d.owner),
        "title": to_value(&d.title),
        "description": to_value(&d.description),
        "due_date": d.due_date,
        "priority": to_value(&d.priority),
        "tags": to_value(&d.tags),
        "reminder_config": to_value(&d.reminder_config),
        "recurrence": to_value(&d.recurrence),
        "parent_task_id": to_value(&d.parent_task_id),
        "occurrence": d.occurrence,
        "status": to_value(&d.status),
        "reminder": d.reminder.as_ref().map(reminder),
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "completed_at": d.completed_at,
    })
}

fn reminder(r: &Reminder) -> Value {
    json!({
        "id": to_value(&r.id),
        "trigger_time": r.trigger_time,
        "target": to_value(&r.target),
        "status": to_value(&r.status),
        "retry_count": r.retry_count,
        "last_retry_at": r.last_retry_at,
        "sent_at": r.sent_at,
    })
}

/// A problem.
pub fn problem(d: &ProblemData) -> Value {
    let nodes: Map<String, Value> = d
        .nodes
        .iter()
        .map(|(id, n)| {
            (
                id.as_uuid().to_string(),
                json!({ "parent_id": n.parent_id.map(|p| p.as_uuid()), "level": n.level }),
            )
        })
        .collect();
    let priorities: Map<String, Value> = d
        .priorities
        .iter()
        .map(|(id, score)| (id.as_uuid().to_string(), Value::String(score.to_string())))
        .collect();
    let plans: Map<String, Value> = d
        .plans
        .iter()
        .map(|(id, result)| {
            (
                id.as_uuid().to_string(),
                json!({ "result_id": to_value(result) }),
            )
        })
        .collect();
    let deliverables: Map<String, Value> = d
        .deliverables
        .iter()
        .map(|(id, status)| (id.as_uuid().to_string(), to_value(status)))
        .collect();
    json!({
        "id": to_value(&d.id),
        "title": to_value(&d.title),
        "submitter": to_value(&d.submitter),
        "urgency": to_value(&d.urgency),
        "organization_id": to_value(&d.organization_id),
        "stage": to_value(&d.stage),
        "frame": to_value(&d.frame),
        "nodes": nodes,
        "priorities": priorities,
        "plans": plans,
        "recommendations": to_value(&d.recommendations),
        "deliverables": deliverables,
        "feedback_by": to_value(&d.feedback_by),
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "completed_at": d.completed_at,
    })
}

/// An agent session.
pub fn agent_session(d: &AgentSessionData) -> Value {
    json!({
        "id": to_value(&d.id),
        "user": to_value(&d.user),
        "agent_type": to_value(&d.agent_type),
        "status": to_value(&d.status),
        "personas_active": to_value(&d.personas_active),
        "token_cost": to_value(&d.token_cost),
        "estimated_cost": to_value(&d.estimated_cost),
        "max_cost_limit": to_value(&d.max_cost_limit),
        "run_approvals": to_value(&d.run_approvals),
        "decisions": to_value(&d.decisions),
        "approvals": d.approvals,
        "rejections": d.rejections,
        "block_reason": to_value(&d.block_reason),
        "created_at": d.created_at,
        "started_at": d.started_at,
        "ended_at": d.ended_at,
    })
}
