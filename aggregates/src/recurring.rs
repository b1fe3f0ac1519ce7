//! Process manager for recurring tasks: `task.completed` of a recurring task -> one `CreateTask`.
//!
//! It is a pure function of the event, so the component that runs it (a projection-style
//! subscriber) can redeliver freely: the next occurrence's id is a UUID v5 of the completed
//! task's id and the next occurrence number, so a second delivery issues the *same* create,
//! which the task aggregate refuses with `task.already_exists` (treat that as success).
//!
//! The next due date is the completed occurrence's due date advanced by the rule until it lies
//! after the completion time (so completing late does not spawn an already-overdue task); a task
//! without a due date gets one interval after its completion.

use chrono::{DateTime, Utc};

use crate::task::{CreateTask, RecurringSnapshot, TaskCommand, TaskCompleted, TaskEvent};
use crate::values::TaskId;

// Bounds the catch-up loop for absurdly old due dates; after that we restart from completion.
const MAX_CATCH_UP_STEPS: u32 = 10_000;

/// Deterministic id of occurrence `occurrence` following `completed`.
pub fn next_occurrence_id(completed: TaskId, occurrence: u32) -> TaskId {
    TaskId::derived(&format!("task/{completed}/occurrence/{occurrence}"))
}

/// Reacts to a task event: `Some(CreateTask)` exactly for `task.completed` of a recurring task.
pub fn on_task_event(event: &TaskEvent) -> Option<TaskCommand> {
    match event {
        TaskEvent::Completed(c) => next_occurrence(c).map(TaskCommand::CreateTask),
        _ => None,
    }
}

/// The create command for the occurrence after `completed`, if the task recurs.
pub fn next_occurrence(completed: &TaskCompleted) -> Option<CreateTask> {
    let s: &RecurringSnapshot = completed.recurring.as_ref()?;
    let occurrence = s.occurrence.checked_add(1)?;
    let due_date = next_due(s, completed.completed_at)?;
    Some(CreateTask {
        task_id: next_occurrence_id(completed.task_id, occurrence),
        owner: s.owner.clone(),
        title: s.title.clone(),
        description: s.description.clone(),
        due_date: Some(due_date),
        priority: s.priority,
        tags: s.tags.clone(),
        reminder_config: s.reminder_config,
        recurrence: Some(s.recurrence),
        parent_task_id: Some(completed.task_id),
        occurrence,
    })
}

fn next_due(s: &RecurringSnapshot, completed_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Some(mut due) = s.due_date {
        for _ in 0..MAX_CATCH_UP_STEPS {
            due = s.recurrence.next_after(due)?;
            if due > completed_at {
                return Some(due);
            }
        }
    }
    s.recurrence.next_after(completed_at)
}
