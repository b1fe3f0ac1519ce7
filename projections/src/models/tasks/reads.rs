//! Reads of the `tasks` model: its row types and SELECTs (served by query-api).

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A row of `tasks` as the SELECTs of this module read it (overdue derived, JSONB as text).
#[derive(Debug, sqlx::FromRow)]
pub struct TaskRow {
    /// The task's id.
    pub task_id: Uuid,
    /// Its owner.
    pub owner: String,
    /// Its title.
    pub title: String,
    /// Its description, if any.
    pub description: Option<String>,
    /// When it is due, if ever.
    pub due_date: Option<DateTime<Utc>>,
    /// Its priority, if any.
    pub priority: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its reminder configuration, JSON text.
    pub reminder_config: Option<String>,
    /// Its recurrence, JSON text.
    pub recurrence: Option<String>,
    /// The task it recurs from, if any.
    pub parent_task_id: Option<Uuid>,
    /// Its occurrence number.
    pub occurrence: i32,
    /// Its status.
    pub status: String,
    /// Active with a due date before now (computed by the statement).
    pub overdue: bool,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was completed, if it was.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it was deleted, if it was.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Its stream version.
    pub version: i64,
    /// The store position of its last event.
    pub last_position: i64,
}

/// The columns of a [`TaskRow`]. Overdue is time-dependent, so it is computed by the statement
/// (like the `overdue_tasks` view).
#[doc(hidden)]
#[macro_export]
macro_rules! __task_columns {
    () => {
        "task_id, owner, title, description, due_date, priority, tags, \
         reminder_config::text AS reminder_config, recurrence::text AS recurrence, \
         parent_task_id, occurrence, status, \
         (status = 'active' AND due_date IS NOT NULL AND due_date < now()) AS overdue, \
         created_by, created_at, updated_at, completed_at, deleted_at, version, last_position"
    };
}
/// The columns of a [`TaskRow`], for `concat!`.
pub use __task_columns as task_columns;

/// A row of `task_reminders` as the SELECTs of this module read it.
#[derive(Debug, sqlx::FromRow)]
pub struct ReminderRow {
    /// The reminder's id.
    pub reminder_id: Uuid,
    /// Its task.
    pub task_id: Uuid,
    /// The task's owner.
    pub owner: String,
    /// When it fires.
    pub trigger_time: DateTime<Utc>,
    /// How it is delivered.
    pub delivery_method: String,
    /// Where it is delivered.
    pub destination: String,
    /// Its status.
    pub status: String,
    /// Whether it belongs to the task's current schedule.
    pub is_current: bool,
    /// Delivery attempts that failed.
    pub retry_count: i16,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
    /// When it was sent, if it was.
    pub sent_at: Option<DateTime<Utc>>,
    /// When it was scheduled.
    pub scheduled_at: DateTime<Utc>,
}

macro_rules! reminder_columns {
    () => {
        "reminder_id, task_id, owner, trigger_time, delivery_method, destination, status, \
         is_current, retry_count, last_error, sent_at, scheduled_at"
    };
}

/// A task with the position it reflects, read together ([`get_task_at!`],
/// [`get_task_at_walled!`]).
#[derive(Debug, sqlx::FromRow)]
pub struct TaskAt {
    /// The position the row reflects.
    pub position: i64,
    /// The task.
    #[sqlx(flatten)]
    pub task: TaskRow,
}

/// GetTask's one statement behind the second wall, around `$pos`, a statement reading the
/// position from `$1` (checkpoint) and `$2` (types) with the service's own privileges: the row
/// (`$3` tenant, `$4` task) through `annals_read_task`, which raises the wall before it plans
/// its query (migration `20261202000300`). Reads a [`TaskAt`].
#[doc(hidden)]
#[macro_export]
macro_rules! __get_task_at_walled {
    ($pos:expr) => {
        concat!(
            "WITH pos AS MATERIALIZED (",
            $pos,
            ") SELECT coalesce(pos.p, 0) AS position, ",
            $crate::__task_columns!(),
            " FROM pos, LATERAL annals_read_task($3, $4) AS t"
        )
    };
}
/// GetTask's one statement behind the second wall (see the macro's docs).
pub use __get_task_at_walled as get_task_at_walled;

/// GetTask's one statement without the second wall, around `$pos` as for
/// [`get_task_at_walled!`]. Reads a [`TaskAt`].
#[doc(hidden)]
#[macro_export]
macro_rules! __get_task_at {
    ($pos:expr) => {
        concat!(
            "WITH pos AS MATERIALIZED (",
            $pos,
            ") SELECT coalesce(pos.p, 0) AS position, ",
            $crate::__task_columns!(),
            " FROM pos, tasks WHERE tenant_id = $3 AND task_id = $4"
        )
    };
}
/// GetTask's one statement without the second wall (see the macro's docs).
pub use __get_task_at as get_task_at;

/// A task's reminders behind the second wall, without a transaction: `$1` tenant, `$2` task,
/// `$3` limit.
pub const TASK_REMINDERS_WALLED: &str = concat!(
    "SELECT ",
    reminder_columns!(),
    " FROM annals_read_task_reminders($1, $2, $3) \
      ORDER BY scheduled_at DESC, reminder_id DESC"
);

/// A task: `$1` tenant, `$2` task.
pub const GET_TASK: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE tenant_id = $1 AND task_id = $2"
);

/// A task's reminders, newest first: `$1` tenant, `$2` task, `$3` limit.
pub const TASK_REMINDERS: &str = concat!(
    "SELECT ",
    reminder_columns!(),
    " FROM task_reminders WHERE tenant_id = $1 AND task_id = $2 \
      ORDER BY scheduled_at DESC, reminder_id DESC LIMIT $3"
);

/// A keyset page of a tenant's tasks, newest first: `$1` tenant, `$2` owner, `$3` status,
/// `$4` tag, `$5`/`$6` due from/to, `$7` overdue only, `$8`/`$9` the `(created_at, task_id)`
/// of the last row of the previous page, `$10` limit.
pub const LIST_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks \
      WHERE tenant_id = $1 \
        AND ($2::text IS NULL OR owner = $2) \
        AND ($3::text IS NULL OR status = $3) \
        AND ($4::text IS NULL OR tags @> ARRAY[$4::text]) \
        AND ($5::timestamptz IS NULL OR due_date >= $5) \
        AND ($6::timestamptz IS NULL OR due_date < $6) \
        AND (NOT $7 OR (status = 'active' AND due_date < now())) \
        AND ($8::timestamptz IS NULL OR (created_at, task_id) < ($8, $9)) \
      ORDER BY created_at DESC, task_id DESC LIMIT $10"
);

/// A keyset page of a tenant's current pending reminders due by `$2`, soonest first: `$1`
/// tenant, `$3` owner, `$4`/`$5` the `(trigger_time, reminder_id)` of the last row of the
/// previous page, `$6` limit.
pub const LIST_DUE_REMINDERS: &str = concat!(
    "SELECT ",
    reminder_columns!(),
    " FROM task_reminders \
      WHERE tenant_id = $1 AND status = 'pending' AND is_current \
        AND trigger_time <= $2 \
        AND ($3::text IS NULL OR owner = $3) \
        AND ($4::timestamptz IS NULL OR (trigger_time, reminder_id) > ($4, $5)) \
      ORDER BY trigger_time, reminder_id LIMIT $6"
);

/// A row of the view `task_user_summary_view` (over `task_user_summary`, overdue derived) as
/// [`LIST_TASK_SUMMARIES`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct TaskSummaryRow {
    /// The owner.
    pub owner: String,
    /// Active tasks.
    pub active_count: i64,
    /// Completed tasks.
    pub completed_count: i64,
    /// Deleted tasks.
    pub deleted_count: i64,
    /// Active tasks past their due date.
    pub overdue_count: i64,
    /// The completion rate, decimal text, if defined.
    pub completion_rate: Option<String>,
}

/// A keyset page of a tenant's per-owner task summaries, by owner: `$1` tenant, `$2` owner,
/// `$3` the owner of the last row of the previous page, `$4` limit.
pub const LIST_TASK_SUMMARIES: &str = "SELECT owner, active_count, completed_count, deleted_count, overdue_count, \
                                completion_rate::text AS completion_rate \
                           FROM task_user_summary_view \
                          WHERE tenant_id = $1 \
                            AND ($2::text IS NULL OR owner = $2) \
                            AND ($3::text IS NULL OR owner > $3) \
                          ORDER BY owner LIMIT $4";
