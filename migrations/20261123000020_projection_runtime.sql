-- Read side, part 1: bookkeeping of the projection runner (dedupe, dead letters, progress) and
-- the in-app notification inbox written by the reminder reactor.

-- Per projection and stream: the last stream version applied. The runner applies an event only
-- when its version is exactly the next one, in the same transaction as the read-model writes,
-- so a redelivered event (Kafka, crash between commit and offset commit) is skipped and an
-- out-of-order one is never applied early. One row per stream instead of one per event: cheaper
-- than a processed-events table and it also rejects reordering.
CREATE TABLE projection_streams (
    projection      TEXT   NOT NULL,
    stream_id       TEXT   NOT NULL,
    version         BIGINT NOT NULL CHECK (version >= 0),
    last_position   BIGINT NOT NULL,
    PRIMARY KEY (projection, stream_id)
);

-- Events a projection could not apply. kind = 'failed': the handler failed after the bounded
-- retries (error kept); kind = 'parked': a later event of a stream that has a failed event, held
-- back so that a stream is never applied out of order. status: open -> resolved (retried) or
-- skipped (operator decision).
CREATE TABLE projection_dead_letters (
    projection      TEXT        NOT NULL,
    event_id        UUID        NOT NULL,
    global_position BIGINT      NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_type     TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    tenant_id       TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    kind            TEXT        NOT NULL CHECK (kind IN ('failed', 'parked')),
    status          TEXT        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'skipped')),
    error           TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL,
    last_failed_at  TIMESTAMPTZ NOT NULL,
    resolved_at     TIMESTAMPTZ,
    PRIMARY KEY (projection, event_id)
);
CREATE INDEX projection_dead_letters_open_idx
    ON projection_dead_letters (projection, stream_id, stream_version) WHERE status = 'open';
CREATE INDEX projection_dead_letters_list_idx
    ON projection_dead_letters (projection, status, global_position);

-- Highest position applied per projection and when its event was recorded: lag metrics in both
-- source modes (Kafka consumers have no single global checkpoint).
CREATE TABLE projection_progress (
    projection     TEXT        PRIMARY KEY,
    position       BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- In-app inbox: where reminders are delivered. Other channels (e-mail, push) plug in behind the
-- `ReminderChannel` trait; this table is the one real channel of this repository.
CREATE TABLE notifications (
    notification_id UUID        PRIMARY KEY,
    tenant_id       TEXT        NOT NULL,
    user_ref        TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    task_id         UUID,
    reminder_id     UUID,
    requested_channel TEXT,
    destination     TEXT,
    title           TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    read_at         TIMESTAMPTZ,
    -- Position of the event that armed the reminder delivered here.
    last_position   BIGINT      NOT NULL
);
CREATE INDEX notifications_inbox_idx ON notifications (tenant_id, user_ref, created_at DESC);
CREATE INDEX notifications_unread_idx ON notifications (tenant_id, user_ref) WHERE read_at IS NULL;
