-- Bearer tokens of the gRPC APIs. Only the SHA-256 of a token is stored: a leaked table does
-- not leak usable credentials. Managed with `annals-command-api token create|list|revoke`.
CREATE TABLE api_tokens (
    token_id    UUID        PRIMARY KEY,
    token_hash  BYTEA       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    tenant_id   TEXT        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 200),
    actor       TEXT        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    actor_type  TEXT        NOT NULL CHECK (length(actor_type) BETWEEN 1 AND 200),
    role        TEXT        NOT NULL CHECK (role IN ('admin', 'service', 'analyst', 'auditor', 'viewer')),
    description TEXT        NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id, created_at);
