-- Read side, part 2: read models of the four aggregates. Every row carries its tenant and the
-- global position of the last event applied to it (`last_position`). Indexes lead with
-- tenant_id because every query is tenant-scoped; the rest follow the query API's filters.
-- Money is NUMERIC (exact), never float.

-- Problems (seed 000) -------------------------------------------------------------------------
CREATE TABLE problems (
    problem_id       UUID        PRIMARY KEY,
    tenant_id        TEXT        NOT NULL,
    title            TEXT,
    raw_text         TEXT        NOT NULL,
    submitter        TEXT        NOT NULL,
    urgency          TEXT        NOT NULL,
    metadata         JSONB       NOT NULL,
    organization_id  UUID,
    stage            TEXT        NOT NULL,
    stage_entered_at TIMESTAMPTZ NOT NULL,
    end_reason       TEXT,
    created_by       TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    ended_at         TIMESTAMPTZ,
    version          BIGINT      NOT NULL,
    last_position    BIGINT      NOT NULL
);
CREATE INDEX problems_stage_idx ON problems (tenant_id, stage, created_at DESC);
CREATE INDEX problems_urgency_idx ON problems (tenant_id, urgency, created_at DESC);
CREATE INDEX problems_submitter_idx ON problems (tenant_id, submitter, created_at DESC);
CREATE INDEX problems_created_idx ON problems (tenant_id, created_at DESC);
CREATE INDEX problems_org_idx ON problems (tenant_id, organization_id) WHERE organization_id IS NOT NULL;

CREATE TABLE problem_frames (
    problem_id           UUID        PRIMARY KEY,
    tenant_id            TEXT        NOT NULL,
    goal                 TEXT        NOT NULL,
    scope                JSONB       NOT NULL,
    kpis                 JSONB       NOT NULL,
    stakeholders         JSONB       NOT NULL,
    assumptions          JSONB       NOT NULL,
    constraints          JSONB       NOT NULL,
    confidence           TEXT        NOT NULL,
    clarifying_questions JSONB       NOT NULL,
    defined_at           TIMESTAMPTZ NOT NULL,
    last_position        BIGINT      NOT NULL
);

CREATE TABLE problem_tree_nodes (
    node_id       UUID        PRIMARY KEY,
    problem_id    UUID        NOT NULL,
    tenant_id     TEXT        NOT NULL,
    parent_id     UUID,
    level         INTEGER     NOT NULL,
    title         TEXT        NOT NULL,
    hypotheses    JSONB       NOT NULL,
    required_data JSONB       NOT NULL,
    priority_hint TEXT,
    notes         TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    last_position BIGINT      NOT NULL
);
CREATE INDEX problem_tree_nodes_problem_idx ON problem_tree_nodes (tenant_id, problem_id, level);

CREATE TABLE problem_node_priorities (
    node_id         UUID          PRIMARY KEY,
    problem_id      UUID          NOT NULL,
    tenant_id       TEXT          NOT NULL,
    impact          SMALLINT      NOT NULL CHECK (impact BETWEEN 1 AND 10),
    feasibility     SMALLINT      NOT NULL CHECK (feasibility BETWEEN 1 AND 10),
    priority_score  NUMERIC(4, 2) NOT NULL,
    rationale       TEXT,
    estimated_hours INTEGER,
    estimated_cost  NUMERIC(14, 4),
    confidence      NUMERIC(3, 2),
    is_recommended  BOOLEAN       NOT NULL,
    prioritized_at  TIMESTAMPTZ   NOT NULL,
    last_position   BIGINT        NOT NULL
);
CREATE INDEX problem_node_priorities_score_idx
    ON problem_node_priorities (tenant_id, problem_id, priority_score DESC);

CREATE TABLE problem_analysis_plans (
    plan_id             UUID        PRIMARY KEY,
    problem_id          UUID        NOT NULL,
    tenant_id           TEXT        NOT NULL,
    question_id         UUID        NOT NULL,
    title               TEXT        NOT NULL,
    methods             JSONB       NOT NULL,
    data_requirements   JSONB       NOT NULL,
    estimated_hours     INTEGER,
    owner               TEXT,
    dependencies        JSONB       NOT NULL,
    acceptance_criteria JSONB       NOT NULL,
    status              TEXT        NOT NULL CHECK (status IN ('planned', 'completed')),
    created_at          TIMESTAMPTZ NOT NULL,
    last_position       BIGINT      NOT NULL
);
CREATE INDEX problem_analysis_plans_problem_idx ON problem_analysis_plans (tenant_id, problem_id, status);

CREATE TABLE problem_analysis_results (
    result_id           UUID          PRIMARY KEY,
    plan_id             UUID          NOT NULL,
    problem_id          UUID          NOT NULL,
    tenant_id           TEXT          NOT NULL,
    summary             TEXT,
    key_findings        JSONB         NOT NULL,
    metrics             JSONB         NOT NULL,
    confidence          NUMERIC(3, 2),
    execution_time_secs INTEGER,
    recorded_at         TIMESTAMPTZ   NOT NULL,
    last_position       BIGINT        NOT NULL
);
CREATE INDEX problem_analysis_results_problem_idx ON problem_analysis_results (tenant_id, problem_id);

CREATE TABLE problem_artifacts (
    artifact_id   UUID        PRIMARY KEY,
    result_id     UUID        NOT NULL,
    problem_id    UUID        NOT NULL,
    tenant_id     TEXT        NOT NULL,
    artifact_type TEXT        NOT NULL,
    file_path     TEXT        NOT NULL,
    file_size     BIGINT,
    mime_type     TEXT,
    description   TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    last_position BIGINT      NOT NULL
);
CREATE INDEX problem_artifacts_result_idx ON problem_artifacts (tenant_id, result_id);
CREATE INDEX problem_artifacts_type_idx ON problem_artifacts (tenant_id, artifact_type);

CREATE TABLE problem_recommendations (
    recommendation_id UUID          PRIMARY KEY,
    problem_id        UUID          NOT NULL,
    tenant_id         TEXT          NOT NULL,
    title             TEXT          NOT NULL,
    summary           TEXT          NOT NULL,
    evidence          JSONB         NOT NULL,
    actions           JSONB         NOT NULL,
    expected_impact   JSONB,
    risks             JSONB         NOT NULL,
    confidence        NUMERIC(3, 2),
    priority          SMALLINT      NOT NULL CHECK (priority BETWEEN 1 AND 3),
    created_at        TIMESTAMPTZ   NOT NULL,
    last_position     BIGINT        NOT NULL
);
CREATE INDEX problem_recommendations_problem_idx ON problem_recommendations (tenant_id, problem_id, priority);

CREATE TABLE problem_deliverables (
    deliverable_id   UUID        PRIMARY KEY,
    problem_id       UUID        NOT NULL,
    tenant_id        TEXT        NOT NULL,
    deliverable_type TEXT        NOT NULL,
    file_path        TEXT        NOT NULL,
    file_size        BIGINT,
    mime_type        TEXT,
    expires_at       TIMESTAMPTZ,
    status           TEXT        NOT NULL,
    failure_reason   TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    last_position    BIGINT      NOT NULL
);
CREATE INDEX problem_deliverables_problem_idx ON problem_deliverables (tenant_id, problem_id, deliverable_type);

CREATE TABLE problem_feedback (
    problem_id              UUID        NOT NULL,
    user_ref                TEXT        NOT NULL,
    tenant_id               TEXT        NOT NULL,
    rating                  SMALLINT    NOT NULL CHECK (rating BETWEEN 1 AND 5),
    text                    TEXT,
    improvement_suggestions JSONB       NOT NULL,
    category                TEXT,
    submitted_at            TIMESTAMPTZ NOT NULL,
    last_position           BIGINT      NOT NULL,
    PRIMARY KEY (problem_id, user_ref)
);
CREATE INDEX problem_feedback_rating_idx ON problem_feedback (tenant_id, rating);

-- Tasks (seed 003) ----------------------------------------------------------------------------
CREATE TABLE tasks (
    task_id         UUID        PRIMARY KEY,
    tenant_id       TEXT        NOT NULL,
    owner           TEXT        NOT NULL,
    title           TEXT        NOT NULL,
    description     TEXT,
    due_date        TIMESTAMPTZ,
    priority        TEXT,
    tags            TEXT[]      NOT NULL,
    reminder_config JSONB,
    recurrence      JSONB,
    parent_task_id  UUID,
    occurrence      INTEGER     NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('active', 'completed', 'deleted')),
    created_by      TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    completed_at    TIMESTAMPTZ,
    deleted_at      TIMESTAMPTZ,
    version         BIGINT      NOT NULL,
    last_position   BIGINT      NOT NULL
);
CREATE INDEX tasks_owner_status_due_idx ON tasks (tenant_id, owner, status, due_date);
CREATE INDEX tasks_status_due_idx ON tasks (tenant_id, status, due_date);
CREATE INDEX tasks_tags_idx ON tasks USING GIN (tags);
-- Overdue = active with a due date in the past: time-dependent, so derived at query time; this
-- partial index makes "overdue as of now()" a range scan.
CREATE INDEX tasks_open_due_idx ON tasks (tenant_id, due_date) WHERE status = 'active' AND due_date IS NOT NULL;
CREATE INDEX tasks_parent_idx ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;

-- Every reminder ever scheduled; `is_current` marks the task's live one (a new schedule
-- replaces the previous reminder in the domain).
CREATE TABLE task_reminders (
    reminder_id       UUID        PRIMARY KEY,
    task_id           UUID        NOT NULL,
    tenant_id         TEXT        NOT NULL,
    owner             TEXT        NOT NULL,
    trigger_time      TIMESTAMPTZ NOT NULL,
    delivery_method   TEXT        NOT NULL,
    destination       TEXT        NOT NULL,
    status            TEXT        NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    is_current        BOOLEAN     NOT NULL,
    retry_count       SMALLINT    NOT NULL,
    last_retry_at     TIMESTAMPTZ,
    last_error        TEXT,
    sent_at           TIMESTAMPTZ,
    scheduled_at      TIMESTAMPTZ NOT NULL,
    -- Event that last made the reminder pending: the reminder reactor derives its command and
    -- notification ids from it, so one arming delivers at most once.
    armed_by_event_id UUID        NOT NULL,
    last_position     BIGINT      NOT NULL
);
CREATE INDEX task_reminders_task_idx ON task_reminders (tenant_id, task_id);
CREATE INDEX task_reminders_due_idx ON task_reminders (trigger_time)
    WHERE status = 'pending' AND is_current;

-- Agent sessions and governance (seed 002) ------------------------------------------------------
CREATE TABLE agent_sessions (
    session_id     UUID           PRIMARY KEY,
    tenant_id      TEXT           NOT NULL,
    user_ref       TEXT           NOT NULL,
    agent_type     TEXT           NOT NULL,
    agent_config   JSONB          NOT NULL,
    status         TEXT           NOT NULL,
    token_cost     NUMERIC(16, 4) NOT NULL,
    tokens_used    BIGINT         NOT NULL,
    estimated_cost NUMERIC(16, 4),
    max_cost_limit NUMERIC(16, 4),
    approvals      INTEGER        NOT NULL,
    rejections     INTEGER        NOT NULL,
    block_reason   TEXT,
    end_reason     TEXT,
    created_by     TEXT           NOT NULL,
    created_at     TIMESTAMPTZ    NOT NULL,
    started_at     TIMESTAMPTZ,
    ended_at       TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ    NOT NULL,
    version        BIGINT         NOT NULL,
    last_position  BIGINT         NOT NULL
);
CREATE INDEX agent_sessions_user_idx ON agent_sessions (tenant_id, user_ref, status, created_at DESC);
CREATE INDEX agent_sessions_status_idx ON agent_sessions (tenant_id, status, created_at DESC);
CREATE INDEX agent_sessions_type_idx ON agent_sessions (tenant_id, agent_type, created_at DESC);

-- One row per activation (a persona may be activated again after a deactivation).
CREATE TABLE agent_session_personas (
    session_id          UUID        NOT NULL,
    persona_id          TEXT        NOT NULL,
    activated_position  BIGINT      NOT NULL,
    tenant_id           TEXT        NOT NULL,
    activation_trigger  TEXT        NOT NULL,
    activated_at        TIMESTAMPTZ NOT NULL,
    deactivated_at      TIMESTAMPTZ,
    is_active           BOOLEAN     NOT NULL,
    last_position       BIGINT      NOT NULL,
    PRIMARY KEY (session_id, persona_id, activated_position)
);
CREATE INDEX agent_session_personas_active_idx ON agent_session_personas (tenant_id, persona_id) WHERE is_active;

CREATE TABLE governance_decisions (
    decision_id        UUID        PRIMARY KEY,
    tenant_id          TEXT        NOT NULL,
    session_id         UUID        NOT NULL,
    event_type         TEXT        NOT NULL,
    framework_type     TEXT        NOT NULL,
    approved           BOOLEAN     NOT NULL,
    reason             TEXT,
    validation_context JSONB       NOT NULL,
    decision_details   JSONB       NOT NULL,
    fallback_triggered BOOLEAN     NOT NULL,
    correlation_id     UUID,
    created_by         TEXT        NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    last_position      BIGINT      NOT NULL
);
CREATE INDEX governance_decisions_session_idx ON governance_decisions (tenant_id, session_id, created_at);
CREATE INDEX governance_decisions_approved_idx ON governance_decisions (tenant_id, approved, created_at DESC);
CREATE INDEX governance_decisions_type_idx ON governance_decisions (tenant_id, event_type, created_at DESC);
CREATE INDEX governance_decisions_framework_idx ON governance_decisions (tenant_id, framework_type, created_at DESC);
CREATE INDEX governance_decisions_created_idx ON governance_decisions (tenant_id, created_at DESC);
CREATE INDEX governance_decisions_correlation_idx ON governance_decisions (correlation_id) WHERE correlation_id IS NOT NULL;
