//! `TaskQueries`: tasks (overdue derived at read time) and reminders.

use aggregates::task::TaskStatus;
use chrono::{DateTime, Utc};
use projections::models::tasks::reads::{
    GET_TASK, LIST_DUE_REMINDERS, LIST_TASKS, ReminderRow, TASK_REMINDERS, TaskAt, TaskRow,
    TaskWithReminders, get_task_with_reminders, get_task_with_reminders_walled, list_tasks_at,
    list_tasks_at_walled,
};
use schemas::v1 as pb;
use schemas::v1::task_queries_server::TaskQueries;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::QueryService;
use crate::convert::{self, s, spellings, ts, ts_opt};
use crate::cursor::{Cursor, page_size, paginate, time_key};
use crate::error::QueryError;
use crate::reader::{Model, typed_position};

/// Most reminders returned with one task (a task keeps every reminder ever scheduled).
const MAX_TASK_REMINDERS: i64 = 500;

/// A task as the API shows it.
fn task_view(r: TaskRow) -> pb::TaskView {
    pb::TaskView {
        task_id: r.task_id.to_string(),
        owner: r.owner,
        title: r.title,
        description: s(r.description),
        due_date: ts_opt(r.due_date),
        priority: s(r.priority),
        tags: r.tags,
        reminder_config_json: s(r.reminder_config),
        recurrence_json: s(r.recurrence),
        parent_task_id: convert::id(r.parent_task_id),
        occurrence: convert::u32_of(i64::from(r.occurrence)),
        status: r.status,
        overdue: r.overdue,
        created_by: r.created_by,
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        completed_at: ts_opt(r.completed_at),
        deleted_at: ts_opt(r.deleted_at),
        version: convert::u64_of(r.version),
        last_position: r.last_position,
    }
}

/// A reminder as the API shows it.
fn reminder_view(r: ReminderRow) -> pb::ReminderView {
    pb::ReminderView {
        reminder_id: r.reminder_id.to_string(),
        task_id: r.task_id.to_string(),
        owner: r.owner,
        trigger_time: Some(ts(r.trigger_time)),
        delivery_method: r.delivery_method,
        destination: r.destination,
        status: r.status,
        is_current: r.is_current,
        retry_count: convert::u32_of(i64::from(r.retry_count)),
        last_error: s(r.last_error),
        sent_at: ts_opt(r.sent_at),
        scheduled_at: Some(ts(r.scheduled_at)),
    }
}

/// GetTask's one statement behind the second wall (see [`get_task_with_reminders_walled!`]).
const GET_TASK_WALLED: &str = get_task_with_reminders_walled!(typed_position!());

/// GetTask's one statement without the second wall.
const GET_TASK_PLAIN: &str = get_task_with_reminders!(typed_position!());

/// ListTasks' one statement behind the second wall (see [`list_tasks_at_walled!`]).
const LIST_TASKS_WALLED: &str = list_tasks_at_walled!(typed_position!());

/// ListTasks' one statement without the second wall.
const LIST_TASKS_PLAIN: &str = list_tasks_at!(typed_position!());

/// A validated ListTasks request.
struct ListTasksArgs {
    /// Rows per page.
    limit: i64,
    /// The previous page's last `(created_at, task_id)`.
    after: Option<(DateTime<Utc>, Uuid)>,
    owner: Option<String>,
    status: Option<String>,
    tag: Option<String>,
    due_from: Option<DateTime<Utc>>,
    due_to: Option<DateTime<Utc>>,
    overdue_only: bool,
}

#[tonic::async_trait]
impl TaskQueries for QueryService {
    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        self.lookup(
            "GetTask",
            request,
            Model::Tasks,
            |req, _| convert::uuid("task_id", &req.task_id),
            |f, id| {
                Box::pin(async move {
                    let Some((checkpoint, types)) = f.reader.typed(Model::Tasks) else {
                        return Ok(None);
                    };
                    let sql = if f.reader.row_level_security() {
                        GET_TASK_WALLED
                    } else {
                        GET_TASK_PLAIN
                    };
                    let found: Option<TaskWithReminders> = sqlx::query_as(sql)
                        .bind(checkpoint)
                        .bind(types)
                        .bind(f.principal.tenant.as_str())
                        .bind(*id)
                        .bind(MAX_TASK_REMINDERS)
                        .fetch_optional(f.reader.pool())
                        .await?;
                    // Not there (yet): the full path waits for `min_position` or says NOT_FOUND.
                    let Some(found) = found.filter(|t| t.position >= f.min_position) else {
                        return Ok(None);
                    };
                    let reminders = found.reminders.into_rows(found.task.task_id);
                    Ok(Some(pb::GetTaskResponse {
                        position: found.position,
                        task: Some(task_view(found.task)),
                        reminders: reminders.map(reminder_view).collect(),
                    }))
                })
            },
            |q, _, id| {
                Box::pin(async move {
                    let task: TaskRow = sqlx::query_as(GET_TASK)
                        .bind(q.tenant())
                        .bind(id)
                        .fetch_optional(&mut *q.conn)
                        .await?
                        .ok_or_else(|| QueryError::NotFound(format!("task {id}")))?;
                    let reminders: Vec<ReminderRow> = sqlx::query_as(TASK_REMINDERS)
                        .bind(q.tenant())
                        .bind(id)
                        .bind(MAX_TASK_REMINDERS)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    Ok(pb::GetTaskResponse {
                        position: q.position,
                        task: Some(task_view(task)),
                        reminders: reminders.into_iter().map(reminder_view).collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        const RPC: &str = "ListTasks";
        self.lookup(
            RPC,
            request,
            Model::Tasks,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let cursor = Cursor::decode(&req.page_token, RPC, 2)?;
                let after = match &cursor {
                    Some(c) => Some((c.time(0)?, c.uuid(1)?)),
                    None => None,
                };
                let owner = convert::filter("owner", &req.owner)?;
                let status = convert::vocab("status", &req.status, &spellings!(TaskStatus))?;
                let tag = convert::filter("tag", &req.tag)?;
                Ok(ListTasksArgs {
                    limit,
                    after,
                    owner,
                    status,
                    tag,
                    due_from: convert::time("due_from", req.due_from.as_ref())?,
                    due_to: convert::time("due_to", req.due_to.as_ref())?,
                    overdue_only: req.overdue_only,
                })
            },
            |f, a| {
                Box::pin(async move {
                    let Some((checkpoint, types)) = f.reader.typed(Model::Tasks) else {
                        return Ok(None);
                    };
                    let sql = if f.reader.row_level_security() {
                        LIST_TASKS_WALLED
                    } else {
                        LIST_TASKS_PLAIN
                    };
                    let rows: Vec<TaskAt> = sqlx::query_as(sql)
                        .bind(checkpoint)
                        .bind(types)
                        .bind(f.principal.tenant.as_str())
                        .bind(a.owner.as_deref())
                        .bind(a.status.as_deref())
                        .bind(a.tag.as_deref())
                        .bind(a.due_from)
                        .bind(a.due_to)
                        .bind(a.overdue_only)
                        .bind(a.after.map(|k| k.0))
                        .bind(a.after.map(|k| k.1))
                        .bind(a.limit + 1)
                        .fetch_all(f.reader.pool())
                        .await?;
                    // An empty page carries no position, and a position short of
                    // `min_position` must wait: the full path answers both.
                    let Some(position) = rows.first().map(|r| r.position) else {
                        return Ok(None);
                    };
                    if position < f.min_position {
                        return Ok(None);
                    }
                    let (rows, next_page_token) = paginate(rows, a.limit, RPC, |r| {
                        vec![time_key(&r.task.created_at), r.task.task_id.to_string()]
                    });
                    Ok(Some(pb::ListTasksResponse {
                        position,
                        next_page_token,
                        tasks: rows.into_iter().map(|r| task_view(r.task)).collect(),
                    }))
                })
            },
            |q, _, a| {
                Box::pin(async move {
                    let rows: Vec<TaskRow> = sqlx::query_as(LIST_TASKS)
                        .bind(q.tenant())
                        .bind(a.owner)
                        .bind(a.status)
                        .bind(a.tag)
                        .bind(a.due_from)
                        .bind(a.due_to)
                        .bind(a.overdue_only)
                        .bind(a.after.map(|k| k.0))
                        .bind(a.after.map(|k| k.1))
                        .bind(a.limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, a.limit, RPC, |r| {
                        vec![time_key(&r.created_at), r.task_id.to_string()]
                    });
                    Ok(pb::ListTasksResponse {
                        position: q.position,
                        next_page_token,
                        tasks: rows.into_iter().map(task_view).collect(),
                    })
                })
            },
        )
        .await
    }

    async fn list_due_reminders(
        &self,
        request: Request<pb::ListDueRemindersRequest>,
    ) -> Result<Response<pb::ListDueRemindersResponse>, Status> {
        const RPC: &str = "ListDueReminders";
        self.read(
            RPC,
            request,
            Model::Tasks,
            |req, _| {
                let limit = page_size(req.page_size)?;
                let cursor = Cursor::decode(&req.page_token, RPC, 2)?;
                let after = match &cursor {
                    Some(c) => Some((c.time(0)?, c.uuid(1)?)),
                    None => None,
                };
                let due_before =
                    convert::time("due_before", req.due_before.as_ref())?.unwrap_or_else(Utc::now);
                let owner = convert::filter("owner", &req.owner)?;
                Ok((limit, after, due_before, owner))
            },
            |q, _, (limit, after, due_before, owner)| {
                Box::pin(async move {
                    let rows: Vec<ReminderRow> = sqlx::query_as(LIST_DUE_REMINDERS)
                        .bind(q.tenant())
                        .bind(due_before)
                        .bind(owner)
                        .bind(after.map(|a| a.0))
                        .bind(after.map(|a| a.1))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
                        vec![time_key(&r.trigger_time), r.reminder_id.to_string()]
                    });
                    Ok(pb::ListDueRemindersResponse {
                        position: q.position,
                        next_page_token,
                        reminders: rows.into_iter().map(reminder_view).collect(),
                    })
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aggregates::task::Task;
    use event_store::{EventStore, MIGRATOR};
    use projections::testkit::{catch_up, create_task, exec, minutes, t0, uuid};
    use sqlx::PgPool;
    use sqlx::postgres::PgPoolOptions;

    use super::*;
    use crate::reader::Reader;

    /// Stores `n` reminders of `task` straight into the read model, scheduled a minute apart
    /// (the second one with an error and a send time), so that order and NULLs show.
    async fn reminders(pool: &PgPool, tenant: &str, task: Uuid, n: u128) {
        for i in 0..n {
            sqlx::query(
                "INSERT INTO task_reminders (reminder_id, task_id, tenant_id, owner, trigger_time, \
                   delivery_method, destination, status, is_current, retry_count, last_error, \
                   sent_at, scheduled_at, armed_by_event_id, last_position) \
                 VALUES ($1, $2, $3, 'ann', $4, 'email', 'ann@example.com', $5, $6, $7, $8, $9, \
                         $10, $1, 1)",
            )
            .bind(uuid(0x900 + i))
            .bind(task)
            .bind(tenant)
            .bind(minutes(60 + i as i64))
            .bind(if i == 1 { "failed" } else { "pending" })
            .bind(i + 1 == n)
            .bind(i as i16)
            .bind((i == 1).then_some("smtp said no"))
            .bind((i == 1).then(|| minutes(61)))
            .bind(minutes(i as i64))
            .execute(pool)
            .await
            .unwrap();
        }
    }

    /// The walled one-statement reads answer the caller's own task (with its reminders, in the
    /// order and with the values the session path reads) and own page, nothing of another
    /// tenant, and leave nothing behind on the pooled connection: role and tenant end with the
    /// statement (one connection, so the next statement runs on the very same session).
    #[sqlx::test(migrator = "MIGRATOR")]
    async fn the_walled_reads_answer_own_rows_and_leave_the_session_clean(pool: PgPool) {
        let store = EventStore::new(pool.clone());
        let (mine, theirs) = (uuid(1), uuid(2));
        for (tenant, id) in [("acme", mine), ("globex", theirs)] {
            exec::<Task>(
                &store,
                tenant,
                id,
                create_task(id, "ann", None, false),
                t0(),
                "ann",
            )
            .await;
        }
        let projection = projections::models::by_name("tasks").unwrap();
        catch_up(&store, projection, 100).await;
        reminders(&pool, "acme", mine, 3).await;
        reminders(&pool, "globex", theirs, 1).await;
        let one = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap();
        let reader = Reader::new(one.clone(), true, Duration::from_secs(1));
        let (checkpoint, types) = reader.typed(Model::Tasks).unwrap();
        let get = |sql, id| {
            sqlx::query_as::<_, TaskWithReminders>(sql)
                .bind(checkpoint)
                .bind(types)
                .bind("acme")
                .bind(id)
                .bind(MAX_TASK_REMINDERS)
                .fetch_optional(&one)
        };
        let login: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&one)
            .await
            .unwrap();
        let session: Vec<ReminderRow> = sqlx::query_as(TASK_REMINDERS)
            .bind("acme")
            .bind(mine)
            .bind(MAX_TASK_REMINDERS)
            .fetch_all(&one)
            .await
            .unwrap();
        assert_eq!(session.len(), 3);
        for sql in [GET_TASK_WALLED, GET_TASK_PLAIN] {
            let found = get(sql, mine).await.unwrap().expect("own task");
            assert_eq!(found.task.task_id, mine);
            assert!(found.position > 0);
            let read: Vec<ReminderRow> = found.reminders.into_rows(mine).collect();
            assert_eq!(format!("{read:?}"), format!("{session:?}"));
            assert!(get(sql, theirs).await.unwrap().is_none());
        }
        for sql in [LIST_TASKS_WALLED, LIST_TASKS_PLAIN] {
            let page: Vec<TaskAt> = sqlx::query_as(sql)
                .bind(checkpoint)
                .bind(types)
                .bind("acme")
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(None::<DateTime<Utc>>)
                .bind(None::<DateTime<Utc>>)
                .bind(false)
                .bind(None::<DateTime<Utc>>)
                .bind(None::<Uuid>)
                .bind(51_i64)
                .fetch_all(&one)
                .await
                .unwrap();
            assert_eq!(page.len(), 1);
            assert_eq!(page[0].task.task_id, mine);
            assert!(page[0].position > 0);
        }
        let (user, tenant): (String, Option<String>) = sqlx::query_as(
            "SELECT current_user::text, nullif(current_setting('annals.tenant', true), '')",
        )
        .fetch_one(&one)
        .await
        .unwrap();
        assert_eq!((user, tenant), (login, None));
    }

    /// Both functions raise the second wall for their tenant argument: after the call the
    /// transaction runs as `annals_reader`, read-only, for that tenant, so even a statement
    /// without a tenant filter sees that tenant's rows only.
    #[sqlx::test(migrator = "MIGRATOR")]
    async fn the_functions_raise_the_wall_for_their_tenant(pool: PgPool) {
        let store = EventStore::new(pool.clone());
        for (tenant, id) in [("acme", uuid(7)), ("globex", uuid(8)), ("globex", uuid(9))] {
            exec::<Task>(
                &store,
                tenant,
                id,
                create_task(id, "ann", None, false),
                t0(),
                "ann",
            )
            .await;
        }
        catch_up(&store, projections::models::by_name("tasks").unwrap(), 100).await;
        let calls = [
            (
                "acme",
                format!(
                    "SELECT count(*) FROM annals_read_task_with_reminders('acme', '{}', 5)",
                    uuid(7)
                ),
                1,
            ),
            (
                "globex",
                "SELECT count(*) FROM annals_list_tasks('globex', NULL, NULL, NULL, NULL, NULL, \
                                                        false, NULL, NULL, 10)"
                    .to_owned(),
                2,
            ),
        ];
        for (tenant, call, visible) in calls {
            let mut tx = pool.begin().await.unwrap();
            let found: i64 = sqlx::query_scalar(call.as_str())
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(found, visible);
            let (user, set, read_only): (String, String, String) = sqlx::query_as(
                "SELECT current_user::text, current_setting('annals.tenant'), \
                        current_setting('transaction_read_only')",
            )
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            assert_eq!(
                (user.as_str(), set.as_str(), read_only.as_str()),
                ("annals_reader", tenant, "on")
            );
            let unfiltered: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(unfiltered, visible, "{tenant} sees only its own tasks");
            tx.rollback().await.unwrap();
        }
    }
}
