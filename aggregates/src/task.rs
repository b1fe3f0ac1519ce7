//! The task aggregate (seed 003): a user's todo item with an optional reminder and recurrence.
//!
//! Status machine: `active -> completed`, `active -> deleted` (soft), `completed | deleted ->
//! active` (restore). Reminder machine: `pending -> sent`; a delivery failure while pending
//! schedules a retry (still `pending`, `retry_count + 1`) up to [`MAX_REMINDER_RETRIES`], the
//! next failure makes it `failed`; `failed -> pending` by a manual retry.
//!
//! | command | allowed when | events |
//! |---|---|---|
//! | [`TaskCommand::CreateTask`] | task does not exist; due date after `ctx.now` | `task.created` |
//! | [`TaskCommand::UpdateTask`] | `active`; a new due date after `ctx.now` | `task.updated` with the fields that change; none when nothing changes |
//! | [`TaskCommand::CompleteTask`] | `active` | `task.completed` |
//! | [`TaskCommand::DeleteTask`] | `active` | `task.deleted` |
//! | [`TaskCommand::RestoreTask`] | `completed` or `deleted` | `task.restored` |
//! | [`TaskCommand::ScheduleReminder`] | `active`; trigger after `ctx.now`; new reminder id | `task.reminder_scheduled` |
//! | [`TaskCommand::RecordReminderSent`] | reminder `pending` (any task status: delivery is a fact) | `task.reminder_sent` |
//! | [`TaskCommand::RecordReminderFailure`] | reminder `pending` | `task.reminder_retry_scheduled` or, after 3 retries, `task.reminder_failed` |
//! | [`TaskCommand::RetryReminder`] | task `active`, reminder `failed` | `task.reminder_retried` |
//!
//! | event type | schema version |
//! |---|---|
//! | `task.created` | 2 (v1 had no `tags`; upcast adds `tags: []`) |
//! | `task.updated` | 1 |
//! | `task.completed` | 1 |
//! | `task.deleted` | 1 |
//! | `task.restored` | 1 |
//! | `task.reminder_scheduled` | 1 |
//! | `task.reminder_sent` | 1 |
//! | `task.reminder_retry_scheduled` | 1 |
//! | `task.reminder_failed` | 1 |
//! | `task.reminder_retried` | 1 |
//!
//! Completing a recurring task carries a [`RecurringSnapshot`] in `task.completed`, so that the
//! process manager in [`crate::recurring`] can build the next occurrence from that one event.

use chrono::{DateTime, Days, Months, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DomainError;
use crate::event::domain_events;
use crate::upcast::UpcasterRegistry;
use crate::values::{
    LeadTimeMinutes, Patch, RecurrenceInterval, ReminderId, Tag, TaskId, TaskTitle, Text, UserRef,
    string_enum,
};
use crate::{Aggregate, CommandContext};

/// Retries allowed after the first failed delivery before a reminder becomes `failed`.
pub const MAX_REMINDER_RETRIES: u8 = 3;

/// Maximum number of tags on a task.
pub const MAX_TAGS: usize = 10;

string_enum!(
    /// Lifecycle status of a task.
    TaskStatus, "status", "task.invalid_status" {
        /// Open.
        Active = "active",
        /// Done.
        Completed = "completed",
        /// Soft-deleted; restorable.
        Deleted = "deleted",
    }
);

string_enum!(
    /// Task priority.
    Priority, "priority", "task.invalid_priority" {
        /// Low.
        Low = "low",
        /// Medium.
        Medium = "medium",
        /// High.
        High = "high",
    }
);

string_enum!(
    /// Delivery status of a reminder.
    ReminderStatus, "reminder.status", "task.invalid_reminder_status" {
        /// Waiting to be delivered (also while retrying).
        Pending = "pending",
        /// Delivered.
        Sent = "sent",
        /// Gave up after the retries.
        Failed = "failed",
    }
);

string_enum!(
    /// How a reminder is delivered.
    DeliveryMethod, "reminder.delivery_method", "task.invalid_delivery_method" {
        /// E-mail to an address.
        Email = "email",
        /// Push notification to a device token.
        Push = "push",
    }
);

string_enum!(
    /// Unit of a recurrence rule.
    RecurrencePattern, "recurrence.pattern", "task.invalid_recurrence_pattern" {
        /// Every `interval` days.
        Daily = "daily",
        /// Every `interval` weeks.
        Weekly = "weekly",
        /// Every `interval` calendar months (clamped to the month's last day).
        Monthly = "monthly",
        /// Every `interval` years.
        Yearly = "yearly",
    }
);

/// Up to [`MAX_TAGS`] distinct tags.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<Tag>", into = "Vec<Tag>")]
pub struct Tags(Vec<Tag>);

impl Tags {
    /// Checks the count and that no tag repeats.
    pub fn new(tags: Vec<Tag>) -> Result<Self, DomainError> {
        if tags.len() > MAX_TAGS {
            return Err(DomainError::invalid(
                "task.too_many_tags",
                "tags",
                format!(
                    "tags may have at most {MAX_TAGS} entries (got {})",
                    tags.len()
                ),
            ));
        }
        for (i, t) in tags.iter().enumerate() {
            if tags[..i].contains(t) {
                return Err(DomainError::invalid(
                    "task.duplicate_tag",
                    "tags",
                    format!("tag {:?} appears more than once", t.as_str()),
                ));
            }
        }
        Ok(Tags(tags))
    }

    /// Parses raw strings into tags.
    pub fn parse<S: AsRef<str>>(tags: impl IntoIterator<Item = S>) -> Result<Self, DomainError> {
        Self::new(tags.into_iter().map(Tag::parse).collect::<Result<_, _>>()?)
    }

    /// The tags in the order given.
    pub fn as_slice(&self) -> &[Tag] {
        &self.0
    }
}

impl TryFrom<Vec<Tag>> for Tags {
    type Error = DomainError;
    fn try_from(v: Vec<Tag>) -> Result<Self, DomainError> {
        Self::new(v)
    }
}

impl From<Tags> for Vec<Tag> {
    fn from(t: Tags) -> Self {
        t.0
    }
}

/// Recurrence rule: pattern plus interval (both required by the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecurrenceRule {
    /// Unit.
    pub pattern: RecurrencePattern,
    /// How many units between occurrences.
    pub interval: RecurrenceInterval,
}

impl RecurrenceRule {
    /// The instant one interval after `from`; `None` only past the calendar's end.
    pub fn next_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let n = self.interval.get();
        match self.pattern {
            RecurrencePattern::Daily => from.checked_add_days(Days::new(u64::from(n))),
            RecurrencePattern::Weekly => from.checked_add_days(Days::new(7 * u64::from(n))),
            RecurrencePattern::Monthly => from.checked_add_months(Months::new(n)),
            RecurrencePattern::Yearly => from.checked_add_months(Months::new(n.checked_mul(12)?)),
        }
    }
}

/// The task's reminder configuration (seed `reminder_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderConfig {
    /// How long before the due date to remind.
    pub lead_time_minutes: LeadTimeMinutes,
    /// Channel.
    pub delivery_method: DeliveryMethod,
}

/// Where a reminder goes: an e-mail address for `email`, a non-empty token for `push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawReminderTarget", into = "RawReminderTarget")]
pub struct ReminderTarget {
    method: DeliveryMethod,
    destination: String,
}

#[derive(Serialize, Deserialize)]
struct RawReminderTarget {
    delivery_method: DeliveryMethod,
    destination: String,
}

impl ReminderTarget {
    /// Checks the destination against the method (≤500 chars; e-mail shape for `email`).
    pub fn new(method: DeliveryMethod, destination: impl AsRef<str>) -> Result<Self, DomainError> {
        let d = destination.as_ref().trim();
        if d.is_empty() || d.chars().count() > 500 {
            return Err(DomainError::invalid(
                "task.invalid_destination",
                "reminder.destination",
                "reminder destination must have 1 to 500 characters",
            ));
        }
        if method == DeliveryMethod::Email && !looks_like_email(d) {
            return Err(DomainError::invalid(
                "task.invalid_destination",
                "reminder.destination",
                format!("reminder destination {d:?} is not an e-mail address"),
            ));
        }
        Ok(ReminderTarget {
            method,
            destination: d.to_owned(),
        })
    }

    /// Delivery channel.
    pub fn method(&self) -> DeliveryMethod {
        self.method
    }

    /// Address or device token.
    pub fn destination(&self) -> &str {
        &self.destination
    }
}

// Deliberately loose (one `@`, a dot in the domain, no spaces): the real check is delivery.
fn looks_like_email(s: &str) -> bool {
    let mut parts = s.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(local), Some(domain), None) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        _ => false,
    }
}

impl TryFrom<RawReminderTarget> for ReminderTarget {
    type Error = DomainError;
    fn try_from(r: RawReminderTarget) -> Result<Self, DomainError> {
        Self::new(r.delivery_method, r.destination)
    }
}

impl From<ReminderTarget> for RawReminderTarget {
    fn from(t: ReminderTarget) -> Self {
        RawReminderTarget {
            delivery_method: t.method,
            destination: t.destination,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Commands of the task aggregate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum TaskCommand {
    /// Create a task (the client chooses the id).
    CreateTask(CreateTask),
    /// Change some fields of an active task.
    UpdateTask(UpdateTask),
    /// Mark an active task done.
    CompleteTask {
        /// Target task.
        task_id: TaskId,
    },
    /// Soft-delete an active task.
    DeleteTask {
        /// Target task.
        task_id: TaskId,
    },
    /// Bring a completed or deleted task back to active.
    RestoreTask {
        /// Target task.
        task_id: TaskId,
    },
    /// Schedule (or replace) the task's reminder.
    ScheduleReminder(ScheduleReminder),
    /// Record that the reminder was delivered.
    RecordReminderSent {
        /// Target task.
        task_id: TaskId,
        /// The reminder that was delivered.
        reminder_id: ReminderId,
    },
    /// Record a failed delivery attempt.
    RecordReminderFailure {
        /// Target task.
        task_id: TaskId,
        /// The reminder whose delivery failed.
        reminder_id: ReminderId,
        /// What went wrong.
        error: Text,
    },
    /// Manually re-arm a failed reminder.
    RetryReminder {
        /// Target task.
        task_id: TaskId,
        /// The failed reminder.
        reminder_id: ReminderId,
    },
}

impl TaskCommand {
    /// The stream the command addresses.
    pub fn task_id(&self) -> TaskId {
        match self {
            TaskCommand::CreateTask(c) => c.task_id,
            TaskCommand::UpdateTask(c) => c.task_id,
            TaskCommand::ScheduleReminder(c) => c.task_id,
            TaskCommand::CompleteTask { task_id }
            | TaskCommand::DeleteTask { task_id }
            | TaskCommand::RestoreTask { task_id }
            | TaskCommand::RecordReminderSent { task_id, .. }
            | TaskCommand::RecordReminderFailure { task_id, .. }
            | TaskCommand::RetryReminder { task_id, .. } => *task_id,
        }
    }
}

/// Payload of [`TaskCommand::CreateTask`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateTask {
    /// New task's id.
    pub task_id: TaskId,
    /// Owning user.
    pub owner: UserRef,
    /// Title.
    pub title: TaskTitle,
    /// Optional description.
    pub description: Option<Text>,
    /// Optional due date; must be after `ctx.now`.
    pub due_date: Option<DateTime<Utc>>,
    /// Optional priority.
    pub priority: Option<Priority>,
    /// Tags.
    pub tags: Tags,
    /// Optional reminder configuration.
    pub reminder_config: Option<ReminderConfig>,
    /// Optional recurrence.
    pub recurrence: Option<RecurrenceRule>,
    /// Optional parent (previous occurrence of a recurring series, or a containing task).
    pub parent_task_id: Option<TaskId>,
    /// Position in a recurring series, 1 for a first/non-recurring task.
    pub occurrence: u32,
}

/// Payload of [`TaskCommand::UpdateTask`]; `Keep`/`None` fields stay unchanged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateTask {
    /// Target task.
    pub task_id: TaskId,
    /// New title.
    pub title: Option<TaskTitle>,
    /// Description change.
    pub description: Patch<Text>,
    /// Due-date change; a new date must be after `ctx.now`.
    pub due_date: Patch<DateTime<Utc>>,
    /// Priority change.
    pub priority: Patch<Priority>,
    /// Replacement tags.
    pub tags: Option<Tags>,
    /// Reminder-configuration change.
    pub reminder_config: Patch<ReminderConfig>,
    /// Recurrence change.
    pub recurrence: Patch<RecurrenceRule>,
}

impl UpdateTask {
    /// An update of `task_id` that changes nothing yet; set the fields to change.
    pub fn new(task_id: TaskId) -> Self {
        UpdateTask {
            task_id,
            title: None,
            description: Patch::Keep,
            due_date: Patch::Keep,
            priority: Patch::Keep,
            tags: None,
            reminder_config: Patch::Keep,
            recurrence: Patch::Keep,
        }
    }

    /// The update minus the fields that already hold the requested value.
    fn without_unchanged(self, task: &TaskData) -> Self {
        fn patch<T: PartialEq>(p: Patch<T>, current: Option<&T>) -> Patch<T> {
            match (&p, current) {
                (Patch::Set(v), Some(c)) if v == c => Patch::Keep,
                (Patch::Clear, None) => Patch::Keep,
                _ => p,
            }
        }
        UpdateTask {
            task_id: self.task_id,
            title: self.title.filter(|t| *t != task.title),
            description: patch(self.description, task.description.as_ref()),
            due_date: patch(self.due_date, task.due_date.as_ref()),
            priority: patch(self.priority, task.priority.as_ref()),
            tags: self.tags.filter(|t| *t != task.tags),
            reminder_config: patch(self.reminder_config, task.reminder_config.as_ref()),
            recurrence: patch(self.recurrence, task.recurrence.as_ref()),
        }
    }

    fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.description.is_keep()
            && self.due_date.is_keep()
            && self.priority.is_keep()
            && self.tags.is_none()
            && self.reminder_config.is_keep()
            && self.recurrence.is_keep()
    }
}

/// Payload of [`TaskCommand::ScheduleReminder`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleReminder {
    /// Target task.
    pub task_id: TaskId,
    /// New reminder's id.
    pub reminder_id: ReminderId,
    /// When to deliver; must be after `ctx.now`.
    pub trigger_time: DateTime<Utc>,
    /// Channel and destination.
    pub target: ReminderTarget,
}

// ---------------------------------------------------------------------------------------------
// Events

domain_events! {
    /// Events of the task aggregate (see the module table for versions).
    pub enum TaskEvent {
        /// A task was created.
        Created(TaskCreated) => "task.created" v 2,
        /// Some fields of a task changed.
        Updated(TaskUpdated) => "task.updated" v 1,
        /// A task was completed.
        Completed(TaskCompleted) => "task.completed" v 1,
        /// A task was soft-deleted.
        Deleted(TaskDeleted) => "task.deleted" v 1,
        /// A completed or deleted task became active again.
        Restored(TaskRestored) => "task.restored" v 1,
        /// A reminder was scheduled (replacing any previous one).
        ReminderScheduled(ReminderScheduled) => "task.reminder_scheduled" v 1,
        /// The reminder was delivered.
        ReminderSent(ReminderSent) => "task.reminder_sent" v 1,
        /// A delivery failed and another attempt will be made.
        ReminderRetryScheduled(ReminderDeliveryFailed) => "task.reminder_retry_scheduled" v 1,
        /// A delivery failed after the last retry; the reminder is `failed`.
        ReminderFailed(ReminderDeliveryFailed) => "task.reminder_failed" v 1,
        /// A failed reminder was manually re-armed.
        ReminderRetried(ReminderRetried) => "task.reminder_retried" v 1,
    }
}

fn first_occurrence() -> u32 {
    1
}

/// Payload of `task.created` (v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCreated {
    /// Task id.
    pub task_id: TaskId,
    /// Owning user.
    pub owner: UserRef,
    /// Title.
    pub title: TaskTitle,
    /// Description.
    pub description: Option<Text>,
    /// Due date.
    pub due_date: Option<DateTime<Utc>>,
    /// Priority.
    pub priority: Option<Priority>,
    /// Tags (added in v2).
    pub tags: Tags,
    /// Reminder configuration.
    pub reminder_config: Option<ReminderConfig>,
    /// Recurrence.
    pub recurrence: Option<RecurrenceRule>,
    /// Parent task.
    pub parent_task_id: Option<TaskId>,
    /// Position in a recurring series; absent in older payloads means the first.
    #[serde(default = "first_occurrence")]
    pub occurrence: u32,
    /// Who issued the command.
    pub created_by: String,
    /// `ctx.now` of the command.
    pub created_at: DateTime<Utc>,
}

/// Payload of `task.updated`: only the changed fields are present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUpdated {
    /// Task id.
    pub task_id: TaskId,
    /// New title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<TaskTitle>,
    /// Description change.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub description: Patch<Text>,
    /// Due-date change.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub due_date: Patch<DateTime<Utc>>,
    /// Priority change.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub priority: Patch<Priority>,
    /// Replacement tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    /// Reminder-configuration change.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub reminder_config: Patch<ReminderConfig>,
    /// Recurrence change.
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub recurrence: Patch<RecurrenceRule>,
    /// `ctx.now` of the command.
    pub updated_at: DateTime<Utc>,
}

/// What the recurring-task process manager needs to create the next occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecurringSnapshot {
    /// Owning user.
    pub owner: UserRef,
    /// Title.
    pub title: TaskTitle,
    /// Description.
    pub description: Option<Text>,
    /// Due date of the completed occurrence.
    pub due_date: Option<DateTime<Utc>>,
    /// Priority.
    pub priority: Option<Priority>,
    /// Tags.
    pub tags: Tags,
    /// Reminder configuration.
    pub reminder_config: Option<ReminderConfig>,
    /// The rule (present because the task is recurring).
    pub recurrence: RecurrenceRule,
    /// Position of the completed occurrence in its series.
    pub occurrence: u32,
}

/// Payload of `task.completed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCompleted {
    /// Task id.
    pub task_id: TaskId,
    /// `ctx.now` of the command.
    pub completed_at: DateTime<Utc>,
    /// Present when the task recurs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurring: Option<RecurringSnapshot>,
}

/// Payload of `task.deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDeleted {
    /// Task id.
    pub task_id: TaskId,
    /// `ctx.now` of the command.
    pub deleted_at: DateTime<Utc>,
}

/// Payload of `task.restored`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRestored {
    /// Task id.
    pub task_id: TaskId,
    /// Status before the restore (`completed` or `deleted`).
    pub previous_status: TaskStatus,
    /// `ctx.now` of the command.
    pub restored_at: DateTime<Utc>,
}

/// Payload of `task.reminder_scheduled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReminderScheduled {
    /// Task id.
    pub task_id: TaskId,
    /// Reminder id.
    pub reminder_id: ReminderId,
    /// When to deliver.
    pub trigger_time: DateTime<Utc>,
    /// Channel and destination.
    pub target: ReminderTarget,
    /// `ctx.now` of the command.
    pub scheduled_at: DateTime<Utc>,
}

/// Payload of `task.reminder_sent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReminderSent {
    /// Task id.
    pub task_id: TaskId,
    /// Reminder id.
    pub reminder_id: ReminderId,
    /// `ctx.now` of the command.
    pub sent_at: DateTime<Utc>,
}

/// Payload of `task.reminder_retry_scheduled` and `task.reminder_failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReminderDeliveryFailed {
    /// Task id.
    pub task_id: TaskId,
    /// Reminder id.
    pub reminder_id: ReminderId,
    /// Retries used after this failure (0–3).
    pub retry_count: u8,
    /// What went wrong.
    pub error: Text,
    /// `ctx.now` of the command.
    pub failed_at: DateTime<Utc>,
}

/// Payload of `task.reminder_retried`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReminderRetried {
    /// Task id.
    pub task_id: TaskId,
    /// Reminder id.
    pub reminder_id: ReminderId,
    /// `ctx.now` of the command.
    pub retried_at: DateTime<Utc>,
}

pub(crate) fn register_upcasters(r: &mut UpcasterRegistry) {
    r.register("task.created", 1, task_created_v1_to_v2);
}

/// v1 of `task.created` predates tags; a v1 task simply had none.
fn task_created_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let obj = payload
        .as_object_mut()
        .ok_or_else(|| "task.created v1 payload is not a JSON object".to_owned())?;
    obj.entry("tags")
        .or_insert_with(|| Value::Array(Vec::new()));
    Ok(payload)
}

// ---------------------------------------------------------------------------------------------
// State

/// A task's reminder as folded from events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    /// Reminder id.
    pub id: ReminderId,
    /// When to deliver.
    pub trigger_time: DateTime<Utc>,
    /// Channel and destination.
    pub target: ReminderTarget,
    /// Delivery status.
    pub status: ReminderStatus,
    /// Retries used so far (0–3).
    pub retry_count: u8,
    /// Time of the last failed attempt.
    pub last_retry_at: Option<DateTime<Utc>>,
    /// Time of delivery.
    pub sent_at: Option<DateTime<Utc>>,
}

/// A task as folded from events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskData {
    /// Task id.
    pub id: TaskId,
    /// Owning user.
    pub owner: UserRef,
    /// Title.
    pub title: TaskTitle,
    /// Description.
    pub description: Option<Text>,
    /// Due date.
    pub due_date: Option<DateTime<Utc>>,
    /// Priority.
    pub priority: Option<Priority>,
    /// Tags.
    pub tags: Tags,
    /// Reminder configuration.
    pub reminder_config: Option<ReminderConfig>,
    /// Recurrence.
    pub recurrence: Option<RecurrenceRule>,
    /// Parent task.
    pub parent_task_id: Option<TaskId>,
    /// Position in a recurring series.
    pub occurrence: u32,
    /// Status.
    pub status: TaskStatus,
    /// The current reminder, if any.
    pub reminder: Option<Reminder>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Completion time while completed.
    pub completed_at: Option<DateTime<Utc>>,
}

/// State of a task stream: `None` until `task.created`.
pub type TaskState = Option<TaskData>;

/// The task aggregate.
#[derive(Debug, Clone, Copy)]
pub enum Task {}

impl Aggregate for Task {
    const STREAM_TYPE: &'static str = "task";
    type State = TaskState;
    type Command = TaskCommand;
    type Event = TaskEvent;

    fn decide(
        state: &TaskState,
        command: TaskCommand,
        ctx: &CommandContext,
    ) -> Result<Vec<TaskEvent>, DomainError> {
        if let TaskCommand::CreateTask(c) = command {
            return create(state, c, ctx);
        }
        let task = existing(state, command.task_id())?;
        let now = ctx.now;
        let event = match command {
            // Handled above; kept so the match stays exhaustive without a wildcard.
            TaskCommand::CreateTask(c) => return create(state, c, ctx),
            TaskCommand::UpdateTask(u) => {
                require_active(task, "updated")?;
                if u.is_empty() {
                    return Err(DomainError::invalid(
                        "task.empty_update",
                        "update",
                        "an update must change at least one field",
                    ));
                }
                // An update that changes nothing writes nothing: the API answers it with the
                // current version, like any command that decides no events.
                let u = u.without_unchanged(task);
                if u.is_empty() {
                    return Ok(Vec::new());
                }
                if let Patch::Set(d) = u.due_date {
                    require_future("due_date", "task.due_date_in_past", d, now)?;
                }
                TaskEvent::Updated(TaskUpdated {
                    task_id: task.id,
                    title: u.title,
                    description: u.description,
                    due_date: u.due_date,
                    priority: u.priority,
                    tags: u.tags,
                    reminder_config: u.reminder_config,
                    recurrence: u.recurrence,
                    updated_at: now,
                })
            }
            TaskCommand::CompleteTask { .. } => {
                require_active(task, "completed")?;
                TaskEvent::Completed(TaskCompleted {
                    task_id: task.id,
                    completed_at: now,
                    recurring: task.recurrence.map(|recurrence| RecurringSnapshot {
                        owner: task.owner.clone(),
                        title: task.title.clone(),
                        description: task.description.clone(),
                        due_date: task.due_date,
                        priority: task.priority,
                        tags: task.tags.clone(),
                        reminder_config: task.reminder_config,
                        recurrence,
                        occurrence: task.occurrence,
                    }),
                })
            }
            TaskCommand::DeleteTask { .. } => {
                require_active(task, "deleted")?;
                TaskEvent::Deleted(TaskDeleted {
                    task_id: task.id,
                    deleted_at: now,
                })
            }
            TaskCommand::RestoreTask { .. } => {
                if task.status == TaskStatus::Active {
                    return Err(DomainError::precondition(
                        "task.not_restorable",
                        "only a completed or deleted task can be restored; this task is active",
                    ));
                }
                TaskEvent::Restored(TaskRestored {
                    task_id: task.id,
                    previous_status: task.status,
                    restored_at: now,
                })
            }
            TaskCommand::ScheduleReminder(r) => {
                require_active(task, "given a reminder")?;
                if task
                    .reminder
                    .as_ref()
                    .is_some_and(|x| x.id == r.reminder_id)
                {
                    return Err(DomainError::already_exists(
                        "task.reminder_already_exists",
                        format!("reminder {} already exists on this task", r.reminder_id),
                    ));
                }
                require_future(
                    "trigger_time",
                    "task.reminder_trigger_in_past",
                    r.trigger_time,
                    now,
                )?;
                TaskEvent::ReminderScheduled(ReminderScheduled {
                    task_id: task.id,
                    reminder_id: r.reminder_id,
                    trigger_time: r.trigger_time,
                    target: r.target,
                    scheduled_at: now,
                })
            }
            TaskCommand::RecordReminderSent { reminder_id, .. } => {
                require_reminder(task, reminder_id, ReminderStatus::Pending)?;
                TaskEvent::ReminderSent(ReminderSent {
                    task_id: task.id,
                    reminder_id,
                    sent_at: now,
                })
            }
            TaskCommand::RecordReminderFailure {
                reminder_id, error, ..
            } => {
                let r = require_reminder(task, reminder_id, ReminderStatus::Pending)?;
                if r.retry_count < MAX_REMINDER_RETRIES {
                    TaskEvent::ReminderRetryScheduled(ReminderDeliveryFailed {
                        task_id: task.id,
                        reminder_id,
                        retry_count: r.retry_count + 1,
                        error,
                        failed_at: now,
                    })
                } else {
                    TaskEvent::ReminderFailed(ReminderDeliveryFailed {
                        task_id: task.id,
                        reminder_id,
                        retry_count: r.retry_count,
                        error,
                        failed_at: now,
                    })
                }
            }
            TaskCommand::RetryReminder { reminder_id, .. } => {
                require_active(task, "have its reminder retried")?;
                require_reminder(task, reminder_id, ReminderStatus::Failed)?;
                TaskEvent::ReminderRetried(ReminderRetried {
                    task_id: task.id,
                    reminder_id,
                    retried_at: now,
                })
            }
        };
        Ok(vec![event])
    }

    fn evolve(state: TaskState, event: &TaskEvent) -> TaskState {
        if let TaskEvent::Created(e) = event {
            return Some(TaskData {
                id: e.task_id,
                owner: e.owner.clone(),
                title: e.title.clone(),
                description: e.description.clone(),
                due_date: e.due_date,
                priority: e.priority,
                tags: e.tags.clone(),
                reminder_config: e.reminder_config,
                recurrence: e.recurrence,
                parent_task_id: e.parent_task_id,
                occurrence: e.occurrence,
                status: TaskStatus::Active,
                reminder: None,
                created_at: e.created_at,
                updated_at: e.created_at,
                completed_at: None,
            });
        }
        // Events for a stream that was never created cannot come from `decide`; ignoring them
        // keeps `evolve` total instead of panicking on a corrupt history.
        let mut t = state?;
        match event {
            TaskEvent::Created(_) => {}
            TaskEvent::Updated(u) => {
                if let Some(title) = &u.title {
                    t.title = title.clone();
                }
                t.description = u.description.apply(t.description);
                t.due_date = u.due_date.apply(t.due_date);
                t.priority = u.priority.apply(t.priority);
                if let Some(tags) = &u.tags {
                    t.tags = tags.clone();
                }
                t.reminder_config = u.reminder_config.apply(t.reminder_config);
                t.recurrence = u.recurrence.apply(t.recurrence);
                t.updated_at = u.updated_at;
            }
            TaskEvent::Completed(e) => {
                t.status = TaskStatus::Completed;
                t.completed_at = Some(e.completed_at);
                t.updated_at = e.completed_at;
            }
            TaskEvent::Deleted(e) => {
                t.status = TaskStatus::Deleted;
                t.updated_at = e.deleted_at;
            }
            TaskEvent::Restored(e) => {
                t.status = TaskStatus::Active;
                t.completed_at = None;
                t.updated_at = e.restored_at;
            }
            TaskEvent::ReminderScheduled(e) => {
                t.reminder = Some(Reminder {
                    id: e.reminder_id,
                    trigger_time: e.trigger_time,
                    target: e.target.clone(),
                    status: ReminderStatus::Pending,
                    retry_count: 0,
                    last_retry_at: None,
                    sent_at: None,
                });
                t.updated_at = e.scheduled_at;
            }
            TaskEvent::ReminderSent(e) => {
                if let Some(r) = t.reminder.as_mut().filter(|r| r.id == e.reminder_id) {
                    r.status = ReminderStatus::Sent;
                    r.sent_at = Some(e.sent_at);
                }
            }
            TaskEvent::ReminderRetryScheduled(e) | TaskEvent::ReminderFailed(e) => {
                if let Some(r) = t.reminder.as_mut().filter(|r| r.id == e.reminder_id) {
                    r.retry_count = e.retry_count;
                    r.last_retry_at = Some(e.failed_at);
                    if matches!(event, TaskEvent::ReminderFailed(_)) {
                        r.status = ReminderStatus::Failed;
                    }
                }
            }
            TaskEvent::ReminderRetried(e) => {
                if let Some(r) = t.reminder.as_mut().filter(|r| r.id == e.reminder_id) {
                    r.status = ReminderStatus::Pending;
                    r.retry_count = 0;
                }
            }
        }
        Some(t)
    }
}

fn create(
    state: &TaskState,
    c: CreateTask,
    ctx: &CommandContext,
) -> Result<Vec<TaskEvent>, DomainError> {
    if state.is_some() {
        return Err(DomainError::already_exists(
            "task.already_exists",
            format!("task {} already exists", c.task_id),
        ));
    }
    if let Some(d) = c.due_date {
        require_future("due_date", "task.due_date_in_past", d, ctx.now)?;
    }
    if c.parent_task_id == Some(c.task_id) {
        return Err(DomainError::invalid(
            "task.parent_is_self",
            "parent_task_id",
            "a task cannot be its own parent",
        ));
    }
    if c.occurrence == 0 {
        return Err(DomainError::invalid(
            "task.invalid_occurrence",
            "occurrence",
            "occurrence counts from 1",
        ));
    }
    Ok(vec![TaskEvent::Created(TaskCreated {
        task_id: c.task_id,
        owner: c.owner,
        title: c.title,
        description: c.description,
        due_date: c.due_date,
        priority: c.priority,
        tags: c.tags,
        reminder_config: c.reminder_config,
        recurrence: c.recurrence,
        parent_task_id: c.parent_task_id,
        occurrence: c.occurrence,
        created_by: ctx.actor.clone(),
        created_at: ctx.now,
    })])
}

fn existing(state: &TaskState, id: TaskId) -> Result<&TaskData, DomainError> {
    match state {
        Some(t) if t.id == id => Ok(t),
        Some(t) => Err(DomainError::precondition(
            "task.stream_mismatch",
            format!("command for task {id} was decided against task {}", t.id),
        )),
        None => Err(DomainError::not_found(
            "task.not_found",
            format!("task {id} does not exist"),
        )),
    }
}

fn require_active(task: &TaskData, verb: &str) -> Result<(), DomainError> {
    if task.status != TaskStatus::Active {
        return Err(DomainError::precondition(
            "task.not_active",
            format!(
                "only an active task can be {verb}; this task is {}",
                task.status
            ),
        ));
    }
    Ok(())
}

fn require_future(
    field: &'static str,
    code: &'static str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DomainError> {
    if at <= now {
        return Err(DomainError::invalid(
            code,
            field,
            format!("{field} must be in the future (got {at}, now is {now})"),
        ));
    }
    Ok(())
}

fn require_reminder(
    task: &TaskData,
    id: ReminderId,
    status: ReminderStatus,
) -> Result<&Reminder, DomainError> {
    let r = task
        .reminder
        .as_ref()
        .filter(|r| r.id == id)
        .ok_or_else(|| {
            DomainError::not_found(
                "task.reminder_not_found",
                format!("reminder {id} is not this task's current reminder"),
            )
        })?;
    if r.status != status {
        return Err(DomainError::precondition(
            if status == ReminderStatus::Pending {
                "task.reminder_not_pending"
            } else {
                "task.reminder_not_failed"
            },
            format!(
                "reminder must be {status} for this command; it is {}",
                r.status
            ),
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainEvent;
    use crate::ErrorKind;
    use crate::recurring;
    use crate::testing::{ctx, given, now};
    use chrono::Duration;
    use serde_json::json;
    use uuid::Uuid;

    fn id() -> TaskId {
        TaskId::new(Uuid::from_u128(7)).unwrap()
    }
    fn rid(n: u128) -> ReminderId {
        ReminderId::new(Uuid::from_u128(n)).unwrap()
    }

    fn create_cmd() -> CreateTask {
        CreateTask {
            task_id: id(),
            owner: UserRef::parse("user-1").unwrap(),
            title: TaskTitle::parse("Write report").unwrap(),
            description: None,
            due_date: Some(now() + Duration::days(1)),
            priority: Some(Priority::High),
            tags: Tags::parse(["work"]).unwrap(),
            reminder_config: None,
            recurrence: None,
            parent_task_id: None,
            occurrence: 1,
        }
    }

    fn created_from(c: CreateTask) -> TaskEvent {
        TaskEvent::Created(TaskCreated {
            task_id: c.task_id,
            owner: c.owner,
            title: c.title,
            description: c.description,
            due_date: c.due_date,
            priority: c.priority,
            tags: c.tags,
            reminder_config: c.reminder_config,
            recurrence: c.recurrence,
            parent_task_id: c.parent_task_id,
            occurrence: c.occurrence,
            created_by: "tester".into(),
            created_at: now(),
        })
    }

    fn created() -> TaskEvent {
        created_from(create_cmd())
    }
    fn completed() -> TaskEvent {
        TaskEvent::Completed(TaskCompleted {
            task_id: id(),
            completed_at: now(),
            recurring: None,
        })
    }
    fn deleted() -> TaskEvent {
        TaskEvent::Deleted(TaskDeleted {
            task_id: id(),
            deleted_at: now(),
        })
    }
    fn target() -> ReminderTarget {
        ReminderTarget::new(DeliveryMethod::Email, "a@example.com").unwrap()
    }
    fn scheduled(n: u128) -> TaskEvent {
        TaskEvent::ReminderScheduled(ReminderScheduled {
            task_id: id(),
            reminder_id: rid(n),
            trigger_time: now() + Duration::hours(1),
            target: target(),
            scheduled_at: now(),
        })
    }
    fn failure(retry_count: u8, last: bool) -> TaskEvent {
        let f = ReminderDeliveryFailed {
            task_id: id(),
            reminder_id: rid(1),
            retry_count,
            error: Text::parse("error", "smtp down").unwrap(),
            failed_at: now(),
        };
        if last {
            TaskEvent::ReminderFailed(f)
        } else {
            TaskEvent::ReminderRetryScheduled(f)
        }
    }
    fn fail_cmd() -> TaskCommand {
        TaskCommand::RecordReminderFailure {
            task_id: id(),
            reminder_id: rid(1),
            error: Text::parse("error", "smtp down").unwrap(),
        }
    }

    #[test]
    fn create_happy_path() {
        let state = given::<Task>([])
            .when(TaskCommand::CreateTask(create_cmd()))
            .then([created()]);
        assert_eq!(state.unwrap().status, TaskStatus::Active);
    }

    #[test]
    fn create_twice_is_already_exists() {
        given::<Task>([created()])
            .when(TaskCommand::CreateTask(create_cmd()))
            .then_err_kind("task.already_exists", ErrorKind::AlreadyExists);
    }

    #[test]
    fn create_requires_future_due_date_relative_to_ctx_now() {
        let mut c = create_cmd();
        c.due_date = Some(now());
        let e = given::<Task>([])
            .when(TaskCommand::CreateTask(c))
            .then_err_kind("task.due_date_in_past", ErrorKind::InvalidArgument);
        assert_eq!(e.field(), Some("due_date"));
    }

    #[test]
    fn create_rejects_self_parent_and_zero_occurrence() {
        let mut c = create_cmd();
        c.parent_task_id = Some(id());
        given::<Task>([])
            .when(TaskCommand::CreateTask(c))
            .then_err("task.parent_is_self");
        let mut c = create_cmd();
        c.occurrence = 0;
        given::<Task>([])
            .when(TaskCommand::CreateTask(c))
            .then_err("task.invalid_occurrence");
    }

    #[test]
    fn tags_are_bounded_and_distinct() {
        let many: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        assert_eq!(Tags::parse(&many).unwrap_err().code(), "task.too_many_tags");
        assert!(Tags::parse(&many[..10]).is_ok());
        assert_eq!(
            Tags::parse(["a", "a"]).unwrap_err().code(),
            "task.duplicate_tag"
        );
    }

    #[test]
    fn commands_on_missing_task_are_not_found() {
        given::<Task>([])
            .when(TaskCommand::CompleteTask { task_id: id() })
            .then_err_kind("task.not_found", ErrorKind::NotFound);
    }

    #[test]
    fn command_for_other_stream_is_rejected() {
        let other = TaskId::new(Uuid::from_u128(8)).unwrap();
        given::<Task>([created()])
            .when(TaskCommand::CompleteTask { task_id: other })
            .then_err("task.stream_mismatch");
    }

    #[test]
    fn an_update_that_changes_nothing_writes_nothing() {
        let mut u = UpdateTask::new(id());
        u.title = Some(TaskTitle::parse("Write report").unwrap());
        u.priority = Patch::Set(Priority::High);
        u.description = Patch::Clear;
        u.tags = Some(Tags::parse(["work"]).unwrap());
        given::<Task>([created()])
            .when(TaskCommand::UpdateTask(u))
            .then([]);
        // Only the changed field is written.
        let mut u = UpdateTask::new(id());
        u.title = Some(TaskTitle::parse("Write report").unwrap());
        u.priority = Patch::Set(Priority::Low);
        let events = given::<Task>([created()])
            .when(TaskCommand::UpdateTask(u))
            .then_ok();
        let [TaskEvent::Updated(e)] = events.as_slice() else {
            panic!("expected one update, got {events:?}");
        };
        assert_eq!(e.title, None);
        assert_eq!(e.priority, Patch::Set(Priority::Low));
    }

    #[test]
    fn update_happy_path_and_rules() {
        let mut u = UpdateTask::new(id());
        u.title = Some(TaskTitle::parse("New").unwrap());
        u.due_date = Patch::Clear;
        let state = given::<Task>([created()])
            .when(TaskCommand::UpdateTask(u))
            .then([TaskEvent::Updated(TaskUpdated {
                task_id: id(),
                title: Some(TaskTitle::parse("New").unwrap()),
                description: Patch::Keep,
                due_date: Patch::Clear,
                priority: Patch::Keep,
                tags: None,
                reminder_config: Patch::Keep,
                recurrence: Patch::Keep,
                updated_at: now(),
            })])
            .unwrap();
        assert_eq!(state.title.as_str(), "New");
        assert_eq!(state.due_date, None);
        assert_eq!(state.priority, Some(Priority::High));

        given::<Task>([created()])
            .when(TaskCommand::UpdateTask(UpdateTask::new(id())))
            .then_err("task.empty_update");
        let mut u = UpdateTask::new(id());
        u.due_date = Patch::Set(now() - Duration::seconds(1));
        given::<Task>([created()])
            .when(TaskCommand::UpdateTask(u))
            .then_err("task.due_date_in_past");
        let mut u = UpdateTask::new(id());
        u.priority = Patch::Set(Priority::Low);
        given::<Task>([created(), completed()])
            .when(TaskCommand::UpdateTask(u))
            .then_err_kind("task.not_active", ErrorKind::FailedPrecondition);
    }

    #[test]
    fn complete_delete_restore_transitions() {
        given::<Task>([created()])
            .when(TaskCommand::CompleteTask { task_id: id() })
            .then([completed()]);
        given::<Task>([created(), completed()])
            .when(TaskCommand::CompleteTask { task_id: id() })
            .then_err("task.not_active");
        given::<Task>([created()])
            .when(TaskCommand::DeleteTask { task_id: id() })
            .then([deleted()]);
        given::<Task>([created(), deleted()])
            .when(TaskCommand::DeleteTask { task_id: id() })
            .then_err("task.not_active");
        given::<Task>([created(), completed()])
            .when(TaskCommand::DeleteTask { task_id: id() })
            .then_err("task.not_active");
        for (prev, ev) in [
            (TaskStatus::Completed, completed()),
            (TaskStatus::Deleted, deleted()),
        ] {
            let s = given::<Task>([created(), ev])
                .when(TaskCommand::RestoreTask { task_id: id() })
                .then([TaskEvent::Restored(TaskRestored {
                    task_id: id(),
                    previous_status: prev,
                    restored_at: now(),
                })]);
            assert_eq!(s.unwrap().status, TaskStatus::Active);
        }
        given::<Task>([created()])
            .when(TaskCommand::RestoreTask { task_id: id() })
            .then_err("task.not_restorable");
    }

    #[test]
    fn reminder_schedule_rules() {
        let cmd = |n: u128, at| {
            TaskCommand::ScheduleReminder(ScheduleReminder {
                task_id: id(),
                reminder_id: rid(n),
                trigger_time: at,
                target: target(),
            })
        };
        given::<Task>([created()])
            .when(cmd(1, now() + Duration::hours(1)))
            .then([scheduled(1)]);
        given::<Task>([created()])
            .when(cmd(1, now()))
            .then_err("task.reminder_trigger_in_past");
        given::<Task>([created(), scheduled(1)])
            .when(cmd(1, now() + Duration::hours(1)))
            .then_err_kind("task.reminder_already_exists", ErrorKind::AlreadyExists);
        given::<Task>([created(), deleted()])
            .when(cmd(1, now() + Duration::hours(1)))
            .then_err("task.not_active");
        assert_eq!(
            ReminderTarget::new(DeliveryMethod::Email, "nope")
                .unwrap_err()
                .code(),
            "task.invalid_destination"
        );
        assert!(ReminderTarget::new(DeliveryMethod::Push, "device-token").is_ok());
        assert!(ReminderTarget::new(DeliveryMethod::Push, " ").is_err());
    }

    #[test]
    fn reminder_sent_only_while_pending() {
        let sent = TaskEvent::ReminderSent(ReminderSent {
            task_id: id(),
            reminder_id: rid(1),
            sent_at: now(),
        });
        let cmd = TaskCommand::RecordReminderSent {
            task_id: id(),
            reminder_id: rid(1),
        };
        given::<Task>([created(), scheduled(1)])
            .when(cmd.clone())
            .then([sent.clone()]);
        given::<Task>([created(), scheduled(1), sent])
            .when(cmd.clone())
            .then_err("task.reminder_not_pending");
        given::<Task>([created()])
            .when(cmd)
            .then_err_kind("task.reminder_not_found", ErrorKind::NotFound);
    }

    #[test]
    fn reminder_retries_three_times_then_fails_then_manual_retry() {
        let mut history = vec![created(), scheduled(1)];
        for n in 1..=3 {
            given::<Task>(history.clone())
                .when(fail_cmd())
                .then([failure(n, false)]);
            history.push(failure(n, false));
        }
        let s = given::<Task>(history.clone())
            .when(fail_cmd())
            .then([failure(3, true)])
            .unwrap();
        assert_eq!(s.reminder.unwrap().status, ReminderStatus::Failed);
        history.push(failure(3, true));
        given::<Task>(history.clone())
            .when(fail_cmd())
            .then_err("task.reminder_not_pending");
        let retry = TaskCommand::RetryReminder {
            task_id: id(),
            reminder_id: rid(1),
        };
        let s = given::<Task>(history.clone())
            .when(retry.clone())
            .then([TaskEvent::ReminderRetried(ReminderRetried {
                task_id: id(),
                reminder_id: rid(1),
                retried_at: now(),
            })])
            .unwrap();
        let r = s.reminder.unwrap();
        assert_eq!((r.status, r.retry_count), (ReminderStatus::Pending, 0));
        given::<Task>([created(), scheduled(1)])
            .when(retry)
            .then_err("task.reminder_not_failed");
    }

    #[test]
    fn v1_task_created_is_upcast_with_empty_tags() {
        let mut v2 = created().to_payload();
        let obj = v2.as_object_mut().unwrap();
        obj.remove("tags");
        obj.remove("occurrence");
        let v1 = v2;
        let e = TaskEvent::from_stored("task.created", 1, v1.clone()).unwrap();
        let TaskEvent::Created(c) = e else {
            panic!("wrong variant")
        };
        assert!(c.tags.as_slice().is_empty());
        assert_eq!(c.occurrence, 1);
        // A v2 payload without tags is a bug, not history: it must not be silently fixed.
        assert!(TaskEvent::from_stored("task.created", 2, v1).is_err());
        assert_eq!(
            task_created_v1_to_v2(json!({"tags": ["x"]})).unwrap(),
            json!({"tags": ["x"]})
        );
        assert!(task_created_v1_to_v2(json!([])).is_err());
    }

    #[test]
    fn from_stored_rejects_unknown_types_and_invalid_values() {
        assert!(matches!(
            TaskEvent::from_stored("task.exploded", 1, json!({})),
            Err(crate::UpcastError::UnknownEventType { .. })
        ));
        let mut p = created().to_payload();
        p["title"] = json!("");
        assert!(matches!(
            TaskEvent::from_stored("task.created", 2, p),
            Err(crate::UpcastError::InvalidPayload { .. })
        ));
        assert!(created().to_payload().get("type").is_none());
    }

    #[test]
    fn recurring_completion_yields_one_deterministic_next_occurrence() {
        let mut c = create_cmd();
        c.recurrence = Some(RecurrenceRule {
            pattern: RecurrencePattern::Daily,
            interval: RecurrenceInterval::new(2).unwrap(),
        });
        let history = [created_from(c)];
        let events = given::<Task>(history)
            .when(TaskCommand::CompleteTask { task_id: id() })
            .then_ok();
        let first = recurring::on_task_event(&events[0]);
        let again = recurring::on_task_event(&events[0]);
        assert_eq!(
            first, again,
            "redelivery must produce the identical command"
        );
        let Some(TaskCommand::CreateTask(next)) = first else {
            panic!("expected a create command")
        };
        assert_eq!(next.task_id, recurring::next_occurrence_id(id(), 2));
        assert_ne!(next.task_id, id());
        assert_eq!(next.occurrence, 2);
        assert_eq!(next.parent_task_id, Some(id()));
        // Due tomorrow, completed now, every 2 days -> due in 3 days.
        assert_eq!(next.due_date, Some(now() + Duration::days(3)));

        // Applying the command twice: the second is refused, so only one occurrence exists.
        let created_next = given::<Task>([])
            .when(TaskCommand::CreateTask(next.clone()))
            .then_ok();
        given::<Task>(created_next)
            .when(TaskCommand::CreateTask(next))
            .then_err("task.already_exists");

        assert_eq!(recurring::on_task_event(&completed()), None);
        assert_eq!(recurring::on_task_event(&created()), None);
    }

    #[test]
    fn late_completion_skips_missed_occurrences() {
        let rule = RecurrenceRule {
            pattern: RecurrencePattern::Weekly,
            interval: RecurrenceInterval::new(1).unwrap(),
        };
        let due = now() - Duration::days(20);
        let ev = TaskCompleted {
            task_id: id(),
            completed_at: now(),
            recurring: Some(RecurringSnapshot {
                owner: UserRef::parse("u").unwrap(),
                title: TaskTitle::parse("t").unwrap(),
                description: None,
                due_date: Some(due),
                priority: None,
                tags: Tags::default(),
                reminder_config: None,
                recurrence: rule,
                occurrence: 4,
            }),
        };
        let next = recurring::next_occurrence(&ev).unwrap();
        assert_eq!(next.due_date, Some(due + Duration::days(21)));
        assert_eq!(next.occurrence, 5);
        // The command is decidable at completion time.
        given::<Task>([])
            .with_ctx(ctx())
            .when(TaskCommand::CreateTask(next))
            .then_ok();
    }

    #[test]
    fn monthly_recurrence_clamps_to_month_end() {
        use chrono::TimeZone;
        let rule = RecurrenceRule {
            pattern: RecurrencePattern::Monthly,
            interval: RecurrenceInterval::new(1).unwrap(),
        };
        let jan31 = Utc.with_ymd_and_hms(2025, 1, 31, 9, 0, 0).unwrap();
        let feb28 = Utc.with_ymd_and_hms(2025, 2, 28, 9, 0, 0).unwrap();
        assert_eq!(rule.next_after(jan31), Some(feb28));
    }
}
