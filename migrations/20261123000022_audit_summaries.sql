-- Read side, part 3: the audit log and the incrementally maintained summaries.

-- One row per event. `changes` maps each changed field to {"before": .., "after": ..}, computed
-- against the resource's previous field values (audit_resource_state). Append-only.
CREATE TABLE audit_log (
    global_position  BIGINT      PRIMARY KEY,
    event_id         UUID        NOT NULL UNIQUE,
    tenant_id        TEXT        NOT NULL,
    action           TEXT        NOT NULL,
    actor            TEXT        NOT NULL,
    actor_type       TEXT        NOT NULL,
    resource_type    TEXT        NOT NULL,
    resource_id      TEXT        NOT NULL,
    resource_version BIGINT      NOT NULL,
    changes          JSONB       NOT NULL,
    command_id       UUID,
    correlation_id   UUID,
    causation_id     UUID,
    client_ip        TEXT,
    user_agent       TEXT,
    occurred_at      TIMESTAMPTZ NOT NULL,
    event_hash       TEXT        NOT NULL,
    last_position    BIGINT      NOT NULL
);
CREATE INDEX audit_log_resource_idx ON audit_log (tenant_id, resource_type, resource_id, global_position);
CREATE INDEX audit_log_actor_idx ON audit_log (tenant_id, actor, occurred_at);
CREATE INDEX audit_log_correlation_idx ON audit_log (tenant_id, correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX audit_log_time_idx ON audit_log (tenant_id, occurred_at);

-- The audit projection's memory of each resource's current (flattened) fields, from which the
-- before values of the next change come. Internal; not part of the audit record.
CREATE TABLE audit_resource_state (
    resource_id   TEXT   PRIMARY KEY,
    tenant_id     TEXT   NOT NULL,
    fields        JSONB  NOT NULL,
    last_position BIGINT NOT NULL
);

-- Append-only: rows are never changed or removed. TRUNCATE is refused too, except inside the
-- rebuild swap, which sets the transaction-local `annals.audit_swap` (a maintenance path of the
-- table owner; the application role below has no TRUNCATE privilege at all).
CREATE FUNCTION annals_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' AND current_setting('annals.audit_swap', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'ANI02';
END
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION annals_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION annals_audit_append_only();

-- A non-owner role for readers and query services: read everything of the read side, never
-- change the audit log. Created when the migrating user may create roles; roles are cluster-wide,
-- so an existing one is reused.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'annals_reader') THEN
        CREATE ROLE annals_reader NOLOGIN;
    END IF;
    GRANT SELECT ON audit_log TO annals_reader;
    REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_log FROM annals_reader;
EXCEPTION
    WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
        RAISE NOTICE 'annals_reader role not set up: %', SQLERRM;
END
$$;

-- Summaries: upserted per event by the projection owning the underlying events. Their
-- last_position is the highest position that contributed (GREATEST), so it does not depend on
-- the order in which different streams were applied (Kafka partitions interleave freely).

-- Problem pipeline per tenant and stage: how many problems are in the stage now, how many left
-- it, and the total seconds spent in it by those that left (mean = total / exited).
CREATE TABLE problem_pipeline_summary (
    tenant_id              TEXT    NOT NULL,
    stage                  TEXT    NOT NULL,
    problem_count          BIGINT  NOT NULL,
    exited_count           BIGINT  NOT NULL,
    total_seconds_in_stage NUMERIC NOT NULL,
    last_position          BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, stage)
);
CREATE VIEW problem_pipeline AS
SELECT tenant_id, stage, problem_count, exited_count, total_seconds_in_stage,
       round(total_seconds_in_stage / NULLIF(exited_count, 0), 3) AS mean_seconds_in_stage,
       last_position
  FROM problem_pipeline_summary;

-- Task counts per owner. Overdue depends on the clock, so it is derived at query time by the
-- view from the tasks table (partial index tasks_open_due_idx), never stored.
CREATE TABLE task_user_summary (
    tenant_id       TEXT   NOT NULL,
    owner           TEXT   NOT NULL,
    active_count    BIGINT NOT NULL,
    completed_count BIGINT NOT NULL,
    deleted_count   BIGINT NOT NULL,
    last_position   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, owner)
);
CREATE VIEW task_user_summary_view AS
SELECT s.tenant_id, s.owner, s.active_count, s.completed_count, s.deleted_count,
       coalesce(o.overdue_count, 0) AS overdue_count,
       round(s.completed_count::numeric / NULLIF(s.active_count + s.completed_count, 0), 4)
           AS completion_rate,
       s.last_position
  FROM task_user_summary s
  LEFT JOIN LATERAL (
      SELECT count(*) AS overdue_count FROM tasks t
       WHERE t.tenant_id = s.tenant_id AND t.owner = s.owner
         AND t.status = 'active' AND t.due_date < now()
  ) o ON true;
CREATE VIEW overdue_tasks AS
SELECT * FROM tasks WHERE status = 'active' AND due_date < now();

-- Sessions that are live, with their approval and rejection counts (kept on the session row).
CREATE VIEW active_agent_sessions AS
SELECT session_id, tenant_id, user_ref, agent_type, status, token_cost, approvals, rejections,
       created_at, last_position
  FROM agent_sessions
 WHERE status IN ('pending_approval', 'approved', 'running');

CREATE TABLE user_activity (
    tenant_id       TEXT           NOT NULL,
    user_ref        TEXT           NOT NULL,
    session_count   BIGINT         NOT NULL,
    total_cost      NUMERIC(20, 4) NOT NULL,
    last_session_at TIMESTAMPTZ    NOT NULL,
    last_position   BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, user_ref)
);
CREATE VIEW user_activity_view AS
SELECT tenant_id, user_ref, session_count, total_cost,
       round(total_cost / NULLIF(session_count, 0), 4) AS mean_cost_per_session,
       last_session_at, last_position
  FROM user_activity;

-- Cost per tenant, user and UTC day of the cost event.
CREATE TABLE cost_daily (
    tenant_id     TEXT           NOT NULL,
    user_ref      TEXT           NOT NULL,
    day           DATE           NOT NULL,
    total_cost    NUMERIC(20, 4) NOT NULL,
    cost_events   BIGINT         NOT NULL,
    tokens_used   BIGINT         NOT NULL,
    last_position BIGINT         NOT NULL,
    PRIMARY KEY (tenant_id, user_ref, day)
);
CREATE INDEX cost_daily_day_idx ON cost_daily (tenant_id, day);

-- Governance decisions per tenant, UTC day, framework and event type.
CREATE TABLE governance_daily (
    tenant_id      TEXT   NOT NULL,
    day            DATE   NOT NULL,
    framework_type TEXT   NOT NULL,
    event_type     TEXT   NOT NULL,
    decision_count BIGINT NOT NULL,
    approved_count BIGINT NOT NULL,
    last_position  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, framework_type, event_type)
);
CREATE VIEW governance_approval_rates AS
SELECT tenant_id, day, framework_type, event_type, decision_count, approved_count,
       round(approved_count::numeric / NULLIF(decision_count, 0), 4) AS approval_rate,
       last_position
  FROM governance_daily;
