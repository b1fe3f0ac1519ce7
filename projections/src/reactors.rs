//! Reactors: components that turn events (or time) into commands, idempotently.
//!
//! - [`RecurringTasks`] follows `task` streams from its checkpoint; for each `task.completed` of
//!   a recurring task it issues the next occurrence's `CreateTask`
//!   ([`aggregates::recurring::on_task_event`]). The command id is a UUID v5 of the triggering
//!   event id and the decision's clock is the completion time, so a redelivered event issues the
//!   identical command: the store answers it from its command log, or the aggregate refuses it
//!   with `task.already_exists`, which counts as success. Exactly one next occurrence exists.
//! - [`ReminderScheduler`] wakes periodically, finds due reminders in the `tasks` read model
//!   (`task_reminders`: pending, current, task active, trigger time passed, retry backoff over),
//!   delivers each through a [`ReminderChannel`] and records the outcome with
//!   `RecordReminderSent` / `RecordReminderFailure`. Ids derive from the event that armed the
//!   reminder (`armed_by_event_id`), so one arming is delivered and recorded at most once even
//!   if the read model lags behind the command.
//!
//! Commands go through [`execute_task_command`], i.e. the event store's one fold loop
//! ([`event_store::aggregate::execute`]: load, fold, `decide`, append at the loaded version; a
//! create appends without loading), retried on a version conflict.

use std::sync::Arc;
use std::time::Duration;

use aggregates::task::{Task, TaskCommand, TaskEvent};
use aggregates::values::{ReminderId, TaskId, Text};
use aggregates::{Aggregate, CommandContext, DomainEvent};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::aggregate::{self, Executed, Execution, Refusal, Target};
use event_store::{
    AppendBatch, EventStore, Metadata, Position, RecordedEvent, StoreError, StreamId,
    SubscriptionOptions,
};
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::projection::ProjectionError;

/// Namespace of the reactors' derived ids (command ids, notification ids).
pub const REACTOR_NAMESPACE: Uuid = Uuid::from_u128(0x3c5e_9a0d_7b21_4f6e_8d4c_2a1b_0e9f_7c6d);

/// Most conflicts retried before a command gives up (it is retried on the next delivery).
const MAX_CONFLICT_RETRIES: u32 = 10;

/// How a command issued by a reactor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Appended now.
    Appended,
    /// Already done: answered from the command log, or refused as already applied.
    AlreadyDone,
    /// Decided to no events.
    Nothing,
}

/// Decides `command` against the task stream and appends it idempotently under `command_id`.
///
/// `already_done` lists domain error codes that mean "the effect already exists" (for example
/// `task.already_exists` for a create issued twice).
pub async fn execute_task_command(
    store: &EventStore,
    command: TaskCommand,
    command_id: Uuid,
    ctx: &CommandContext,
    metadata: Metadata,
    already_done: &[&str],
) -> Result<CommandOutcome, ProjectionError> {
    let stream = StreamId::new(command.task_id().to_string())?;
    // The fingerprint names the command, not its timestamps: a retry after a crash decides at
    // another `now` and must still count as the same request.
    let mut fingerprint = [0_u8; 32];
    fingerprint[..16].copy_from_slice(command_id.as_bytes());
    fingerprint[16..].copy_from_slice(
        Uuid::new_v5(&REACTOR_NAMESPACE, format!("{command:?}").as_bytes()).as_bytes(),
    );
    let target = match command {
        TaskCommand::CreateTask(_) => Target::Create,
        _ => Target::Existing,
    };
    for _ in 0..MAX_CONFLICT_RETRIES {
        let execution = Execution::<Task> {
            stream: &stream,
            target,
            expected: None,
            command: command.clone(),
            context: ctx.clone(),
            batch: AppendBatch::new(metadata.clone())
                .idempotent_with_fingerprint(command_id, fingerprint),
        };
        match aggregate::execute(store, execution).await {
            Ok(Ok(Executed {
                appended: Some(r), ..
            })) if r.replayed => return Ok(CommandOutcome::AlreadyDone),
            Ok(Ok(Executed {
                appended: Some(_), ..
            })) => return Ok(CommandOutcome::Appended),
            Ok(Ok(Executed { appended: None, .. })) => return Ok(CommandOutcome::Nothing),
            Ok(Err(Refusal::Domain(err))) if already_done.contains(&err.code()) => {
                return Ok(CommandOutcome::AlreadyDone);
            }
            Ok(Err(refusal)) => return Err(ProjectionError::Refused(format!("{refusal:?}"))),
            // A concurrent writer won: decide again on the stream as it is now.
            Err(StoreError::WrongExpectedVersion { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ProjectionError::Refused(format!(
        "command {command_id}: gave up after {MAX_CONFLICT_RETRIES} version conflicts"
    )))
}

/// Metadata of a command issued by a reactor in reaction to `trigger`.
fn reactor_metadata(
    trigger_tenant: &str,
    actor: &str,
    trigger: Option<&RecordedEvent>,
) -> Metadata {
    let mut m = Metadata::new(trigger_tenant, actor, "system");
    if let Some(t) = trigger {
        let origin = t.metadata().ok();
        m.correlation_id = origin
            .as_ref()
            .and_then(|o| o.correlation_id)
            .or(Some(t.event_id));
        m.causation_id = Some(t.event_id);
    }
    m
}

/// The recurring-task process manager.
#[derive(Debug, Clone)]
pub struct RecurringTasks {
    store: EventStore,
}

impl RecurringTasks {
    /// Checkpoint name.
    pub const CHECKPOINT: &'static str = "reactor:recurring_tasks";
    /// Actor of its commands.
    pub const ACTOR: &'static str = "recurring-task-manager";

    /// A process manager over `store`.
    pub fn new(store: EventStore) -> Self {
        Self { store }
    }

    /// Reacts to one event: issues the next occurrence for a recurring `task.completed`.
    pub async fn handle(&self, event: &RecordedEvent) -> Result<CommandOutcome, ProjectionError> {
        if event.event_type != "task.completed" {
            return Ok(CommandOutcome::Nothing);
        }
        let task_event = TaskEvent::from_stored(
            &event.event_type,
            event.schema_version,
            event.payload_json()?,
        )
        .map_err(|e| ProjectionError::decode(event, e))?;
        let TaskEvent::Completed(completed) = &task_event else {
            return Ok(CommandOutcome::Nothing);
        };
        let Some(command) = aggregates::recurring::on_task_event(&task_event) else {
            return Ok(CommandOutcome::Nothing);
        };
        let command_id = Uuid::new_v5(
            &REACTOR_NAMESPACE,
            format!("recurring/{}", event.event_id).as_bytes(),
        );
        // The completion time is the decision's clock: deterministic under redelivery.
        let ctx = CommandContext::new(completed.completed_at, Self::ACTOR);
        let outcome = execute_task_command(
            &self.store,
            command,
            command_id,
            &ctx,
            reactor_metadata(&event.tenant_id, Self::ACTOR, Some(event)),
            &["task.already_exists"],
        )
        .await?;
        tracing::info!(trigger = %event.event_id, task = %event.stream_id, ?outcome,
            "recurring task: next occurrence");
        Ok(outcome)
    }

    /// Follows task events from the checkpoint until `shutdown`. The checkpoint is saved after
    /// each batch's commands (at-least-once; the commands are idempotent).
    pub async fn run(&self, shutdown: &CancellationToken) -> Result<(), ProjectionError> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let from = self.store.load_checkpoint(Self::CHECKPOINT).await?;
            let mut sub = self.store.subscribe(
                from,
                SubscriptionOptions {
                    stream_types: Some(vec![Task::STREAM_TYPE.to_owned()]),
                    ..SubscriptionOptions::default()
                },
            );
            let result: Result<(), ProjectionError> = async {
                loop {
                    let batch = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        b = sub.next_batch() => b?,
                    };
                    for event in &batch {
                        match self.handle(event).await {
                            // Undecodable is permanent: retrying would stall every later
                            // completion behind it. It cannot describe a valid recurring task,
                            // so nothing is lost by passing it; it is logged and counted.
                            Err(err @ ProjectionError::Decode { .. }) => {
                                tracing::error!(event_id = %event.event_id, error = %err,
                                    "recurring-task manager skips an undecodable event");
                                metrics::counter!("annals_reactor_skipped_events_total",
                                    "reactor" => "recurring_tasks")
                                .increment(1);
                            }
                            other => {
                                other?;
                            }
                        }
                    }
                    if let Some(last) = batch.last() {
                        event_store::save_checkpoint(
                            self.store.pool(),
                            Self::CHECKPOINT,
                            last.global_position,
                        )
                        .await?;
                    }
                }
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "recurring-task manager failed; restarting");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// A due reminder, as the scheduler hands it to a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReminder {
    /// Reminder id.
    pub reminder_id: Uuid,
    /// Task id.
    pub task_id: Uuid,
    /// Tenant.
    pub tenant_id: String,
    /// The task's owner (the recipient).
    pub owner: String,
    /// Task title.
    pub title: String,
    /// Task due date.
    pub due_date: Option<DateTime<Utc>>,
    /// Requested channel (`email`, `push`).
    pub delivery_method: String,
    /// Address or device token.
    pub destination: String,
    /// Event that armed this delivery; ids derive from it.
    pub armed_by_event_id: Uuid,
    /// Its position.
    pub armed_at_position: i64,
}

/// A delivery channel for reminders. The in-app inbox ([`InAppInbox`]) is the one real channel
/// here; e-mail or push providers plug in behind this trait.
#[async_trait]
pub trait ReminderChannel: Send + Sync {
    /// Delivers `reminder`; must be idempotent per `armed_by_event_id`.
    async fn deliver(&self, reminder: &DueReminder) -> Result<(), String>;
}

/// Delivers reminders into the `notifications` table, one row per arming (id = UUID v5 of the
/// arming event), whatever channel was requested: the requested channel and destination are
/// kept on the row for a real provider to pick up.
#[derive(Debug, Clone)]
pub struct InAppInbox {
    pool: PgPool,
}

impl InAppInbox {
    /// An inbox in `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Id of the notification delivering the arming `armed_by_event_id`.
    pub fn notification_id(armed_by_event_id: Uuid) -> Uuid {
        Uuid::new_v5(
            &REACTOR_NAMESPACE,
            format!("notification/{armed_by_event_id}").as_bytes(),
        )
    }
}

#[async_trait]
impl ReminderChannel for InAppInbox {
    async fn deliver(&self, r: &DueReminder) -> Result<(), String> {
        let body = match r.due_date {
            Some(due) => format!("\"{}\" is due at {}", r.title, due.to_rfc3339()),
            None => format!("Reminder: \"{}\"", r.title),
        };
        sqlx::query(
            "INSERT INTO notifications (notification_id, tenant_id, user_ref, kind, task_id, \
               reminder_id, requested_channel, destination, title, body, created_at, last_position) \
             VALUES ($1, $2, $3, 'task_reminder', $4, $5, $6, $7, $8, $9, now(), $10) \
             ON CONFLICT (notification_id) DO NOTHING",
        )
        .bind(Self::notification_id(r.armed_by_event_id))
        .bind(&r.tenant_id)
        .bind(&r.owner)
        .bind(r.task_id)
        .bind(r.reminder_id)
        .bind(&r.delivery_method)
        .bind(&r.destination)
        .bind(&r.title)
        .bind(body)
        .bind(r.armed_at_position)
        .execute(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The reminder scheduler.
pub struct ReminderScheduler {
    store: EventStore,
    channel: Arc<dyn ReminderChannel>,
    /// Pause between scans.
    pub interval: Duration,
    /// Base delay before a retry after a failed delivery (times the retry count).
    pub retry_backoff: Duration,
}

impl std::fmt::Debug for ReminderScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReminderScheduler")
            .field("interval", &self.interval)
            .finish()
    }
}

impl ReminderScheduler {
    /// Actor of its commands.
    pub const ACTOR: &'static str = "reminder-scheduler";

    /// A scheduler delivering through `channel`.
    pub fn new(store: EventStore, channel: Arc<dyn ReminderChannel>) -> Self {
        Self {
            store,
            channel,
            interval: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(60),
        }
    }

    /// Reminders due at `now`.
    pub async fn due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<DueReminder>, ProjectionError> {
        let rows = sqlx::query(
            "SELECT r.reminder_id, r.task_id, r.tenant_id, r.owner, t.title, t.due_date, \
               r.delivery_method, r.destination, r.armed_by_event_id, r.last_position \
               FROM task_reminders r JOIN tasks t ON t.tenant_id = r.tenant_id AND t.task_id = r.task_id \
              WHERE r.status = 'pending' AND r.is_current AND t.status = 'active' \
                AND r.trigger_time <= $1 \
                AND (r.last_retry_at IS NULL \
                     OR r.last_retry_at + make_interval(secs => $2 * r.retry_count) <= $1) \
              ORDER BY r.trigger_time LIMIT $3",
        )
        .bind(now)
        .bind(self.retry_backoff.as_secs_f64())
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueReminder {
                    reminder_id: r.try_get("reminder_id")?,
                    task_id: r.try_get("task_id")?,
                    tenant_id: r.try_get("tenant_id")?,
                    owner: r.try_get("owner")?,
                    title: r.try_get("title")?,
                    due_date: r.try_get("due_date")?,
                    delivery_method: r.try_get("delivery_method")?,
                    destination: r.try_get("destination")?,
                    armed_by_event_id: r.try_get("armed_by_event_id")?,
                    armed_at_position: r.try_get("last_position")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Delivers every reminder due at `now` and records the outcomes; returns how many were
    /// handled.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize, ProjectionError> {
        let due = self.due(now, 100).await?;
        for r in &due {
            let task_id =
                TaskId::new(r.task_id).map_err(|e| ProjectionError::Refused(e.to_string()))?;
            let reminder_id = ReminderId::new(r.reminder_id)
                .map_err(|e| ProjectionError::Refused(e.to_string()))?;
            let (command, kind) = match self.channel.deliver(r).await {
                Ok(()) => (
                    TaskCommand::RecordReminderSent {
                        task_id,
                        reminder_id,
                    },
                    "sent",
                ),
                Err(error) => {
                    tracing::warn!(reminder = %r.reminder_id, %error, "reminder delivery failed");
                    let error = Text::parse("error", error.chars().take(1000).collect::<String>())
                        .or_else(|_| Text::parse("error", "delivery failed"))
                        .map_err(|e| ProjectionError::Refused(e.to_string()))?;
                    (
                        TaskCommand::RecordReminderFailure {
                            task_id,
                            reminder_id,
                            error,
                        },
                        "failed",
                    )
                }
            };
            let command_id = Uuid::new_v5(
                &REACTOR_NAMESPACE,
                format!("reminder/{kind}/{}", r.armed_by_event_id).as_bytes(),
            );
            let mut meta = Metadata::new(&r.tenant_id, Self::ACTOR, "system");
            meta.causation_id = Some(r.armed_by_event_id);
            let outcome = execute_task_command(
                &self.store,
                command,
                command_id,
                &CommandContext::new(now, Self::ACTOR),
                meta,
                // The read model lagged: the outcome of this arming is already recorded.
                &["task.reminder_not_pending"],
            )
            .await?;
            tracing::info!(reminder = %r.reminder_id, kind, ?outcome, "reminder handled");
        }
        Ok(due.len())
    }

    /// Scans every `interval` until `shutdown`.
    pub async fn run(&self, shutdown: &CancellationToken) -> Result<(), ProjectionError> {
        loop {
            if let Err(err) = self.tick(Utc::now()).await {
                tracing::warn!(error = %err, "reminder scan failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

/// Position helper for tests and tools: the store's head.
pub async fn store_head(store: &EventStore) -> Result<Position, ProjectionError> {
    Ok(store.head_position().await?)
}
