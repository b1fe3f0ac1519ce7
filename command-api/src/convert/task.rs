//! `annals.v1.TaskCommands` requests -> [`TaskCommand`]s. Field paths start with `task.`.

use aggregates::task::{
    CreateTask, DeliveryMethod, MAX_TAGS, Priority, RecurrencePattern, RecurrenceRule,
    ReminderConfig, ReminderTarget, ScheduleReminder, Tags, TaskCommand, UpdateTask,
};
use aggregates::values::{LeadTimeMinutes, RecurrenceInterval, ReminderId, TaskId, TaskTitle};
use schemas::v1 as pb;

use super::{
    at, check_len, check_line, enum_value, id, opt_enum_value, opt_id, opt_text, opt_timestamp,
    patch, required, text, timestamp, user_or,
};
use crate::error::ApiError;

fn task_id(s: &str) -> Result<TaskId, ApiError> {
    id("task.task_id", s, TaskId::new)
}

fn reminder_id(s: &str) -> Result<ReminderId, ApiError> {
    id("task.reminder_id", s, ReminderId::new)
}

fn priority(v: pb::TaskPriority) -> Priority {
    match v {
        pb::TaskPriority::Low | pb::TaskPriority::Unspecified => Priority::Low,
        pb::TaskPriority::Medium => Priority::Medium,
        pb::TaskPriority::High => Priority::High,
    }
}

fn delivery(path: &str, v: i32) -> Result<DeliveryMethod, ApiError> {
    Ok(match enum_value::<pb::DeliveryMethod>(path, v)? {
        pb::DeliveryMethod::Email | pb::DeliveryMethod::Unspecified => DeliveryMethod::Email,
        pb::DeliveryMethod::Push => DeliveryMethod::Push,
    })
}

fn tags(path: &str, t: &[String]) -> Result<Tags, ApiError> {
    check_len(path, t, MAX_TAGS)?;
    at(path, Tags::parse(t))
}

fn reminder_config(path: &str, c: &pb::ReminderConfig) -> Result<ReminderConfig, ApiError> {
    Ok(ReminderConfig {
        lead_time_minutes: at(
            &format!("{path}.lead_time_minutes"),
            LeadTimeMinutes::new(c.lead_time_minutes),
        )?,
        delivery_method: delivery(&format!("{path}.delivery_method"), c.delivery_method)?,
    })
}

fn recurrence(path: &str, r: &pb::RecurrenceRule) -> Result<RecurrenceRule, ApiError> {
    use pb::RecurrencePattern as P;
    let pattern = match enum_value::<P>(&format!("{path}.pattern"), r.pattern)? {
        P::Daily | P::Unspecified => RecurrencePattern::Daily,
        P::Weekly => RecurrencePattern::Weekly,
        P::Monthly => RecurrencePattern::Monthly,
        P::Yearly => RecurrencePattern::Yearly,
    };
    Ok(RecurrenceRule {
        pattern,
        interval: at(
            &format!("{path}.interval"),
            RecurrenceInterval::new(r.interval),
        )?,
    })
}

/// `CreateTask`; the owner defaults to the caller. API-created tasks are occurrence 1.
pub(crate) fn create(r: &pb::CreateTaskRequest, actor: &str) -> Result<TaskCommand, ApiError> {
    Ok(TaskCommand::CreateTask(CreateTask {
        task_id: task_id(&r.task_id)?,
        owner: user_or("task.owner", &r.owner, actor)?,
        title: at("task.title", TaskTitle::parse(&r.title))?,
        description: opt_text("task.description", r.description.as_ref())?,
        due_date: opt_timestamp("task.due_date", r.due_date.as_ref())?,
        priority: opt_enum_value::<pb::TaskPriority>("task.priority", r.priority)?.map(priority),
        tags: tags("task.tags", &r.tags)?,
        reminder_config: r
            .reminder_config
            .as_ref()
            .map(|c| reminder_config("task.reminder_config", c))
            .transpose()?,
        recurrence: r
            .recurrence
            .as_ref()
            .map(|c| recurrence("task.recurrence", c))
            .transpose()?,
        parent_task_id: opt_id("task.parent_task_id", &r.parent_task_id, TaskId::new)?,
        occurrence: 1,
    }))
}

/// `UpdateTask`: absent = keep, `clear_*` = remove.
pub(crate) fn update(r: &pb::UpdateTaskRequest) -> Result<TaskCommand, ApiError> {
    let mut u = UpdateTask::new(task_id(&r.task_id)?);
    u.title = r
        .title
        .as_ref()
        .map(|t| at("task.title", TaskTitle::parse(t)))
        .transpose()?;
    u.description = patch(
        "task.description",
        opt_text("task.description", r.description.as_ref())?,
        r.clear_description,
    )?;
    u.due_date = patch(
        "task.due_date",
        opt_timestamp("task.due_date", r.due_date.as_ref())?,
        r.clear_due_date,
    )?;
    u.priority = patch(
        "task.priority",
        opt_enum_value::<pb::TaskPriority>("task.priority", r.priority)?.map(priority),
        r.clear_priority,
    )?;
    u.tags = r
        .tags
        .as_ref()
        .map(|t| tags("task.tags", &t.tags))
        .transpose()?;
    u.reminder_config = patch(
        "task.reminder_config",
        r.reminder_config
            .as_ref()
            .map(|c| reminder_config("task.reminder_config", c))
            .transpose()?,
        r.clear_reminder_config,
    )?;
    u.recurrence = patch(
        "task.recurrence",
        r.recurrence
            .as_ref()
            .map(|c| recurrence("task.recurrence", c))
            .transpose()?,
        r.clear_recurrence,
    )?;
    Ok(TaskCommand::UpdateTask(u))
}

/// `CompleteTask`.
pub(crate) fn complete(r: &pb::CompleteTaskRequest) -> Result<TaskCommand, ApiError> {
    Ok(TaskCommand::CompleteTask {
        task_id: task_id(&r.task_id)?,
    })
}

/// `DeleteTask`.
pub(crate) fn delete(r: &pb::DeleteTaskRequest) -> Result<TaskCommand, ApiError> {
    Ok(TaskCommand::DeleteTask {
        task_id: task_id(&r.task_id)?,
    })
}

/// `RestoreTask`.
pub(crate) fn restore(r: &pb::RestoreTaskRequest) -> Result<TaskCommand, ApiError> {
    Ok(TaskCommand::RestoreTask {
        task_id: task_id(&r.task_id)?,
    })
}

/// `ScheduleReminder`.
pub(crate) fn schedule_reminder(r: &pb::ScheduleReminderRequest) -> Result<TaskCommand, ApiError> {
    check_line("task.destination", &r.destination)?;
    Ok(TaskCommand::ScheduleReminder(ScheduleReminder {
        task_id: task_id(&r.task_id)?,
        reminder_id: reminder_id(&r.reminder_id)?,
        trigger_time: timestamp(
            "task.trigger_time",
            required("task.trigger_time", r.trigger_time.as_ref())?,
        )?,
        target: at(
            "task.destination",
            ReminderTarget::new(
                delivery("task.delivery_method", r.delivery_method)?,
                &r.destination,
            ),
        )?,
    }))
}

/// `RecordReminderSent`.
pub(crate) fn reminder_sent(r: &pb::RecordReminderSentRequest) -> Result<TaskCommand, ApiError> {
    Ok(TaskCommand::RecordReminderSent {
        task_id: task_id(&r.task_id)?,
        reminder_id: reminder_id(&r.reminder_id)?,
    })
}

/// `RecordReminderFailure`.
pub(crate) fn reminder_failure(
    r: &pb::RecordReminderFailureRequest,
) -> Result<TaskCommand, ApiError> {
    Ok(TaskCommand::RecordReminderFailure {
        task_id: task_id(&r.task_id)?,
        reminder_id: reminder_id(&r.reminder_id)?,
        error: text("task.error", &r.error)?,
    })
}

/// `RetryReminder`.
pub(crate) fn retry_reminder(r: &pb::RetryReminderRequest) -> Result<TaskCommand, ApiError> {
    Ok(TaskCommand::RetryReminder {
        task_id: task_id(&r.task_id)?,
        reminder_id: reminder_id(&r.reminder_id)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::CreateTaskRequest {
        pb::CreateTaskRequest {
            task_id: uuid::Uuid::now_v7().to_string(),
            title: "Write report".into(),
            ..Default::default()
        }
    }

    #[test]
    fn long_titles_and_too_many_tags_name_the_field() {
        let mut r = base();
        r.title = "x".repeat(501);
        assert_eq!(
            create(&r, "alice").unwrap_err().to_string(),
            "task.title: must have at most 500 characters (got 501)"
        );
        let mut r = base();
        r.tags = (0..11).map(|i| format!("t{i}")).collect();
        assert_eq!(
            create(&r, "alice").unwrap_err().to_string(),
            "task.tags: must have at most 10 items (got 11)"
        );
    }

    #[test]
    fn owner_defaults_to_the_caller_and_update_refuses_set_and_clear() {
        let TaskCommand::CreateTask(c) = create(&base(), "alice").unwrap() else {
            panic!("not a create");
        };
        assert_eq!(c.owner.as_str(), "alice");
        let r = pb::UpdateTaskRequest {
            task_id: uuid::Uuid::now_v7().to_string(),
            description: Some("d".into()),
            clear_description: true,
            ..Default::default()
        };
        assert!(
            update(&r)
                .unwrap_err()
                .to_string()
                .starts_with("task.description: cannot be set and cleared")
        );
    }
}
