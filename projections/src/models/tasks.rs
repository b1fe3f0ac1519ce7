//! `tasks`: tasks and reminders (seed 003) and the per-owner task summary.
//!
//! Overdue is time-dependent ("active with a due date before now"), so it is never stored: the
//! views `overdue_tasks` and `task_user_summary_view` derive it at query time, served by the
//! partial index `tasks_open_due_idx`. Everything stored here is a pure function of the events,
//! which keeps rebuilds equal to incremental builds.
//!
//! Values (see [`super`], "Values a column cannot hold"): NUL in strings and JSON is stored as
//! U+FFFD; an occurrence past `INTEGER` dead-letters the event ([`ProjectionError::OutOfRange`]).
//!
//! Set-based: a batch loads the rows it touches (one statement per table), folds its events
//! into them in memory, and writes each table back with one statement; the summary is written
//! as per-owner deltas summed over the batch.

use std::collections::{BTreeMap, HashMap, HashSet};

use aggregates::task::{TaskEvent, TaskStatus};
use aggregates::values::Patch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub mod reads;

use super::{by_tenant, decode, fit, load_rows, ts, version, write_rows};
use crate::projection::{Projection, ProjectionError};

/// Tasks touched by a batch, whole.
const LOAD_TASKS: &str =
    "SELECT to_jsonb(t) FROM tasks t WHERE t.task_id = ANY($1) AND t.tenant_id = $2";
/// Reminders of the tasks touched by a batch (a new schedule supersedes all of them).
const LOAD_REMINDERS: &str =
    "SELECT to_jsonb(r) FROM task_reminders r WHERE r.task_id = ANY($1) AND r.tenant_id = $2";
const UPSERT_TASKS: &str = "INSERT INTO tasks SELECT * FROM jsonb_populate_recordset(NULL::tasks, $1) \
     ON CONFLICT (tenant_id, task_id) DO UPDATE SET owner = excluded.owner, \
       title = excluded.title, description = excluded.description, due_date = excluded.due_date, \
       priority = excluded.priority, tags = excluded.tags, \
       reminder_config = excluded.reminder_config, recurrence = excluded.recurrence, \
       parent_task_id = excluded.parent_task_id, occurrence = excluded.occurrence, \
       status = excluded.status, created_by = excluded.created_by, \
       created_at = excluded.created_at, updated_at = excluded.updated_at, \
       completed_at = excluded.completed_at, deleted_at = excluded.deleted_at, \
       version = excluded.version, last_position = excluded.last_position";
const UPSERT_REMINDERS: &str = "INSERT INTO task_reminders \
       SELECT * FROM jsonb_populate_recordset(NULL::task_reminders, $1) \
     ON CONFLICT (tenant_id, reminder_id) DO UPDATE SET task_id = excluded.task_id, \
       owner = excluded.owner, \
       trigger_time = excluded.trigger_time, delivery_method = excluded.delivery_method, \
       destination = excluded.destination, status = excluded.status, \
       is_current = excluded.is_current, retry_count = excluded.retry_count, \
       last_retry_at = excluded.last_retry_at, last_error = excluded.last_error, \
       sent_at = excluded.sent_at, scheduled_at = excluded.scheduled_at, \
       armed_by_event_id = excluded.armed_by_event_id, last_position = excluded.last_position";
/// Adds each owner's summed deltas; `last_position` is the highest contributing position.
const BUMP_SUMMARY: &str = "INSERT INTO task_user_summary AS s (tenant_id, owner, active_count, \
       completed_count, deleted_count, last_position) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
       $6::bigint[]) \
     ON CONFLICT (tenant_id, owner) DO UPDATE \
     SET active_count = s.active_count + excluded.active_count, \
         completed_count = s.completed_count + excluded.completed_count, \
         deleted_count = s.deleted_count + excluded.deleted_count, \
         last_position = GREATEST(s.last_position, excluded.last_position)";

/// A `tasks` row (column order of the table).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskRow {
    task_id: Uuid,
    tenant_id: String,
    owner: String,
    title: String,
    description: Option<String>,
    due_date: Option<DateTime<Utc>>,
    priority: Option<String>,
    tags: Vec<String>,
    reminder_config: Option<Value>,
    recurrence: Option<Value>,
    parent_task_id: Option<Uuid>,
    occurrence: i32,
    status: String,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    version: i64,
    last_position: i64,
}

/// A `task_reminders` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReminderRow {
    reminder_id: Uuid,
    task_id: Uuid,
    tenant_id: String,
    owner: String,
    trigger_time: DateTime<Utc>,
    delivery_method: String,
    destination: String,
    status: String,
    is_current: bool,
    retry_count: i16,
    last_retry_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    scheduled_at: DateTime<Utc>,
    armed_by_event_id: Uuid,
    last_position: i64,
}

/// Counter deltas of one owner over a batch.
#[derive(Debug, Clone, Copy, Default)]
struct SummaryDelta {
    active: i64,
    completed: i64,
    deleted: i64,
    last_position: i64,
}

/// The rows a batch works on, loaded once and written back once.
#[derive(Default)]
struct Fold {
    tasks: HashMap<Uuid, TaskRow>,
    reminders: HashMap<Uuid, ReminderRow>,
    dirty_tasks: HashSet<Uuid>,
    dirty_reminders: HashSet<Uuid>,
    summary: BTreeMap<(String, String), SummaryDelta>,
}

impl Fold {
    fn task(&mut self, id: Uuid) -> Result<&mut TaskRow, ProjectionError> {
        self.dirty_tasks.insert(id);
        self.tasks
            .get_mut(&id)
            .ok_or_else(|| ProjectionError::Inconsistent("task not found".into()))
    }

    fn reminder(&mut self, id: Uuid) -> Result<&mut ReminderRow, ProjectionError> {
        self.dirty_reminders.insert(id);
        self.reminders
            .get_mut(&id)
            .ok_or_else(|| ProjectionError::Inconsistent("reminder not found".into()))
    }

    fn bump(&mut self, tenant: &str, owner: &str, (a, c, d): (i64, i64, i64), pos: i64) {
        let s = self
            .summary
            .entry((tenant.to_owned(), owner.to_owned()))
            .or_default();
        s.active += a;
        s.completed += c;
        s.deleted += d;
        s.last_position = s.last_position.max(pos);
    }

    /// Advances the task row's version and position (and update time when the event has one).
    fn touch(
        &mut self,
        event: &RecordedEvent,
        task_id: Uuid,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), ProjectionError> {
        let t = self.task(task_id)?;
        t.version = version(event);
        t.last_position = event.global_position.0;
        if let Some(at) = at {
            t.updated_at = ts(at);
        }
        Ok(())
    }

    /// Changes a task's status and moves it between its owner's counters.
    fn status_change(
        &mut self,
        event: &RecordedEvent,
        task_id: Uuid,
        status: &str,
        at: DateTime<Utc>,
        delta: (i64, i64, i64),
    ) -> Result<(), ProjectionError> {
        let at = ts(at);
        let pos = event.global_position.0;
        let t = self.task(task_id)?;
        t.status = status.to_owned();
        t.updated_at = at;
        match status {
            "completed" => t.completed_at = Some(at),
            "deleted" => t.deleted_at = Some(at),
            _ => {
                t.completed_at = None;
                t.deleted_at = None;
            }
        }
        t.version = version(event);
        t.last_position = pos;
        let (tenant, owner) = (t.tenant_id.clone(), t.owner.clone());
        self.bump(&tenant, &owner, delta, pos);
        Ok(())
    }

    fn apply(&mut self, event: &RecordedEvent, e: &TaskEvent) -> Result<(), ProjectionError> {
        let pos = event.global_position.0;
        match e {
            TaskEvent::Created(c) => {
                let id = c.task_id.as_uuid();
                if self.tasks.contains_key(&id) {
                    return Err(ProjectionError::Inconsistent("task already exists".into()));
                }
                let created = ts(c.created_at);
                self.tasks.insert(
                    id,
                    TaskRow {
                        task_id: id,
                        tenant_id: event.tenant_id.clone(),
                        owner: c.owner.as_str().to_owned(),
                        title: c.title.as_str().to_owned(),
                        description: c.description.as_ref().map(|d| d.as_str().to_owned()),
                        due_date: c.due_date.map(ts),
                        priority: c.priority.map(|p| p.as_str().to_owned()),
                        tags: c
                            .tags
                            .as_slice()
                            .iter()
                            .map(|t| t.as_str().to_owned())
                            .collect(),
                        reminder_config: c.reminder_config.as_ref().map(to_value),
                        recurrence: c.recurrence.as_ref().map(to_value),
                        parent_task_id: c.parent_task_id.map(|p| p.as_uuid()),
                        occurrence: fit(event, "tasks.occurrence", c.occurrence)?,
                        status: "active".into(),
                        created_by: c.created_by.clone(),
                        created_at: created,
                        updated_at: created,
                        completed_at: None,
                        deleted_at: None,
                        version: version(event),
                        last_position: pos,
                    },
                );
                self.dirty_tasks.insert(id);
                self.bump(&event.tenant_id, c.owner.as_str(), (1, 0, 0), pos);
                Ok(())
            }
            TaskEvent::Updated(u) => {
                let t = self.task(u.task_id.as_uuid())?;
                if let Some(title) = &u.title {
                    t.title = title.as_str().to_owned();
                }
                patch(&u.description, &mut t.description, |d| {
                    d.as_str().to_owned()
                });
                patch(&u.due_date, &mut t.due_date, |d| ts(*d));
                patch(&u.priority, &mut t.priority, |p| p.as_str().to_owned());
                if let Some(tags) = &u.tags {
                    t.tags = tags
                        .as_slice()
                        .iter()
                        .map(|x| x.as_str().to_owned())
                        .collect();
                }
                patch(&u.reminder_config, &mut t.reminder_config, to_value);
                patch(&u.recurrence, &mut t.recurrence, to_value);
                t.updated_at = ts(u.updated_at);
                t.version = version(event);
                t.last_position = pos;
                Ok(())
            }
            TaskEvent::Completed(c) => self.status_change(
                event,
                c.task_id.as_uuid(),
                "completed",
                c.completed_at,
                (-1, 1, 0),
            ),
            TaskEvent::Deleted(d) => self.status_change(
                event,
                d.task_id.as_uuid(),
                "deleted",
                d.deleted_at,
                (-1, 0, 1),
            ),
            TaskEvent::Restored(r) => {
                let delta = match r.previous_status {
                    TaskStatus::Completed => (1, -1, 0),
                    TaskStatus::Deleted => (1, 0, -1),
                    TaskStatus::Active => (0, 0, 0),
                };
                self.status_change(event, r.task_id.as_uuid(), "active", r.restored_at, delta)
            }
            TaskEvent::ReminderScheduled(s) => {
                let task_id = s.task_id.as_uuid();
                let (tenant, owner) = {
                    let t = self.task(task_id)?;
                    (t.tenant_id.clone(), t.owner.clone())
                };
                let reminder_id = s.reminder_id.as_uuid();
                if self.reminders.contains_key(&reminder_id) {
                    return Err(ProjectionError::Inconsistent(
                        "reminder already exists".into(),
                    ));
                }
                // The domain keeps one reminder per task: a new one supersedes the others.
                for r in self.reminders.values_mut() {
                    if r.task_id == task_id && r.is_current {
                        r.is_current = false;
                        r.last_position = pos;
                        self.dirty_reminders.insert(r.reminder_id);
                    }
                }
                self.reminders.insert(
                    reminder_id,
                    ReminderRow {
                        reminder_id,
                        task_id,
                        tenant_id: tenant,
                        owner,
                        trigger_time: ts(s.trigger_time),
                        delivery_method: s.target.method().as_str().to_owned(),
                        destination: s.target.destination().to_owned(),
                        status: "pending".into(),
                        is_current: true,
                        retry_count: 0,
                        last_retry_at: None,
                        last_error: None,
                        sent_at: None,
                        scheduled_at: ts(s.scheduled_at),
                        armed_by_event_id: event.event_id,
                        last_position: pos,
                    },
                );
                self.dirty_reminders.insert(reminder_id);
                self.touch(event, task_id, Some(s.scheduled_at))
            }
            TaskEvent::ReminderSent(s) => {
                let r = self.reminder(s.reminder_id.as_uuid())?;
                r.status = "sent".into();
                r.sent_at = Some(ts(s.sent_at));
                r.last_position = pos;
                self.touch(event, s.task_id.as_uuid(), None)
            }
            TaskEvent::ReminderRetryScheduled(f) | TaskEvent::ReminderFailed(f) => {
                let failed = matches!(e, TaskEvent::ReminderFailed(_));
                let r = self.reminder(f.reminder_id.as_uuid())?;
                r.retry_count = i16::from(f.retry_count);
                r.last_retry_at = Some(ts(f.failed_at));
                r.last_error = Some(f.error.as_str().to_owned());
                if failed {
                    r.status = "failed".into();
                } else {
                    r.armed_by_event_id = event.event_id;
                }
                r.last_position = pos;
                self.touch(event, f.task_id.as_uuid(), None)
            }
            TaskEvent::ReminderRetried(rt) => {
                let r = self.reminder(rt.reminder_id.as_uuid())?;
                r.status = "pending".into();
                r.retry_count = 0;
                r.armed_by_event_id = event.event_id;
                r.last_position = pos;
                self.touch(event, rt.task_id.as_uuid(), None)
            }
        }
    }

    async fn write(self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        let mut tasks: Vec<&TaskRow> = self
            .dirty_tasks
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .collect();
        // A fixed order keeps concurrent writers' row locks in one order (no deadlocks).
        tasks.sort_by_key(|t| t.task_id);
        write_rows(conn, UPSERT_TASKS, &tasks).await?;
        let mut reminders: Vec<&ReminderRow> = self
            .dirty_reminders
            .iter()
            .filter_map(|id| self.reminders.get(id))
            .collect();
        reminders.sort_by_key(|r| r.reminder_id);
        write_rows(conn, UPSERT_REMINDERS, &reminders).await?;
        if !self.summary.is_empty() {
            let n = self.summary.len();
            let (mut tenants, mut owners) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut active, mut completed) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut deleted, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for ((tenant, owner), d) in &self.summary {
                tenants.push(tenant.as_str());
                owners.push(owner.as_str());
                active.push(d.active);
                completed.push(d.completed);
                deleted.push(d.deleted);
                positions.push(d.last_position);
            }
            sqlx::query(BUMP_SUMMARY)
                .bind(tenants)
                .bind(owners)
                .bind(active)
                .bind(completed)
                .bind(deleted)
                .bind(positions)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The tasks projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct TasksProjection;

const TABLES: &[&str] = &["tasks", "task_reminders", "task_user_summary"];

#[async_trait]
impl Projection for TasksProjection {
    fn name(&self) -> &'static str {
        "tasks"
    }

    fn stream_types(&self) -> Option<&'static [&'static str]> {
        Some(&["task"])
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

impl TasksProjection {
    /// Applies one tenant's events of a batch (task and reminder ids are unique per tenant).
    async fn apply_tenant(
        conn: &mut PgConnection,
        tenant: &str,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let decoded: Vec<TaskEvent> = events.iter().map(|e| decode(e)).collect::<Result<_, _>>()?;
        let mut task_ids: Vec<Uuid> = Vec::new();
        let mut with_reminders: Vec<Uuid> = Vec::new();
        for e in &decoded {
            let (id, reminders) = match e {
                TaskEvent::Created(c) => (c.task_id, false),
                TaskEvent::Updated(u) => (u.task_id, false),
                TaskEvent::Completed(c) => (c.task_id, false),
                TaskEvent::Deleted(d) => (d.task_id, false),
                TaskEvent::Restored(r) => (r.task_id, false),
                TaskEvent::ReminderScheduled(s) => (s.task_id, true),
                TaskEvent::ReminderSent(s) => (s.task_id, true),
                TaskEvent::ReminderRetryScheduled(f) | TaskEvent::ReminderFailed(f) => {
                    (f.task_id, true)
                }
                TaskEvent::ReminderRetried(r) => (r.task_id, true),
            };
            task_ids.push(id.as_uuid());
            if reminders {
                with_reminders.push(id.as_uuid());
            }
        }
        task_ids.sort_unstable();
        task_ids.dedup();
        with_reminders.sort_unstable();
        with_reminders.dedup();
        let mut fold = Fold::default();
        for row in load_rows::<_, TaskRow>(conn, LOAD_TASKS, tenant, task_ids).await? {
            fold.tasks.insert(row.task_id, row);
        }
        for row in load_rows::<_, ReminderRow>(conn, LOAD_REMINDERS, tenant, with_reminders).await?
        {
            fold.reminders.insert(row.reminder_id, row);
        }
        for (event, e) in events.iter().zip(&decoded) {
            fold.apply(event, e)?;
        }
        fold.write(conn).await
    }
}

/// Applies a partial update: `Keep` leaves the field, `Clear` empties it.
fn patch<T, V>(p: &Patch<T>, field: &mut Option<V>, f: impl Fn(&T) -> V) {
    match p {
        Patch::Keep => {}
        Patch::Set(v) => *field = Some(f(v)),
        Patch::Clear => *field = None,
    }
}
