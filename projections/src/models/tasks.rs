//! `tasks`: tasks and reminders (seed 003) and the per-owner task summary.
//!
//! Overdue is time-dependent ("active with a due date before now"), so it is never stored: the
//! views `overdue_tasks` and `task_user_summary_view` derive it at query time, served by the
//! partial index `tasks_open_due_idx`. Everything stored here is a pure function of the events,
//! which keeps rebuilds equal to incremental builds.

use aggregates::task::{TaskEvent, TaskStatus};
use aggregates::values::Patch;
use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{decode, expect_row, json, version};
use crate::projection::{Projection, ProjectionError};

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

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let e: TaskEvent = decode(event)?;
        let pos = event.global_position.0;
        let ver = version(event);
        match &e {
            TaskEvent::Created(c) => {
                let tags: Vec<&str> = c.tags.as_slice().iter().map(|t| t.as_str()).collect();
                sqlx::query(
                    "INSERT INTO tasks (task_id, tenant_id, owner, title, description, due_date, \
                       priority, tags, reminder_config, recurrence, parent_task_id, occurrence, \
                       status, created_by, created_at, updated_at, version, last_position) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'active', $13, \
                       $14, $14, $15, $16)",
                )
                .bind(c.task_id.as_uuid())
                .bind(&event.tenant_id)
                .bind(c.owner.as_str())
                .bind(c.title.as_str())
                .bind(c.description.as_ref().map(|d| d.as_str()))
                .bind(c.due_date)
                .bind(c.priority.map(|p| p.as_str()))
                .bind(&tags)
                .bind(c.reminder_config.as_ref().map(json))
                .bind(c.recurrence.as_ref().map(json))
                .bind(c.parent_task_id.map(|p| p.as_uuid()))
                .bind(i32::try_from(c.occurrence).unwrap_or(i32::MAX))
                .bind(&c.created_by)
                .bind(c.created_at)
                .bind(ver)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                bump_summary(conn, &event.tenant_id, c.owner.as_str(), (1, 0, 0), pos).await
            }
            TaskEvent::Updated(u) => {
                let (desc_set, desc) = patch(&u.description, |d| d.as_str().to_owned());
                let (due_set, due) = patch(&u.due_date, |d| *d);
                let (prio_set, prio) = patch(&u.priority, |p| p.as_str().to_owned());
                let (rc_set, rc) = patch(&u.reminder_config, json);
                let (rec_set, rec) = patch(&u.recurrence, json);
                let tags: Option<Vec<String>> = u
                    .tags
                    .as_ref()
                    .map(|t| t.as_slice().iter().map(|x| x.as_str().to_owned()).collect());
                let r = sqlx::query(
                    "UPDATE tasks SET title = COALESCE($2, title), \
                       description = CASE WHEN $3 THEN $4 ELSE description END, \
                       due_date = CASE WHEN $5 THEN $6 ELSE due_date END, \
                       priority = CASE WHEN $7 THEN $8 ELSE priority END, \
                       tags = COALESCE($9, tags), \
                       reminder_config = CASE WHEN $10 THEN $11 ELSE reminder_config END, \
                       recurrence = CASE WHEN $12 THEN $13 ELSE recurrence END, \
                       updated_at = $14, version = $15, last_position = $16 \
                     WHERE task_id = $1",
                )
                .bind(u.task_id.as_uuid())
                .bind(u.title.as_ref().map(|t| t.as_str()))
                .bind(desc_set)
                .bind(desc)
                .bind(due_set)
                .bind(due)
                .bind(prio_set)
                .bind(prio)
                .bind(tags)
                .bind(rc_set)
                .bind(rc)
                .bind(rec_set)
                .bind(rec)
                .bind(u.updated_at)
                .bind(ver)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "task")
            }
            TaskEvent::Completed(c) => {
                status_change(
                    conn,
                    event,
                    c.task_id.as_uuid(),
                    "completed",
                    c.completed_at,
                    (-1, 1, 0),
                )
                .await
            }
            TaskEvent::Deleted(d) => {
                status_change(
                    conn,
                    event,
                    d.task_id.as_uuid(),
                    "deleted",
                    d.deleted_at,
                    (-1, 0, 1),
                )
                .await
            }
            TaskEvent::Restored(r) => {
                let delta = match r.previous_status {
                    TaskStatus::Completed => (1, -1, 0),
                    TaskStatus::Deleted => (1, 0, -1),
                    TaskStatus::Active => (0, 0, 0),
                };
                status_change(
                    conn,
                    event,
                    r.task_id.as_uuid(),
                    "active",
                    r.restored_at,
                    delta,
                )
                .await
            }
            TaskEvent::ReminderScheduled(s) => {
                // The domain keeps one reminder per task: a new one supersedes the others.
                sqlx::query(
                    "UPDATE task_reminders SET is_current = false, last_position = $2 \
                     WHERE task_id = $1 AND is_current",
                )
                .bind(s.task_id.as_uuid())
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                let r = sqlx::query(
                    "INSERT INTO task_reminders (reminder_id, task_id, tenant_id, owner, \
                       trigger_time, delivery_method, destination, status, is_current, \
                       retry_count, scheduled_at, armed_by_event_id, last_position) \
                     SELECT $1, t.task_id, t.tenant_id, t.owner, $3, $4, $5, 'pending', true, 0, \
                       $6, $7, $8 FROM tasks t WHERE t.task_id = $2",
                )
                .bind(s.reminder_id.as_uuid())
                .bind(s.task_id.as_uuid())
                .bind(s.trigger_time)
                .bind(s.target.method().as_str())
                .bind(s.target.destination())
                .bind(s.scheduled_at)
                .bind(event.event_id)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "task")?;
                touch(conn, event, s.task_id.as_uuid(), Some(s.scheduled_at)).await
            }
            TaskEvent::ReminderSent(s) => {
                let r = sqlx::query(
                    "UPDATE task_reminders SET status = 'sent', sent_at = $2, last_position = $3 \
                     WHERE reminder_id = $1",
                )
                .bind(s.reminder_id.as_uuid())
                .bind(s.sent_at)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "reminder")?;
                touch(conn, event, s.task_id.as_uuid(), None).await
            }
            TaskEvent::ReminderRetryScheduled(f) | TaskEvent::ReminderFailed(f) => {
                let failed = matches!(e, TaskEvent::ReminderFailed(_));
                let r = sqlx::query(
                    "UPDATE task_reminders SET retry_count = $2, last_retry_at = $3, \
                       last_error = $4, status = CASE WHEN $5 THEN 'failed' ELSE status END, \
                       armed_by_event_id = CASE WHEN $5 THEN armed_by_event_id ELSE $6 END, \
                       last_position = $7 \
                     WHERE reminder_id = $1",
                )
                .bind(f.reminder_id.as_uuid())
                .bind(i16::from(f.retry_count))
                .bind(f.failed_at)
                .bind(f.error.as_str())
                .bind(failed)
                .bind(event.event_id)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(r, "reminder")?;
                touch(conn, event, f.task_id.as_uuid(), None).await
            }
            TaskEvent::ReminderRetried(r) => {
                let res = sqlx::query(
                    "UPDATE task_reminders SET status = 'pending', retry_count = 0, \
                       armed_by_event_id = $2, last_position = $3 WHERE reminder_id = $1",
                )
                .bind(r.reminder_id.as_uuid())
                .bind(event.event_id)
                .bind(pos)
                .execute(&mut *conn)
                .await?;
                expect_row(res, "reminder")?;
                touch(conn, event, r.task_id.as_uuid(), None).await
            }
        }
    }
}

/// `(changed, new value)` of a patch: `Keep` leaves the column, `Clear` writes NULL.
fn patch<T, V>(p: &Patch<T>, f: impl Fn(&T) -> V) -> (bool, Option<V>) {
    match p {
        Patch::Keep => (false, None),
        Patch::Set(v) => (true, Some(f(v))),
        Patch::Clear => (true, None),
    }
}

/// Changes a task's status and moves it between the owner's counters in one statement.
async fn status_change(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    task_id: Uuid,
    status: &str,
    at: chrono::DateTime<chrono::Utc>,
    (d_active, d_completed, d_deleted): (i64, i64, i64),
) -> Result<(), ProjectionError> {
    let r = sqlx::query(
        "WITH t AS ( \
           UPDATE tasks SET status = $2, updated_at = $3, \
             completed_at = CASE $2 WHEN 'completed' THEN $3 WHEN 'active' THEN NULL ELSE completed_at END, \
             deleted_at = CASE $2 WHEN 'deleted' THEN $3 WHEN 'active' THEN NULL ELSE deleted_at END, \
             version = $4, last_position = $5 \
           WHERE task_id = $1 RETURNING tenant_id, owner) \
         INSERT INTO task_user_summary AS s (tenant_id, owner, active_count, completed_count, \
           deleted_count, last_position) \
         SELECT tenant_id, owner, $6, $7, $8, $5 FROM t \
         ON CONFLICT (tenant_id, owner) DO UPDATE \
         SET active_count = s.active_count + excluded.active_count, \
             completed_count = s.completed_count + excluded.completed_count, \
             deleted_count = s.deleted_count + excluded.deleted_count, \
             last_position = GREATEST(s.last_position, excluded.last_position)",
    )
    .bind(task_id)
    .bind(status)
    .bind(at)
    .bind(version(event))
    .bind(event.global_position.0)
    .bind(d_active)
    .bind(d_completed)
    .bind(d_deleted)
    .execute(conn)
    .await?;
    expect_row(r, "task")
}

async fn bump_summary(
    conn: &mut PgConnection,
    tenant: &str,
    owner: &str,
    (d_active, d_completed, d_deleted): (i64, i64, i64),
    pos: i64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO task_user_summary AS s (tenant_id, owner, active_count, completed_count, \
           deleted_count, last_position) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (tenant_id, owner) DO UPDATE \
         SET active_count = s.active_count + excluded.active_count, \
             completed_count = s.completed_count + excluded.completed_count, \
             deleted_count = s.deleted_count + excluded.deleted_count, \
             last_position = GREATEST(s.last_position, excluded.last_position)",
    )
    .bind(tenant)
    .bind(owner)
    .bind(d_active)
    .bind(d_completed)
    .bind(d_deleted)
    .bind(pos)
    .execute(conn)
    .await?;
    Ok(())
}

/// Advances the task row's version and position (and update time when the event has one).
async fn touch(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    task_id: Uuid,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), ProjectionError> {
    let r = sqlx::query(
        "UPDATE tasks SET version = $2, last_position = $3, updated_at = COALESCE($4, updated_at) \
         WHERE task_id = $1",
    )
    .bind(task_id)
    .bind(version(event))
    .bind(event.global_position.0)
    .bind(at)
    .execute(conn)
    .await?;
    expect_row(r, "task")
}
