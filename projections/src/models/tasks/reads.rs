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

/// A task with the position it reflects, read together: a row of a ListTasks page read by
/// [`list_tasks_at!`] or [`list_tasks_at_walled!`].
#[derive(Debug, sqlx::FromRow)]
pub struct TaskAt {
    /// The position the row reflects.
    pub position: i64,
    /// The task.
    #[sqlx(flatten)]
    pub task: TaskRow,
}

/// A task's reminders as parallel arrays, newest first (the same order in every array), as
/// [`get_task_with_reminders!`] and [`get_task_with_reminders_walled!`] read them: one row
/// carries the task and all its reminders.
#[derive(Debug, sqlx::FromRow)]
pub struct ReminderArrays {
    /// Reminder ids.
    pub reminder_ids: Vec<Uuid>,
    /// Their owners.
    pub reminder_owners: Vec<String>,
    /// When they fire.
    pub reminder_trigger_times: Vec<DateTime<Utc>>,
    /// How they are delivered.
    pub reminder_delivery_methods: Vec<String>,
    /// Where they are delivered.
    pub reminder_destinations: Vec<String>,
    /// Their statuses.
    pub reminder_statuses: Vec<String>,
    /// Whether each belongs to the task's current schedule.
    pub reminder_is_current: Vec<bool>,
    /// Failed delivery attempts of each.
    pub reminder_retry_counts: Vec<i16>,
    /// The last delivery error of each, if any.
    pub reminder_last_errors: Vec<Option<String>>,
    /// When each was sent, if it was.
    pub reminder_sent_ats: Vec<Option<DateTime<Utc>>>,
    /// When each was scheduled.
    pub reminder_scheduled_ats: Vec<DateTime<Utc>>,
}

impl ReminderArrays {
    /// The reminders of task `task_id` as rows, in the arrays' order. Arrays of unequal
    /// lengths (which one statement's aggregates over the same rows cannot produce) stop at the
    /// shortest.
    pub fn into_rows(self, task_id: Uuid) -> impl Iterator<Item = ReminderRow> {
        let Self {
            reminder_ids,
            reminder_owners,
            reminder_trigger_times,
            reminder_delivery_methods,
            reminder_destinations,
            reminder_statuses,
            reminder_is_current,
            reminder_retry_counts,
            reminder_last_errors,
            reminder_sent_ats,
            reminder_scheduled_ats,
        } = self;
        let mut owners = reminder_owners.into_iter();
        let mut triggers = reminder_trigger_times.into_iter();
        let mut methods = reminder_delivery_methods.into_iter();
        let mut destinations = reminder_destinations.into_iter();
        let mut statuses = reminder_statuses.into_iter();
        let mut current = reminder_is_current.into_iter();
        let mut retries = reminder_retry_counts.into_iter();
        let mut errors = reminder_last_errors.into_iter();
        let mut sent = reminder_sent_ats.into_iter();
        let mut scheduled = reminder_scheduled_ats.into_iter();
        reminder_ids.into_iter().map_while(move |reminder_id| {
            Some(ReminderRow {
                reminder_id,
                task_id,
                owner: owners.next()?,
                trigger_time: triggers.next()?,
                delivery_method: methods.next()?,
                destination: destinations.next()?,
                status: statuses.next()?,
                is_current: current.next()?,
                retry_count: retries.next()?,
                last_error: errors.next()?,
                sent_at: sent.next()?,
                scheduled_at: scheduled.next()?,
            })
        })
    }
}

/// A task with the position it reflects and its reminders, read in one statement
/// ([`get_task_with_reminders!`], [`get_task_with_reminders_walled!`]).
#[derive(Debug, sqlx::FromRow)]
pub struct TaskWithReminders {
    /// The position the row reflects.
    pub position: i64,
    /// The task.
    #[sqlx(flatten)]
    pub task: TaskRow,
    /// Its newest reminders.
    #[sqlx(flatten)]
    pub reminders: ReminderArrays,
}

/// The reminder array columns of a [`ReminderArrays`].
#[doc(hidden)]
#[macro_export]
macro_rules! __reminder_array_columns {
    () => {
        "reminder_ids, reminder_owners, reminder_trigger_times, reminder_delivery_methods, \
         reminder_destinations, reminder_statuses, reminder_is_current, reminder_retry_counts, \
         reminder_last_errors, reminder_sent_ats, reminder_scheduled_ats"
    };
}

/// GetTask in one statement behind the second wall, around `$pos`, a statement reading the
/// position from `$1` (checkpoint) and `$2` (types) with the service's own privileges: the task
/// (`$3` tenant, `$4` task) and its newest `$5` reminders through
/// `annals_read_task_with_reminders`, which raises the wall before it plans its query
/// (migration `20261202400200`). No row when the task is not the tenant's. Reads a
/// [`TaskWithReminders`].
#[doc(hidden)]
#[macro_export]
macro_rules! __get_task_with_reminders_walled {
    ($pos:expr) => {
        concat!(
            "WITH pos AS MATERIALIZED (",
            $pos,
            ") SELECT coalesce(pos.p, 0) AS position, ",
            $crate::__task_columns!(),
            ", ",
            $crate::__reminder_array_columns!(),
            " FROM pos, LATERAL annals_read_task_with_reminders($3, $4, $5) AS t"
        )
    };
}
/// GetTask in one statement behind the second wall (see the macro's docs).
pub use __get_task_with_reminders_walled as get_task_with_reminders_walled;

/// GetTask in one statement without the second wall, around `$pos` as for
/// [`get_task_with_reminders_walled!`] (the same query as `annals_read_task_with_reminders`,
/// inline). Reads a [`TaskWithReminders`].
#[doc(hidden)]
#[macro_export]
macro_rules! __get_task_with_reminders {
    ($pos:expr) => {
        concat!(
            "WITH pos AS MATERIALIZED (",
            $pos,
            ") SELECT coalesce(pos.p, 0) AS position, ",
            $crate::__task_columns!(),
            ", ",
            $crate::__reminder_array_columns!(),
            " FROM pos, tasks CROSS JOIN LATERAL ( \
               SELECT coalesce(array_agg(x.reminder_id ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_ids, \
                      coalesce(array_agg(x.owner ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_owners, \
                      coalesce(array_agg(x.trigger_time ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_trigger_times, \
                      coalesce(array_agg(x.delivery_method ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_delivery_methods, \
                      coalesce(array_agg(x.destination ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_destinations, \
                      coalesce(array_agg(x.status ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_statuses, \
                      coalesce(array_agg(x.is_current ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_is_current, \
                      coalesce(array_agg(x.retry_count ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_retry_counts, \
                      coalesce(array_agg(x.last_error ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_last_errors, \
                      coalesce(array_agg(x.sent_at ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_sent_ats, \
                      coalesce(array_agg(x.scheduled_at ORDER BY x.scheduled_at DESC, x.reminder_id DESC), '{}') AS reminder_scheduled_ats \
                 FROM (SELECT * FROM task_reminders rr WHERE rr.tenant_id = $3 AND rr.task_id = $4 \
                        ORDER BY rr.scheduled_at DESC, rr.reminder_id DESC LIMIT $5) x) r \
              WHERE tasks.tenant_id = $3 AND tasks.task_id = $4"
        )
    };
}
/// GetTask in one statement without the second wall (see the macro's docs).
pub use __get_task_with_reminders as get_task_with_reminders;

/// The filters, order and limit of a ListTasks page over `tasks`, its parameters named by the
/// caller in this order: tenant, owner, status, tag, due from, due to, overdue only, the
/// `(created_at, task_id)` of the last row of the previous page, limit. Also the query of
/// `annals_list_tasks` (migration `20261202400200`), which must say the same.
#[doc(hidden)]
#[macro_export]
macro_rules! __list_tasks_page {
    ($tenant:literal, $owner:literal, $status:literal, $tag:literal, $from:literal, $to:literal,
     $overdue:literal, $after_at:literal, $after_id:literal, $limit:literal) => {
        concat!(
            " WHERE tenant_id = ",
            $tenant,
            " AND (",
            $owner,
            "::text IS NULL OR owner = ",
            $owner,
            ")",
            " AND (",
            $status,
            "::text IS NULL OR status = ",
            $status,
            ")",
            " AND (",
            $tag,
            "::text IS NULL OR tags @> ARRAY[",
            $tag,
            "::text])",
            " AND (",
            $from,
            "::timestamptz IS NULL OR due_date >= ",
            $from,
            ")",
            " AND (",
            $to,
            "::timestamptz IS NULL OR due_date < ",
            $to,
            ")",
            " AND (NOT ",
            $overdue,
            " OR (status = 'active' AND due_date < now()))",
            " AND (",
            $after_at,
            "::timestamptz IS NULL OR (created_at, task_id) < (",
            $after_at,
            ", ",
            $after_id,
            "))",
            " ORDER BY created_at DESC, task_id DESC LIMIT ",
            $limit
        )
    };
}

/// A ListTasks page in one statement behind the second wall, around `$pos` as for
/// [`get_task_with_reminders_walled!`]: `$3` tenant, `$4` owner, `$5` status, `$6` tag,
/// `$7`/`$8` due from/to, `$9` overdue only, `$10`/`$11` the `(created_at, task_id)` of the
/// last row of the previous page, `$12` limit, through `annals_list_tasks` (migration
/// `20261202400200`). Every row carries the position; an empty page has no row (and so no
/// position). Reads [`TaskAt`]s.
#[doc(hidden)]
#[macro_export]
macro_rules! __list_tasks_at_walled {
    ($pos:expr) => {
        concat!(
            "WITH pos AS MATERIALIZED (",
            $pos,
            ") SELECT coalesce(pos.p, 0) AS position, ",
            $crate::__task_columns!(),
            " FROM pos, LATERAL annals_list_tasks($3, $4, $5, $6, $7, $8, $9, $10, $11, $12) AS t \
              ORDER BY created_at DESC, task_id DESC"
        )
    };
}
/// A ListTasks page in one statement behind the second wall (see the macro's docs).
pub use __list_tasks_at_walled as list_tasks_at_walled;

/// A ListTasks page in one statement without the second wall, around `$pos` and with the
/// parameters of [`list_tasks_at_walled!`]. Reads [`TaskAt`]s.
#[doc(hidden)]
#[macro_export]
macro_rules! __list_tasks_at {
    ($pos:expr) => {
        concat!(
            "WITH pos AS MATERIALIZED (",
            $pos,
            ") SELECT coalesce(pos.p, 0) AS position, ",
            $crate::__task_columns!(),
            " FROM pos, tasks",
            $crate::__list_tasks_page!(
                "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12"
            )
        )
    };
}
/// A ListTasks page in one statement without the second wall (see the macro's docs).
pub use __list_tasks_at as list_tasks_at;

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
    " FROM tasks",
    __list_tasks_page!("$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10")
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
