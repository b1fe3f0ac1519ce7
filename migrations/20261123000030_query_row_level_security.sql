-- Query API, second wall of tenant isolation: row-level security for the role the query
-- service assumes per request (`annals_reader`, created by 20261123000022 when possible).
--
-- The query service filters every statement by tenant_id itself (first wall). In addition it
-- runs each request's transaction as `annals_reader` with `annals.tenant` set to the caller's
-- tenant (`set_config(..., true)`: transaction-local), and these policies hide every other
-- tenant's rows from that role. Unset or empty `annals.tenant` matches no row: fail closed.
--
-- Nothing changes for anyone else: the table owner (migrations, projections, rebuilds) bypasses
-- RLS because it is not FORCEd, superusers always bypass it, and the `annals_others` policy keeps
-- full access for every other role, so plain-SQL analysts keep what they had. The read-side
-- views are switched to `security_invoker` so that reading through a view applies the caller's
-- policies rather than the (bypassing) owner's.
--
-- Skipped with a NOTICE when the role does not exist or the migrating user lacks the
-- privileges; the query service then refuses to start with RLS on (flag `--row-level-security`).
DO $$
DECLARE
    t TEXT;
    tenant_tables TEXT[] := ARRAY[
        'problems', 'problem_frames', 'problem_tree_nodes', 'problem_node_priorities',
        'problem_analysis_plans', 'problem_analysis_results', 'problem_artifacts',
        'problem_recommendations', 'problem_deliverables', 'problem_feedback',
        'tasks', 'task_reminders', 'agent_sessions', 'agent_session_personas',
        'governance_decisions', 'audit_log', 'problem_pipeline_summary', 'task_user_summary',
        'user_activity', 'cost_daily', 'governance_daily', 'notifications'];
    views TEXT[] := ARRAY[
        'problem_pipeline', 'task_user_summary_view', 'overdue_tasks', 'active_agent_sessions',
        'user_activity_view', 'governance_approval_rates'];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'annals_reader') THEN
        RAISE NOTICE 'annals_reader does not exist: row-level security not set up';
        RETURN;
    END IF;
    FOREACH t IN ARRAY tenant_tables LOOP
        -- Table names are the constants above, never input.
        EXECUTE format('GRANT SELECT ON %I TO annals_reader', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY annals_reader_tenant ON %I FOR SELECT TO annals_reader '
            'USING (tenant_id = current_setting(''annals.tenant'', true))', t);
        EXECUTE format(
            'CREATE POLICY annals_others ON %I USING (current_user <> ''annals_reader'') '
            'WITH CHECK (current_user <> ''annals_reader'')', t);
    END LOOP;
    FOREACH t IN ARRAY views LOOP
        EXECUTE format('ALTER VIEW %I SET (security_invoker = true)', t);
        EXECUTE format('GRANT SELECT ON %I TO annals_reader', t);
    END LOOP;
EXCEPTION
    WHEN insufficient_privilege OR undefined_object OR invalid_parameter_value THEN
        RAISE NOTICE 'row-level security not set up: %', SQLERRM;
END
$$;
