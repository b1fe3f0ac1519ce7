-- Tenant-scoped read models (issue 14, item 3): aggregate ids and child ids are unique per
-- tenant (see 20261202100001_tenant_scoped_ids.sql), so every read-model table keyed by such an
-- id alone is keyed by (tenant_id, id) instead. Every table already has a NOT NULL tenant_id, and
-- every existing key is unique per tenant because it was unique overall: existing rows stay.
--
-- Locks (held until the migration commits): the new keys are built first as unique indexes
-- (SHARE locks: queries go on, projection writes wait), then swapped for the primary keys in a
-- short tail of catalog changes (ACCESS EXCLUSIVE), so queries wait only for that tail. Each
-- constraint keeps its name (<table>_pkey), so a projection rebuild's shadow tables (created LIKE
-- the live ones, see 20261202000201_rebuild_swap_by_rename.sql) get the same key.
--
-- The query functions of 20261202000300_query_read_task.sql already filter by tenant and id;
-- with these keys their lookups are primary-key probes, so they are not redefined.

CREATE UNIQUE INDEX problems_tenant_key ON problems (tenant_id, problem_id);
CREATE UNIQUE INDEX problem_frames_tenant_key ON problem_frames (tenant_id, problem_id);
CREATE UNIQUE INDEX problem_tree_nodes_tenant_key ON problem_tree_nodes (tenant_id, node_id);
CREATE UNIQUE INDEX problem_node_priorities_tenant_key ON problem_node_priorities (tenant_id, node_id);
CREATE UNIQUE INDEX problem_analysis_plans_tenant_key ON problem_analysis_plans (tenant_id, plan_id);
CREATE UNIQUE INDEX problem_analysis_results_tenant_key ON problem_analysis_results (tenant_id, result_id);
CREATE UNIQUE INDEX problem_artifacts_tenant_key ON problem_artifacts (tenant_id, artifact_id);
CREATE UNIQUE INDEX problem_recommendations_tenant_key ON problem_recommendations (tenant_id, recommendation_id);
CREATE UNIQUE INDEX problem_deliverables_tenant_key ON problem_deliverables (tenant_id, deliverable_id);
CREATE UNIQUE INDEX problem_feedback_tenant_key ON problem_feedback (tenant_id, problem_id, user_ref);
CREATE UNIQUE INDEX tasks_tenant_key ON tasks (tenant_id, task_id);
CREATE UNIQUE INDEX task_reminders_tenant_key ON task_reminders (tenant_id, reminder_id);
CREATE UNIQUE INDEX agent_sessions_tenant_key ON agent_sessions (tenant_id, session_id);
CREATE UNIQUE INDEX agent_session_personas_tenant_key ON agent_session_personas (tenant_id, session_id, persona_id, activated_position);
CREATE UNIQUE INDEX governance_decisions_tenant_key ON governance_decisions (tenant_id, decision_id);
CREATE UNIQUE INDEX audit_resource_state_tenant_key ON audit_resource_state (tenant_id, resource_id);
-- Subtasks are found by (tenant, parent).
CREATE INDEX tasks_tenant_parent_idx ON tasks (tenant_id, parent_task_id)
    WHERE parent_task_id IS NOT NULL;

-- The swaps.
ALTER TABLE problems
    DROP CONSTRAINT problems_pkey,
    ADD CONSTRAINT problems_pkey PRIMARY KEY USING INDEX problems_tenant_key;
ALTER TABLE problem_frames
    DROP CONSTRAINT problem_frames_pkey,
    ADD CONSTRAINT problem_frames_pkey PRIMARY KEY USING INDEX problem_frames_tenant_key;
ALTER TABLE problem_tree_nodes
    DROP CONSTRAINT problem_tree_nodes_pkey,
    ADD CONSTRAINT problem_tree_nodes_pkey PRIMARY KEY USING INDEX problem_tree_nodes_tenant_key;
ALTER TABLE problem_node_priorities
    DROP CONSTRAINT problem_node_priorities_pkey,
    ADD CONSTRAINT problem_node_priorities_pkey PRIMARY KEY USING INDEX problem_node_priorities_tenant_key;
ALTER TABLE problem_analysis_plans
    DROP CONSTRAINT problem_analysis_plans_pkey,
    ADD CONSTRAINT problem_analysis_plans_pkey PRIMARY KEY USING INDEX problem_analysis_plans_tenant_key;
ALTER TABLE problem_analysis_results
    DROP CONSTRAINT problem_analysis_results_pkey,
    ADD CONSTRAINT problem_analysis_results_pkey PRIMARY KEY USING INDEX problem_analysis_results_tenant_key;
ALTER TABLE problem_artifacts
    DROP CONSTRAINT problem_artifacts_pkey,
    ADD CONSTRAINT problem_artifacts_pkey PRIMARY KEY USING INDEX problem_artifacts_tenant_key;
ALTER TABLE problem_recommendations
    DROP CONSTRAINT problem_recommendations_pkey,
    ADD CONSTRAINT problem_recommendations_pkey PRIMARY KEY USING INDEX problem_recommendations_tenant_key;
ALTER TABLE problem_deliverables
    DROP CONSTRAINT problem_deliverables_pkey,
    ADD CONSTRAINT problem_deliverables_pkey PRIMARY KEY USING INDEX problem_deliverables_tenant_key;
ALTER TABLE problem_feedback
    DROP CONSTRAINT problem_feedback_pkey,
    ADD CONSTRAINT problem_feedback_pkey PRIMARY KEY USING INDEX problem_feedback_tenant_key;
ALTER TABLE tasks
    DROP CONSTRAINT tasks_pkey,
    ADD CONSTRAINT tasks_pkey PRIMARY KEY USING INDEX tasks_tenant_key;
ALTER TABLE task_reminders
    DROP CONSTRAINT task_reminders_pkey,
    ADD CONSTRAINT task_reminders_pkey PRIMARY KEY USING INDEX task_reminders_tenant_key;
ALTER TABLE agent_sessions
    DROP CONSTRAINT agent_sessions_pkey,
    ADD CONSTRAINT agent_sessions_pkey PRIMARY KEY USING INDEX agent_sessions_tenant_key;
ALTER TABLE agent_session_personas
    DROP CONSTRAINT agent_session_personas_pkey,
    ADD CONSTRAINT agent_session_personas_pkey PRIMARY KEY USING INDEX agent_session_personas_tenant_key;
ALTER TABLE governance_decisions
    DROP CONSTRAINT governance_decisions_pkey,
    ADD CONSTRAINT governance_decisions_pkey PRIMARY KEY USING INDEX governance_decisions_tenant_key;
ALTER TABLE audit_resource_state
    DROP CONSTRAINT audit_resource_state_pkey,
    ADD CONSTRAINT audit_resource_state_pkey PRIMARY KEY USING INDEX audit_resource_state_tenant_key;
DROP INDEX tasks_parent_idx;
ALTER INDEX tasks_tenant_parent_idx RENAME TO tasks_parent_idx;
