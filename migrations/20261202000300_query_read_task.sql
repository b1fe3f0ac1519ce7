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
CREATE FUNCTION annals_read_task(p_tenant text, p_task uuid)
RETURNS SETOF tasks
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('role', 'annals_reader', true),
            set_config('annals.tenant', p_tenant, true),
            set_config('transaction_read_only', 'on', true);
    RETURN QUERY SELECT * FROM tasks WHERE tenant_id = p_tenant AND task_id = p_task;
END
$$;

CREATE FUNCTION annals_read_task_reminders(p_tenant text, p_task uuid, p_limit bigint)
RETURNS SETOF task_reminders
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('role', 'annals_reader', true),
            set_config('annals.tenant', p_tenant, true),
            set_config('transaction_read_only', 'on', true);
    RETURN QUERY SELECT * FROM task_reminders
                  WHERE tenant_id = p_tenant AND task_id = p_task
                  ORDER BY scheduled_at DESC, reminder_id DESC
                  LIMIT p_limit;
END
$$;
