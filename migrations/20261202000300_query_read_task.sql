-- GetTask in one round trip with the second wall of tenant isolation (query API).
--
-- The wall (20261123000030) needs the statement that reads a tenant table to be *planned* as
-- role `annals_reader`: row-level security is decided when a statement is planned, so a
-- statement cannot raise the wall for itself. Until now each request therefore paid BEGIN, a
-- set_config statement, its reads and COMMIT. These functions raise the wall inside themselves
-- (transaction-local, exactly as the query service's set_config statement does) and then run
-- their query, which PL/pgSQL plans at that point, under the policies. Called in autocommit,
-- the settings end with the calling statement; the caller reads the projection position in the
-- same statement, before calling them, with its own privileges.
--
-- PL/pgSQL, not SQL: a SQL function could be inlined into the caller's plan, and the wall with
-- it would be lost. Every query still filters by tenant itself (first wall).
--
-- The result columns are spelled out rather than `SETOF tasks`: a function returning a table's
-- row type depends on that table, and a projection rebuild swaps tables by moving them (the old
-- one could not be dropped). A migration that changes these tables' columns redefines these.
CREATE FUNCTION annals_read_task(p_tenant text, p_task uuid)
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
    RETURN QUERY SELECT task_id, tenant_id, owner, title, description, due_date, priority, tags,
                          reminder_config, recurrence, parent_task_id, occurrence, status, created_by,
                          created_at, updated_at, completed_at, deleted_at, version, last_position
                   FROM tasks WHERE tasks.tenant_id = p_tenant AND tasks.task_id = p_task;
END
$$;

CREATE FUNCTION annals_read_task_reminders(p_tenant text, p_task uuid, p_limit bigint)
RETURNS TABLE (reminder_id uuid, task_id uuid, tenant_id text, owner text,
               trigger_time timestamp with time zone, delivery_method text, destination text,
               status text, is_current boolean, retry_count smallint,
               last_retry_at timestamp with time zone, last_error text,
               sent_at timestamp with time zone, scheduled_at timestamp with time zone,
               armed_by_event_id uuid, last_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('role', 'annals_reader', true),
            set_config('annals.tenant', p_tenant, true),
            set_config('transaction_read_only', 'on', true);
    RETURN QUERY SELECT reminder_id, task_id, tenant_id, owner, trigger_time, delivery_method,
                          destination, status, is_current, retry_count, last_retry_at, last_error,
                          sent_at, scheduled_at, armed_by_event_id, last_position
                   FROM task_reminders r
                  WHERE r.tenant_id = p_tenant AND r.task_id = p_task
                  ORDER BY r.scheduled_at DESC, r.reminder_id DESC
                  LIMIT p_limit;
END
$$;
