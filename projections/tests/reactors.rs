//! The recurring-task manager and the reminder scheduler issue their commands exactly once,
//! even when the triggering event is delivered twice or the read model lags.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use aggregates::task::{DeliveryMethod, ReminderTarget, ScheduleReminder, Task, TaskCommand};
use aggregates::values::ReminderId;
use event_store::{EventStore, MIGRATOR};
use projections::models;
use projections::reactors::{CommandOutcome, InAppInbox, RecurringTasks, ReminderScheduler};
use projections::testkit::*;
use sqlx::PgPool;

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_recurring_completion_yields_exactly_one_next_occurrence(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = uuid(0x51);
    exec::<Task>(
        &store,
        TENANT,
        id,
        create_task(id, "hana", Some(minutes(60)), true),
        minutes(0),
        "hana",
    )
    .await;
    exec::<Task>(
        &store,
        TENANT,
        id,
        TaskCommand::CompleteTask {
            task_id: task_id(id),
        },
        minutes(30),
        "hana",
    )
    .await;
    let completed = all_events(&store)
        .await
        .into_iter()
        .find(|e| e.event_type == "task.completed")
        .unwrap();

    let reactor = RecurringTasks::new(store.clone());
    assert_eq!(
        reactor.handle(&completed).await.unwrap(),
        CommandOutcome::Appended
    );
    assert_eq!(
        reactor.handle(&completed).await.unwrap(),
        CommandOutcome::AlreadyDone
    );
    // Even with the command log answer gone, the domain refuses a second create.
    sqlx::query("DELETE FROM command_log")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        reactor.handle(&completed).await.unwrap(),
        CommandOutcome::AlreadyDone
    );

    catch_up(&store, models::by_name("tasks").unwrap(), 100).await;
    let rows: Vec<(uuid::Uuid, i32, Option<uuid::Uuid>, String)> = sqlx::query_as(
        "SELECT task_id, occurrence, parent_task_id, status FROM tasks ORDER BY occurrence",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].1, 2);
    assert_eq!(rows[1].2, Some(id));
    assert_eq!(rows[1].3, "active");
    let audit: (String, String, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT actor, actor_type, causation_id FROM audit_log WHERE resource_id = $1",
    )
    .bind(rows[1].0.to_string())
    .fetch_one(&pool)
    .await
    .unwrap_or_else(|_| (String::new(), String::new(), None));
    // The audit projection has not run yet in this test; run it and look again.
    if audit.0.is_empty() {
        catch_up(&store, models::by_name("audit").unwrap(), 100).await;
    }
    let audit: (String, String, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT actor, actor_type, causation_id FROM audit_log WHERE resource_id = $1",
    )
    .bind(rows[1].0.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        (
            "recurring-task-manager".into(),
            "system".into(),
            Some(completed.event_id)
        )
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_due_reminder_is_delivered_to_the_inbox_once(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = uuid(0x61);
    exec::<Task>(
        &store,
        TENANT,
        id,
        create_task(id, "ivan", Some(minutes(600)), false),
        minutes(0),
        "ivan",
    )
    .await;
    exec::<Task>(
        &store,
        TENANT,
        id,
        TaskCommand::ScheduleReminder(ScheduleReminder {
            task_id: task_id(id),
            reminder_id: ReminderId::new(uuid(0x62)).unwrap(),
            trigger_time: minutes(90),
            target: ReminderTarget::new(DeliveryMethod::Push, "device-1").unwrap(),
        }),
        minutes(1),
        "ivan",
    )
    .await;
    let tasks = models::by_name("tasks").unwrap();
    catch_up(&store, tasks.clone(), 100).await;
    let scheduler = ReminderScheduler::new(store.clone(), Arc::new(InAppInbox::new(pool.clone())));
    assert_eq!(scheduler.tick(minutes(89)).await.unwrap(), 0, "not due yet");
    assert_eq!(scheduler.tick(minutes(91)).await.unwrap(), 1);
    // The read model has not seen `reminder_sent` yet: the reminder looks due again, but the
    // delivery and the command are idempotent.
    assert_eq!(scheduler.tick(minutes(92)).await.unwrap(), 1);
    catch_up(&store, tasks.clone(), 100).await;
    assert_eq!(scheduler.tick(minutes(93)).await.unwrap(), 0);

    let sent: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id = $1 AND event_type = 'task.reminder_sent'",
    )
    .bind(id.to_string())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(sent.len(), 1);
    let inbox: Vec<(String, String, Option<String>, String)> =
        sqlx::query_as("SELECT user_ref, kind, requested_channel, title FROM notifications")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        inbox,
        vec![(
            "ivan".into(),
            "task_reminder".into(),
            Some("push".into()),
            format!("task {id}")
        )]
    );
    let status: String = sqlx::query_scalar("SELECT status FROM task_reminders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "sent");
}
