-- Keyset pages of ListTasks and ListSessions walk (tenant_id, created_at DESC, id DESC). Without
-- a matching index every page sorted all of a tenant's rows (measured: ListTasks p50 44 ms with
-- only ~1,000 tasks in the tenant); with it a page reads its rows in order and stops.
CREATE INDEX tasks_created_idx ON tasks (tenant_id, created_at DESC, task_id DESC);
CREATE INDEX agent_sessions_created_idx
    ON agent_sessions (tenant_id, created_at DESC, session_id DESC);
