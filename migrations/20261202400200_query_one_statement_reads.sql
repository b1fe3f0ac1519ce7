-- GetTask with its reminders, and a ListTasks page, each in one statement behind the second
-- wall of tenant isolation (query API; issue 13, "queries that cost one round trip").
--
-- Same pattern as 20261202000300 (read it first): PL/pgSQL functions that raise the wall
-- inside themselves (role `annals_reader`, `annals.tenant`, read-only; transaction-local, so
-- called in autocommit the settings end with the calling statement) and then run their query,
-- which PL/pgSQL plans at that point, under the policies. The caller reads the projection
-- position in the same statement with its own privileges. PL/pgSQL, not SQL, so that the call
-- is never inlined into the caller's plan (the wall would go with it); every query still
-- filters by tenant itself (first wall). Result columns are spelled out (no `SETOF tasks`) so
-- that a projection rebuild can still swap the tables by moving them.
--
-- 20261202000300's two functions stay for query services of the previous release; this
-- release calls only the two below.

-- A task and its newest reminders (at most p_limit) in one row: the reminders' columns as
-- parallel arrays, newest first (empty arrays when there is none). No row when the task is not
-- the tenant's.
CREATE FUNCTION annals_read_task_with_reminders(p_tenant text, p_task uuid, p_limit bigint)
RETURNS TABLE (task_id uuid, tenant_id text, owner text, title text, description text,
               due_date timestamp with time zone, priority text, tags text[],
               reminder_config jsonb, recurrence jsonb, parent_task_id uuid,
               occurrence integer, status text, created_by text,
               created_at timestamp with time zone, updated_at timestamp with time zone,
               completed_at timestamp with time zone, deleted_at timestamp with time zone,
               version bigint, last_position bigint,
               reminder_ids uuid[], reminder_owners text[],
               reminder_trigger_times timestamp with time zone[],
               reminder_delivery_methods text[], reminder_destinations text[],
               reminder_statuses text[], reminder_is_current boolean[],
               reminder_retry_counts smallint[], reminder_last_errors text[],
               reminder_sent_ats timestamp with time zone[],
               reminder_scheduled_ats timestamp with time zone[])
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('role', 'annals_reader', true),
            set_config('annals.tenant', p_tenant, true),
            set_config('transaction_read_only', 'on', true);
    RETURN QUERY
        SELECT t.task_id, t.tenant_id, t.owner, t.title, t.description, t.due_date, t.priority,
               t.tags, t.reminder_config, t.recurrence, t.parent_task_id, t.occurrence, t.status,
               t.created_by, t.created_at, t.updated_at, t.completed_at, t.deleted_at, t.version,
               t.last_position,
               coalesce(r.ids, '{}'), coalesce(r.owners, '{}'), coalesce(r.trigger_times, '{}'),
               coalesce(r.delivery_methods, '{}'), coalesce(r.destinations, '{}'),
               coalesce(r.statuses, '{}'), coalesce(r.is_current, '{}'),
               coalesce(r.retry_counts, '{}'), coalesce(r.last_errors, '{}'),
               coalesce(r.sent_ats, '{}'), coalesce(r.scheduled_ats, '{}')
          FROM tasks t
         CROSS JOIN LATERAL (
               -- One order for every array, so that their elements line up.
               SELECT array_agg(x.reminder_id ORDER BY x.scheduled_at DESC, x.reminder_id DESC) AS ids,
                      array_agg(x.owner ORDER BY x.scheduled_at DESC, x.reminder_id DESC) AS owners,
                      array_agg(x.trigger_time ORDER BY x.scheduled_at DESC, x.reminder_id DESC)
                          AS trigger_times,
                      array_agg(x.delivery_method ORDER BY x.scheduled_at DESC, x.reminder_id DESC)
                          AS delivery_methods,
                      array_agg(x.destination ORDER BY x.scheduled_at DESC, x.reminder_id DESC)
                          AS destinations,
                      array_agg(x.status ORDER BY x.scheduled_at DESC, x.reminder_id DESC) AS statuses,
                      array_agg(x.is_current ORDER BY x.scheduled_at DESC, x.reminder_id DESC)
                          AS is_current,
                      array_agg(x.retry_count ORDER BY x.scheduled_at DESC, x.reminder_id DESC)
                          AS retry_counts,
                      array_agg(x.last_error ORDER BY x.scheduled_at DESC, x.reminder_id DESC)
                          AS last_errors,
                      array_agg(x.sent_at ORDER BY x.scheduled_at DESC, x.reminder_id DESC) AS sent_ats,
                      array_agg(x.scheduled_at ORDER BY x.scheduled_at DESC, x.reminder_id DESC)
                          AS scheduled_ats
                 FROM (SELECT * FROM task_reminders rr
                        WHERE rr.tenant_id = p_tenant AND rr.task_id = p_task
                        ORDER BY rr.scheduled_at DESC, rr.reminder_id DESC
                        LIMIT p_limit) x) r
         WHERE t.tenant_id = p_tenant AND t.task_id = p_task;
END
$$;

-- A keyset page of a tenant's tasks, newest first (ListTasks): filters as the query service's
-- statement (NULL = no filter), p_after_at/p_after_id the (created_at, task_id) of the last row
-- of the previous page.
CREATE FUNCTION annals_list_tasks(p_tenant text, p_owner text, p_status text, p_tag text,
                                  p_due_from timestamp with time zone,
                                  p_due_to timestamp with time zone, p_overdue_only boolean,
                                  p_after_at timestamp with time zone, p_after_id uuid,
                                  p_limit bigint)
RETURNS TABLE (task_id uuid, tenant_id text, owner text, title text, description text,
               due_date timestamp with time zone, priority text, tags text[],
               reminder_config jsonb, recurrence jsonb, parent_task_id uuid,
               occurrence integer, status text, created_by text,
               created_at timestamp with time zone, updated_at timestamp with time zone,
               completed_at timestamp with time zone, deleted_at timestamp with time zone,
               version bigint, last_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('role', 'annals_reader', true),
            set_config('annals.tenant', p_tenant, true),
            set_config('transaction_read_only', 'on', true);
    RETURN QUERY
        SELECT t.task_id, t.tenant_id, t.owner, t.title, t.description, t.due_date, t.priority,
               t.tags, t.reminder_config, t.recurrence, t.parent_task_id, t.occurrence, t.status,
               t.created_by, t.created_at, t.updated_at, t.completed_at, t.deleted_at, t.version,
               t.last_position
          FROM tasks t
         WHERE t.tenant_id = p_tenant
           AND (p_owner IS NULL OR t.owner = p_owner)
           AND (p_status IS NULL OR t.status = p_status)
           AND (p_tag IS NULL OR t.tags @> ARRAY[p_tag])
           AND (p_due_from IS NULL OR t.due_date >= p_due_from)
           AND (p_due_to IS NULL OR t.due_date < p_due_to)
           AND (NOT p_overdue_only OR (t.status = 'active' AND t.due_date < now()))
           AND (p_after_at IS NULL OR (t.created_at, t.task_id) < (p_after_at, p_after_id))
         ORDER BY t.created_at DESC, t.task_id DESC
         LIMIT p_limit;
END
$$;
