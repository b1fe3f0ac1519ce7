//! `TaskQueries`: tasks (overdue derived at read time) and reminders.

use aggregates::task::TaskStatus;
use chrono::Utc;
use projections::models::tasks::reads::{
    GET_TASK, LIST_DUE_REMINDERS, LIST_TASKS, ReminderRow, TASK_REMINDERS, TASK_REMINDERS_WALLED,
    TaskAt, TaskRow, get_task_at, get_task_at_walled,
};
use schemas::v1 as pb;
use schemas::v1::task_queries_server::TaskQueries;
use tonic::{Request, Response, Status};

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

/// GetTask's one statement behind the second wall (see [`get_task_at_walled!`]).
const GET_TASK_AT_WALLED: &str = get_task_at_walled!(typed_position!());

/// GetTask's one statement without the second wall.
const GET_TASK_AT: &str = get_task_at!(typed_position!());

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
                    let walled = f.reader.row_level_security();
                    let (task_sql, reminders_sql) = if walled {
                        (GET_TASK_AT_WALLED, TASK_REMINDERS_WALLED)
                    } else {
                        (GET_TASK_AT, TASK_REMINDERS)
                    };
                    let tenant = f.principal.tenant.as_str();
                    let found: Option<TaskAt> = sqlx::query_as(task_sql)
                        .bind(checkpoint)
                        .bind(types)
                        .bind(tenant)
                        .bind(*id)
                        .fetch_optional(f.reader.pool())
                        .await?;
                    // Not there (yet): the full path waits for `min_position` or says NOT_FOUND.
                    let Some(found) = found.filter(|t| t.position >= f.min_position) else {
                        return Ok(None);
                    };
                    let reminders: Vec<ReminderRow> = sqlx::query_as(reminders_sql)
                        .bind(tenant)
                        .bind(*id)
                        .bind(MAX_TASK_REMINDERS)
                        .fetch_all(f.reader.pool())
                        .await?;
                    Ok(Some(pb::GetTaskResponse {
                        position: found.position,
                        task: Some(task_view(found.task)),
                        reminders: reminders.into_iter().map(reminder_view).collect(),
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
                let owner = convert::filter("owner", &req.owner)?;
                let status = convert::vocab("status", &req.status, &spellings!(TaskStatus))?;
                let tag = convert::filter("tag", &req.tag)?;
                let from = convert::time("due_from", req.due_from.as_ref())?;
                let to = convert::time("due_to", req.due_to.as_ref())?;
                Ok((limit, after, owner, status, tag, from, to))
            },
            |q, req, (limit, after, owner, status, tag, from, to)| {
                Box::pin(async move {
                    let rows: Vec<TaskRow> = sqlx::query_as(LIST_TASKS)
                        .bind(q.tenant())
                        .bind(owner)
                        .bind(status)
                        .bind(tag)
                        .bind(from)
                        .bind(to)
                        .bind(req.overdue_only)
                        .bind(after.map(|a| a.0))
                        .bind(after.map(|a| a.1))
                        .bind(limit + 1)
                        .fetch_all(&mut *q.conn)
                        .await?;
                    let (rows, next_page_token) = paginate(rows, limit, RPC, |r| {
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
    use projections::testkit::{catch_up, create_task, exec, t0, uuid};
    use sqlx::PgPool;
    use sqlx::postgres::PgPoolOptions;

    use super::*;
    use crate::reader::Reader;

    /// The walled one-statement read answers the caller's own task, nothing of another tenant,
    /// and leaves nothing behind on the pooled connection: role and tenant end with the
    /// statement (one connection, so the next statement runs on the very same session).
    #[sqlx::test(migrator = "MIGRATOR")]
    async fn the_walled_get_answers_own_rows_and_leaves_the_session_clean(pool: PgPool) {
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
        let one = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap();
        let reader = Reader::new(one.clone(), true, Duration::from_secs(1));
        let (checkpoint, types) = reader.typed(Model::Tasks).unwrap();
        let get = |id| {
            sqlx::query_as::<_, TaskAt>(GET_TASK_AT_WALLED)
                .bind(checkpoint)
                .bind(types)
                .bind("acme")
                .bind(id)
                .fetch_optional(&one)
        };
        let login: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&one)
            .await
            .unwrap();
        let found = get(mine).await.unwrap().expect("own task");
        assert_eq!(found.task.task_id, mine);
        assert!(found.position > 0);
        assert!(get(theirs).await.unwrap().is_none());
        let reminders: Vec<ReminderRow> = sqlx::query_as(TASK_REMINDERS_WALLED)
            .bind("acme")
            .bind(mine)
            .bind(MAX_TASK_REMINDERS)
            .fetch_all(&one)
            .await
            .unwrap();
        assert!(reminders.is_empty());
        let (user, tenant): (String, Option<String>) = sqlx::query_as(
            "SELECT current_user::text, nullif(current_setting('annals.tenant', true), '')",
        )
        .fetch_one(&one)
        .await
        .unwrap();
        assert_eq!((user, tenant), (login, None));
    }
}
