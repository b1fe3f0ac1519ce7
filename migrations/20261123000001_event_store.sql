-- annals event store: streams, events (the outbox), command log, subscription checkpoints,
-- and the append function that writes all of them in one round trip.
--
-- Global positions: an append takes per-stream advisory locks first and only then obtains its
-- transaction id (xid8). Positions are `xid * 65536 + index`, so position order equals xid
-- order. A reader that only delivers rows whose xid is below `pg_snapshot_xmin` therefore sees
-- a prefix of the final order: every event below a delivered one belongs to a transaction that
-- had already finished. See event-store/src/lib.rs ("Gap safety") for the full argument.

CREATE TABLE streams (
    stream_id   TEXT        PRIMARY KEY,
    stream_type TEXT        NOT NULL,
    tenant_id   TEXT        NOT NULL,
    version     BIGINT      NOT NULL CHECK (version > 0),
    last_hash   BYTEA       NOT NULL CHECK (octet_length(last_hash) = 32),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE events (
    global_position BIGINT      PRIMARY KEY,
    event_id        UUID        NOT NULL,
    stream_id       TEXT        NOT NULL,
    stream_type     TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL CHECK (stream_version > 0),
    tenant_id       TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL CHECK (schema_version > 0),
    -- `json`, not `jsonb`: the exact bytes written are kept, and the hash chain covers them.
    payload         JSON        NOT NULL,
    metadata        JSON        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    tx_id           XID8        NOT NULL,
    hash            BYTEA       NOT NULL CHECK (octet_length(hash) = 32),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_stream_type_position_idx ON events (stream_type, global_position);
CREATE INDEX events_recorded_at_idx ON events (recorded_at);

-- Idempotency: one row per command that appended. `fingerprint` identifies the request so that a
-- different batch under a reused command id is refused instead of silently answered.
CREATE TABLE command_log (
    command_id  UUID        PRIMARY KEY,
    fingerprint BYTEA       NOT NULL,
    result      JSONB       NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
);

-- Checkpoints of subscriptions, relays and projections (written in the consumer's transaction).
CREATE TABLE subscription_checkpoints (
    name       TEXT        PRIMARY KEY,
    position   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events are immutable. The trigger stops accidents and ordinary roles; a superuser who disables
-- it is caught by the hash chain instead.
CREATE FUNCTION annals_events_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable (% refused)', TG_OP
        USING ERRCODE = 'ANI01';
END
$$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION annals_events_immutable();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION annals_events_immutable();

-- Length-prefixed UTF-8 bytes of a string: the canonical field encoding of the hash chain.
CREATE FUNCTION annals_hash_str(s TEXT) RETURNS BYTEA
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT int4send(octet_length(convert_to(s, 'UTF8'))) || convert_to(s, 'UTF8')
$$;

-- hash = SHA-256(prev_hash || canonical envelope). The Rust verifier recomputes exactly this
-- layout independently (event-store/src/hash.rs); a test proves the two agree.
CREATE FUNCTION annals_event_hash(
    prev_hash BYTEA, global_position BIGINT, event_id UUID, stream_id TEXT, stream_type TEXT,
    stream_version BIGINT, tenant_id TEXT, event_type TEXT, schema_version INTEGER,
    payload TEXT, metadata TEXT, recorded_at TIMESTAMPTZ
) RETURNS BYTEA
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT sha256(
        prev_hash
        || convert_to('annals.v1', 'UTF8')
        || int8send(global_position)
        || uuid_send(event_id)
        || annals_hash_str(stream_id)
        || annals_hash_str(stream_type)
        || int8send(stream_version)
        || annals_hash_str(tenant_id)
        || annals_hash_str(event_type)
        || int4send(schema_version)
        || annals_hash_str(payload)
        || annals_hash_str(metadata)
        || int8send((extract(epoch FROM recorded_at) * 1000000)::bigint)
    )
$$;

-- Appends events to one or several streams atomically, in one round trip.
--
-- Streams are given as parallel arrays (p_stream_*), events as parallel arrays whose
-- p_ev_stream entry is the 1-based index of their stream. p_expected: -1 = any, 0 = the stream
-- must not exist, n > 0 = the stream's current version must be n.
--
-- Returns the append result as JSON; a retried command id with the same fingerprint returns the
-- stored result with "replayed": true and appends nothing.
--
-- Errors (SQLSTATE): ANV01 wrong expected version (DETAIL carries stream, expected, actual),
-- ANC01 command id reused for a different request, ANA01 malformed arguments.
CREATE FUNCTION annals_append(
    p_command_id  UUID,
    p_fingerprint BYTEA,
    p_tenant      TEXT,
    p_stream_ids  TEXT[],
    p_stream_types TEXT[],
    p_expected    BIGINT[],
    p_ev_stream   INTEGER[],
    p_ev_ids      UUID[],
    p_ev_types    TEXT[],
    p_ev_schema_versions INTEGER[],
    p_ev_payloads TEXT[],
    p_metadata    TEXT
) RETURNS JSONB
LANGUAGE plpgsql AS $$
DECLARE
    n_streams  INTEGER := coalesce(array_length(p_stream_ids, 1), 0);
    n_events   INTEGER := coalesce(array_length(p_ev_ids, 1), 0);
    v_logged   command_log%ROWTYPE;
    v_versions BIGINT[] := array_fill(0::BIGINT, ARRAY[n_streams]);
    v_hashes   BYTEA[]  := array_fill(NULL::BYTEA, ARRAY[n_streams]);
    v_exists   BOOLEAN[] := array_fill(false, ARRAY[n_streams]);
    v_head     RECORD;
    v_xid      XID8;
    v_base     BIGINT;
    v_now      TIMESTAMPTZ := now();
    v_pos      BIGINT[] := array_fill(0::BIGINT, ARRAY[n_events]);
    v_ver      BIGINT[] := array_fill(0::BIGINT, ARRAY[n_events]);
    v_hash     BYTEA[]  := array_fill(NULL::BYTEA, ARRAY[n_events]);
    v_result   JSONB;
    s INTEGER;
    i INTEGER;
BEGIN
    IF n_streams = 0 OR n_events = 0 OR n_events > 65535
       OR coalesce(array_length(p_stream_types, 1), 0) <> n_streams
       OR coalesce(array_length(p_expected, 1), 0) <> n_streams
       OR coalesce(array_length(p_ev_stream, 1), 0) <> n_events
       OR coalesce(array_length(p_ev_types, 1), 0) <> n_events
       OR coalesce(array_length(p_ev_schema_versions, 1), 0) <> n_events
       OR coalesce(array_length(p_ev_payloads, 1), 0) <> n_events THEN
        RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
    END IF;

    -- Serialise retries of one command id (advisory locks assign no xid, see the header).
    IF p_command_id IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('annals.command:' || p_command_id::text, 0));
        SELECT * INTO v_logged FROM command_log WHERE command_id = p_command_id;
        IF FOUND THEN
            IF v_logged.fingerprint IS DISTINCT FROM p_fingerprint THEN
                RAISE EXCEPTION 'command id % was already used for a different request', p_command_id
                    USING ERRCODE = 'ANC01';
            END IF;
            RETURN v_logged.result || jsonb_build_object('replayed', true);
        END IF;
    END IF;

    -- Lock the streams in a fixed order so that multi-stream appends cannot deadlock.
    PERFORM pg_advisory_xact_lock(k)
       FROM (SELECT DISTINCT hashtextextended('annals.stream:' || sid, 0) AS k
               FROM unnest(p_stream_ids) AS sid ORDER BY 1) AS keys;

    FOR v_head IN
        SELECT u.ord, st.version, st.last_hash
          FROM unnest(p_stream_ids) WITH ORDINALITY AS u(sid, ord)
          JOIN streams st ON st.stream_id = u.sid
    LOOP
        v_versions[v_head.ord] := v_head.version;
        v_hashes[v_head.ord] := v_head.last_hash;
        v_exists[v_head.ord] := true;
    END LOOP;

    FOR s IN 1..n_streams LOOP
        IF (p_expected[s] = 0 AND v_exists[s])
           OR (p_expected[s] > 0 AND v_versions[s] <> p_expected[s]) THEN
            RAISE EXCEPTION 'wrong expected version for stream %', p_stream_ids[s]
                USING ERRCODE = 'ANV01',
                      DETAIL = jsonb_build_object('stream_id', p_stream_ids[s],
                                                  'expected', p_expected[s],
                                                  'actual', CASE WHEN v_exists[s] THEN v_versions[s] END)::text;
        END IF;
        IF v_hashes[s] IS NULL THEN
            v_hashes[s] := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
        END IF;
    END LOOP;

    -- The first write of this transaction: the xid is assigned here, after the stream locks.
    v_xid := pg_current_xact_id();
    v_base := v_xid::text::bigint * 65536;

    FOR i IN 1..n_events LOOP
        s := p_ev_stream[i];
        IF s IS NULL OR s < 1 OR s > n_streams THEN
            RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
        END IF;
        v_versions[s] := v_versions[s] + 1;
        v_pos[i] := v_base + i - 1;
        v_ver[i] := v_versions[s];
        v_hash[i] := annals_event_hash(v_hashes[s], v_pos[i], p_ev_ids[i], p_stream_ids[s],
                                       p_stream_types[s], v_versions[s], p_tenant, p_ev_types[i],
                                       p_ev_schema_versions[i], p_ev_payloads[i], p_metadata, v_now);
        v_hashes[s] := v_hash[i];
    END LOOP;

    INSERT INTO events (global_position, event_id, stream_id, stream_type, stream_version,
                        tenant_id, event_type, schema_version, payload, metadata, recorded_at,
                        tx_id, hash)
    SELECT v_pos[k], p_ev_ids[k], p_stream_ids[p_ev_stream[k]], p_stream_types[p_ev_stream[k]],
           v_ver[k], p_tenant, p_ev_types[k], p_ev_schema_versions[k], p_ev_payloads[k]::json,
           p_metadata::json, v_now, v_xid, v_hash[k]
      FROM generate_series(1, n_events) AS gs(k);

    INSERT INTO streams AS st (stream_id, stream_type, tenant_id, version, last_hash, created_at, updated_at)
    SELECT p_stream_ids[k], p_stream_types[k], p_tenant, v_versions[k], v_hashes[k], v_now, v_now
      FROM generate_series(1, n_streams) AS gs(k)
     WHERE v_versions[k] > 0
    ON CONFLICT (stream_id) DO UPDATE
       SET version = excluded.version, last_hash = excluded.last_hash, updated_at = excluded.updated_at;

    v_result := jsonb_build_object(
        'streams', (SELECT jsonb_agg(jsonb_build_object('stream_id', p_stream_ids[k],
                                                        'version', v_versions[k]) ORDER BY k)
                      FROM generate_series(1, n_streams) AS gs(k)),
        'events', (SELECT jsonb_agg(jsonb_build_object('event_id', p_ev_ids[k],
                                                       'stream_id', p_stream_ids[p_ev_stream[k]],
                                                       'stream_version', v_ver[k],
                                                       'global_position', v_pos[k]) ORDER BY k)
                     FROM generate_series(1, n_events) AS gs(k)),
        'recorded_at', v_now);

    IF p_command_id IS NOT NULL THEN
        INSERT INTO command_log (command_id, fingerprint, result, recorded_at)
        VALUES (p_command_id, p_fingerprint, v_result, v_now);
    END IF;

    -- Delivered at commit; subscribers use it only as a wake-up, never as data.
    PERFORM pg_notify('annals_events', '');

    RETURN v_result || jsonb_build_object('replayed', false);
END
$$;
