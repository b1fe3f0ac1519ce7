//! `TaskQueries`: tasks (overdue derived at read time) and reminders.

use aggregates::task::TaskStatus;
use chrono::{DateTime, Utc};
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

#[derive(sqlx::FromRow)]
struct TaskRow {
    task_id: Uuid,
    owner: String,
    title: String,
    description: Option<String>,
    due_date: Option<DateTime<Utc>>,
    priority: Option<String>,
    tags: Vec<String>,
    reminder_config: Option<String>,
    recurrence: Option<String>,
    parent_task_id: Option<Uuid>,
    occurrence: i32,
    status: String,
    overdue: bool,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    deleted_at: Option<DateTime<Utc>>,
    version: i64,
    last_position: i64,
}

// Overdue is time-dependent, so it is computed by the statement (like the `overdue_tasks` view).
macro_rules! task_columns {
    () => {
        "task_id, owner, title, description, due_date, priority, tags, \
         reminder_config::text AS reminder_config, recurrence::text AS recurrence, \
         parent_task_id, occurrence, status, \
         (status = 'active' AND due_date IS NOT NULL AND due_date < now()) AS overdue, \
         created_by, created_at, updated_at, completed_at, deleted_at, version, last_position"
    };
}

impl From<TaskRow> for pb::TaskView {
    fn from(r: TaskRow) -> Self {
        Self {
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
}

#[derive(sqlx::FromRow)]
struct ReminderRow {
    reminder_id: Uuid,
    task_id: Uuid,
    owner: String,
    trigger_time: DateTime<Utc>,
    delivery_method: String,
    destination: String,
    status: String,
    is_current: bool,
    retry_count: i16,
    last_error: Option<String>,
    sent_at: Option<DateTime<Utc>>,
    scheduled_at: DateTime<Utc>,
}

macro_rules! reminder_columns {
    () => {
        "reminder_id, task_id, owner, trigger_time, delivery_method, destination, status, \
         is_current, retry_count, last_error, sent_at, scheduled_at"
    };
}

impl From<ReminderRow> for pb::ReminderView {
    fn from(r: ReminderRow) -> Self {
        Self {
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
}

/// A task with the position it reflects, read together.
#[derive(sqlx::FromRow)]
struct TaskAt {
    position: i64,
    #[sqlx(flatten)]
    task: TaskRow,
}

/// GetTask's one statement behind the second wall: the position (`$1` checkpoint, `$2` types,
/// read first with the service's own privileges) and the row through `annals_read_task`, which
/// raises the wall before it plans its query (migration `20261202000300`).
const GET_TASK_AT_WALLED: &str = concat!(
    "WITH pos AS MATERIALIZED (",
    typed_position!(),
    ") SELECT coalesce(pos.p, 0) AS position, ",
    task_columns!(),
    " FROM pos, LATERAL annals_read_task($3, $4) AS t"
);

/// GetTask's one statement without the second wall.
const GET_TASK_AT: &str = concat!(
    "WITH pos AS MATERIALIZED (",
    typed_position!(),
    ") SELECT coalesce(pos.p, 0) AS position, ",
    task_columns!(),
    " FROM pos, tasks WHERE tenant_id = $3 AND task_id = $4"
);

/// A task's reminders behind the second wall, without a transaction.
const TASK_REMINDERS_WALLED: &str = concat!(
    "SELECT ",
    reminder_columns!(),
    " FROM annals_read_task_reminders($1, $2, $3) \
      ORDER BY scheduled_at DESC, reminder_id DESC"
);

const GET_TASK: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE tenant_id = $1 AND task_id = $2"
);

const TASK_REMINDERS: &str = concat!(
    "SELECT ",
    reminder_columns!(),
    " FROM task_reminders WHERE tenant_id = $1 AND task_id = $2 \
      ORDER BY scheduled_at DESC, reminder_id DESC LIMIT $3"
);

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
                        task: Some(found.task.into()),
                        reminders: reminders.into_iter().map(Into::into).collect(),
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
                        task: Some(task.into()),
                        reminders: reminders.into_iter().map(Into::into).collect(),
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
                    const SQL: &str = concat!(
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
                    let rows: Vec<TaskRow> = sqlx::query_as(SQL)
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
                        tasks: rows.into_iter().map(Into::into).collect(),
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
                    const SQL: &str = concat!(
                        "SELECT ",
                        reminder_columns!(),
                        " FROM task_reminders \
                          WHERE tenant_id = $1 AND status = 'pending' AND is_current \
                            AND trigger_time <= $2 \
                            AND ($3::text IS NULL OR owner = $3) \
                            AND ($4::timestamptz IS NULL OR (trigger_time, reminder_id) > ($4, $5)) \
                          ORDER BY trigger_time, reminder_id LIMIT $6"
                    );
                    let rows: Vec<ReminderRow> = sqlx::query_as(SQL)
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
                        reminders: rows.into_iter().map(Into::into).collect(),
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
