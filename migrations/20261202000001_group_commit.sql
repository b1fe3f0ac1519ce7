-- Group commit: one transaction appends the queued appends of many callers (issue 12).
--
-- `annals_append_group` takes a whole group of appends ("items") and gives each its own
-- outcome without a subtransaction per item: every check (command log, stream tenant and type,
-- expected version) is made against in-memory stream heads before anything is written, so a
-- refused item is simply left out of the writes instead of being rolled back. Items are decided
-- in order, each seeing the effect of the accepted items before it (two appends to one stream
-- in one group behave exactly as if sent one after the other). One group = one xid, one commit:
-- positions are `(xid + epoch offset) * 65536 + i`, i counting every event of the group.
--
-- Hardening (each proved by a test in event-store/tests/):
-- * `recorded_at` is `clock_timestamp()` read after the stream locks: a waiter records a time
--   after the event it waited for, so time never goes backwards within a stream.
-- * An existing stream of another tenant or stream type is refused (status 4), not appended to.
-- * Refuses to run in a transaction that already holds an xid (its positions would be older than
--   its commit) or outside READ COMMITTED (its reads after the locks would use a stale snapshot).
-- * Position epochs: after a logical restore (pg_dump/restore, logical replication) the new
--   cluster's xids can be lower than the stored ones, and new events would sort below every
--   checkpoint. An append that finds the newest stored event's xid not yet assigned by this
--   cluster refuses (ANR01) until an operator runs `annals_rebase_positions()`, which starts a
--   new epoch: an xid offset that makes new positions exceed every stored one, and a floor below
--   which every event is known to be committed (readers deliver those without the xid rule).
--   Appends hold a shared advisory lock that the rebase takes exclusively, so no append straddles
--   an epoch change.

CREATE TABLE annals_position_epochs (
    epoch          INTEGER     PRIMARY KEY,
    -- Added to the xid of every append of this epoch before it becomes a position.
    xid_offset     BIGINT      NOT NULL CHECK (xid_offset >= 0),
    -- Every event below this position was committed when the epoch began.
    floor_position BIGINT      NOT NULL CHECK (floor_position >= 0),
    created_at     TIMESTAMPTZ NOT NULL
);

-- The command log no longer stores a JSON copy of the result: the events of one command occupy
-- the contiguous positions [first_position, first_position + event_count), so a replay reads
-- them back. Rows written before this migration keep their `result`.
ALTER TABLE command_log
    ALTER COLUMN result DROP NOT NULL,
    ADD COLUMN first_position BIGINT,
    ADD COLUMN event_count INTEGER,
    ADD CONSTRAINT command_log_result_or_range
        CHECK (result IS NOT NULL OR (first_position IS NOT NULL AND event_count > 0));

-- No reader looks events up by time (as-of-a-time reads one stream through its (stream_id,
-- stream_version) key; time ranges of the audit trail read audit_log), and every event paid an
-- insertion into this index.
DROP INDEX IF EXISTS events_recorded_at_idx;

-- The first position below which readers may deliver without checking xids (0 = no epoch).
CREATE FUNCTION annals_delivery_floor() RETURNS BIGINT
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(max(floor_position), 0) FROM annals_position_epochs
$$;

-- Advisory key shared by every append (shared) and the rebase (exclusive).
CREATE FUNCTION annals_epoch_lock_key() RETURNS BIGINT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtextextended('annals.position-epoch', 0) $$;

-- Appends a group of items. Items are given as parallel arrays (p_it_*), their streams
-- ("entries") as parallel arrays in item order (p_en_*, p_en_item = 1-based item), events in
-- entry order (p_ev_*; entry e owns the next p_en_count[e] events). p_en_slot maps an entry to a distinct stream
-- of the group (p_slot_stream), so two items naming one stream share its in-memory head.
-- p_en_expected: -1 any, 0 no stream, n > 0 exact.
--
-- One row per item: status 0 appended (first_position, versions = new version per entry,
-- recorded_at), 1 replayed (detail = JSON of the original events), 2 wrong expected version
-- (detail = JSON {stream_id, expected, actual}), 3 command id reused, 4 stream of another tenant
-- or stream type (detail = JSON {stream_id}).
CREATE FUNCTION annals_append_group(
    p_it_command_ids  UUID[],
    p_it_fingerprints BYTEA[],
    p_it_tenants      TEXT[],
    p_it_metadata     TEXT[],
    p_en_item         INTEGER[],
    p_en_slot         INTEGER[],
    p_en_type         TEXT[],
    p_en_expected     BIGINT[],
    p_en_count        INTEGER[],
    p_slot_stream     TEXT[],
    p_ev_ids          UUID[],
    p_ev_types        TEXT[],
    p_ev_schema_versions INTEGER[],
    p_ev_payloads     TEXT[]
) RETURNS TABLE (r_item INTEGER, r_status INTEGER, r_first_position BIGINT, r_versions BIGINT[],
                 r_recorded_at TIMESTAMPTZ, r_detail TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    n_items   INTEGER := coalesce(array_length(p_it_tenants, 1), 0);
    n_entries INTEGER := coalesce(array_length(p_en_item, 1), 0);
    n_slots   INTEGER := coalesce(array_length(p_slot_stream, 1), 0);
    n_events  INTEGER := coalesce(array_length(p_ev_ids, 1), 0);
    -- per item: 0 undecided/accepted, else the refusal status
    it_status  INTEGER[] := array_fill(0, ARRAY[n_items]);
    it_detail  TEXT[]    := array_fill(NULL::TEXT, ARRAY[n_items]);
    it_first   BIGINT[]  := array_fill(NULL::BIGINT, ARRAY[n_items]);
    it_count   INTEGER[] := array_fill(0, ARRAY[n_items]);
    -- per slot: head as read, then as decided
    sl_version BIGINT[]  := array_fill(0::BIGINT, ARRAY[n_slots]);
    sl_hash    BYTEA[]   := array_fill('\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, ARRAY[n_slots]);
    sl_tenant  TEXT[]    := array_fill(NULL::TEXT, ARRAY[n_slots]);
    sl_type    TEXT[]    := array_fill(NULL::TEXT, ARRAY[n_slots]);
    sl_head    BIGINT[];
    sl_written BOOLEAN[] := array_fill(false, ARRAY[n_slots]);
    en_version BIGINT[]  := array_fill(0::BIGINT, ARRAY[n_entries]);
    ev_item    INTEGER[] := array_fill(0, ARRAY[n_events]);
    ev_entry   INTEGER[] := array_fill(0, ARRAY[n_events]);
    ev_pos     BIGINT[]  := array_fill(0::BIGINT, ARRAY[n_events]);
    ev_ver     BIGINT[]  := array_fill(0::BIGINT, ARRAY[n_events]);
    ev_hash    BYTEA[]   := array_fill(NULL::BYTEA, ARRAY[n_events]);
    lg_item        INTEGER[];
    lg_fingerprint BYTEA[];
    lg_result      TEXT[];
    lg_first       BIGINT[];
    lg_count       INTEGER[];
    hd_version BIGINT[];
    hd_hash    BYTEA[];
    hd_tenant  TEXT[];
    hd_type    TEXT[];
    v_offset   BIGINT;
    v_last_pos BIGINT;
    v_last_tx  XID8;
    v_floor    BIGINT;
    v_xid      XID8;
    v_base     BIGINT;
    v_now      TIMESTAMPTZ;
    v_next     BIGINT := 0;
    v_accepted INTEGER := 0;
    e INTEGER; i INTEGER; j INTEGER; s INTEGER; k INTEGER;
BEGIN
    IF n_items = 0 OR n_entries = 0 OR n_events = 0 OR n_events > 65535
       OR coalesce(array_length(p_it_command_ids, 1), 0) <> n_items
       OR coalesce(array_length(p_it_fingerprints, 1), 0) <> n_items
       OR coalesce(array_length(p_it_metadata, 1), 0) <> n_items
       OR coalesce(array_length(p_en_slot, 1), 0) <> n_entries
       OR coalesce(array_length(p_en_type, 1), 0) <> n_entries
       OR coalesce(array_length(p_en_expected, 1), 0) <> n_entries
       OR coalesce(array_length(p_en_count, 1), 0) <> n_entries
       OR coalesce(array_length(p_ev_types, 1), 0) <> n_events
       OR coalesce(array_length(p_ev_schema_versions, 1), 0) <> n_events
       OR coalesce(array_length(p_ev_payloads, 1), 0) <> n_events THEN
        RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'annals_append must run before any write of its transaction'
            USING ERRCODE = 'ANX01',
                  HINT = 'positions come from the transaction id, which must be assigned after the stream locks; append in a transaction of its own';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'annals_append needs READ COMMITTED isolation, not %',
                        current_setting('transaction_isolation')
            USING ERRCODE = 'ANX02',
                  HINT = 'under a snapshot taken before the stream locks, stream heads would be stale';
    END IF;

    -- Map events to items, check the entry/event layout.
    j := 0;
    FOR e IN 1..n_entries LOOP
        i := p_en_item[e];
        s := p_en_slot[e];
        IF i IS NULL OR i < 1 OR i > n_items OR s IS NULL OR s < 1 OR s > n_slots
           OR p_en_count[e] IS NULL OR p_en_count[e] < 1 OR j + p_en_count[e] > n_events THEN
            RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
        END IF;
        FOR k IN j + 1 .. j + p_en_count[e] LOOP
            ev_item[k] := i;
            ev_entry[k] := e;
        END LOOP;
        j := j + p_en_count[e];
        it_count[i] := it_count[i] + p_en_count[e];
    END LOOP;
    IF j <> n_events THEN
        RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
    END IF;

    -- Three statements in all. In READ COMMITTED a statement's snapshot is taken when it
    -- starts, so what must be read after a lock is read by the statement after the one that
    -- took it.
    --
    -- 1. No append straddles a change of position epoch (see the header); the streams are
    --    locked in a fixed order (no deadlocks). A retry of a command targets the same streams
    --    as its first attempt, so this also serialises a retry behind an attempt in flight; a
    --    command id reused concurrently on other streams meets the command log's primary key,
    --    which fails the group, and the writer then retries its appends one by one.
    PERFORM pg_advisory_xact_lock_shared(annals_epoch_lock_key()),
            (SELECT count(pg_advisory_xact_lock(key))
               FROM (SELECT DISTINCT hashtextextended('annals.stream:' || sid, 0) AS key
                       FROM unnest(p_slot_stream) AS sid ORDER BY 1) AS keys);

    -- After the locks: a waiter reads a later time than the append it waited for.
    v_now := clock_timestamp();

    -- 2. After the locks: the stream heads, the command ids already logged, the position
    --    epoch, and the newest event for the restore check.
    SELECT h.versions, h.hashes, h.tenants, h.types, coalesce(ep.xid_offset, 0),
           coalesce(ep.floor_position, 0), newest.global_position, newest.tx_id,
           lg.items, lg.fingerprints, lg.results, lg.firsts, lg.counts
      INTO hd_version, hd_hash, hd_tenant, hd_type, v_offset, v_floor, v_last_pos, v_last_tx,
           lg_item, lg_fingerprint, lg_result, lg_first, lg_count
      FROM (SELECT array_agg(st.version ORDER BY u.ord) AS versions,
                   array_agg(st.last_hash ORDER BY u.ord) AS hashes,
                   array_agg(st.tenant_id ORDER BY u.ord) AS tenants,
                   array_agg(st.stream_type ORDER BY u.ord) AS types
              FROM unnest(p_slot_stream) WITH ORDINALITY AS u(sid, ord)
              LEFT JOIN streams st ON st.stream_id = u.sid) AS h
     CROSS JOIN (SELECT array_agg(u.ord) AS items, array_agg(cl.fingerprint) AS fingerprints,
                        array_agg(cl.result::text) AS results,
                        array_agg(cl.first_position) AS firsts,
                        array_agg(cl.event_count) AS counts
                   FROM unnest(p_it_command_ids) WITH ORDINALITY AS u(cid, ord)
                   JOIN command_log cl ON cl.command_id = u.cid) AS lg
      -- Floors only grow, so the newest epoch's floor is annals_delivery_floor().
      LEFT JOIN LATERAL (SELECT e.xid_offset, e.floor_position FROM annals_position_epochs e
                          ORDER BY e.epoch DESC LIMIT 1) AS ep ON true
      LEFT JOIN LATERAL (SELECT ev.global_position, ev.tx_id FROM events ev
                          ORDER BY ev.global_position DESC LIMIT 1) AS newest ON true;
    FOR j IN 1 .. coalesce(array_length(lg_item, 1), 0) LOOP
        i := lg_item[j];
        IF lg_fingerprint[j] IS DISTINCT FROM p_it_fingerprints[i] THEN
            it_status[i] := 3;
        ELSIF lg_result[j] IS NOT NULL THEN
            it_status[i] := 1;
            it_detail[i] := lg_result[j];
        ELSE
            it_status[i] := 1;
            it_detail[i] := (
                SELECT jsonb_build_object(
                    'events', jsonb_agg(jsonb_build_object(
                        'event_id', ev.event_id, 'stream_id', ev.stream_id,
                        'stream_version', ev.stream_version,
                        'global_position', ev.global_position) ORDER BY ev.global_position),
                    'recorded_at', min(ev.recorded_at))::text
                  FROM events ev
                 WHERE ev.global_position >= lg_first[j]
                   AND ev.global_position < lg_first[j] + lg_count[j]);
        END IF;
    END LOOP;
    FOR s IN 1 .. n_slots LOOP
        IF hd_version[s] IS NOT NULL THEN
            sl_version[s] := hd_version[s];
            sl_hash[s] := hd_hash[s];
            sl_tenant[s] := hd_tenant[s];
            sl_type[s] := hd_type[s];
        END IF;
    END LOOP;
    sl_head := sl_version;

    -- Decide every item in order against the heads as the accepted items before it left them.
    e := 1;
    FOR i IN 1..n_items LOOP
        j := e;
        WHILE e <= n_entries AND p_en_item[e] = i LOOP
            e := e + 1;
        END LOOP;
        CONTINUE WHEN it_status[i] <> 0;
        FOR k IN j .. e - 1 LOOP
            s := p_en_slot[k];
            IF sl_tenant[s] IS NOT NULL
               AND (sl_tenant[s] <> p_it_tenants[i] OR sl_type[s] <> p_en_type[k]) THEN
                it_status[i] := 4;
                it_detail[i] := jsonb_build_object('stream_id', p_slot_stream[s])::text;
                EXIT;
            END IF;
            IF (p_en_expected[k] = 0 AND sl_version[s] > 0)
               OR (p_en_expected[k] > 0 AND sl_version[s] <> p_en_expected[k]) THEN
                it_status[i] := 2;
                it_detail[i] := jsonb_build_object(
                    'stream_id', p_slot_stream[s], 'expected', p_en_expected[k],
                    'actual', CASE WHEN sl_version[s] > 0 THEN sl_version[s] END)::text;
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN it_status[i] <> 0;
        FOR k IN j .. e - 1 LOOP
            s := p_en_slot[k];
            sl_version[s] := sl_version[s] + p_en_count[k];
            sl_tenant[s] := p_it_tenants[i];
            sl_type[s] := p_en_type[k];
            sl_written[s] := true;
            en_version[k] := sl_version[s];
        END LOOP;
        v_accepted := v_accepted + 1;
    END LOOP;

    IF v_accepted > 0 THEN
        -- Every xid this cluster assigned is below its snapshot's xmax; a stored one that is not
        -- was assigned by another cluster (a logical restore).
        IF v_last_pos >= v_floor AND v_last_tx >= pg_snapshot_xmax(pg_current_snapshot()) THEN
            RAISE EXCEPTION 'the newest stored event (position %) was written by transaction %, which this database server has not reached yet', v_last_pos, v_last_tx
                USING ERRCODE = 'ANR01',
                      HINT = 'the store was restored or replicated into another cluster; run SELECT annals_rebase_positions() once (annals store rebase-positions) so that new positions follow the stored ones';
        END IF;

        -- The first write of this transaction: the xid is assigned here, after the stream locks.
        v_xid := pg_current_xact_id();
        v_base := (v_xid::text::bigint + v_offset) * 65536;

        sl_version := sl_head;
        FOR k IN 1..n_events LOOP
            i := ev_item[k];
            CONTINUE WHEN it_status[i] <> 0;
            IF it_first[i] IS NULL THEN
                it_first[i] := v_base + v_next;
            END IF;
            ev_pos[k] := v_base + v_next;
            v_next := v_next + 1;
        END LOOP;

        -- Versions and hashes, entry by entry.
        j := 0;
        FOR e IN 1..n_entries LOOP
            i := p_en_item[e];
            s := p_en_slot[e];
            IF it_status[i] <> 0 THEN
                j := j + p_en_count[e];
                CONTINUE;
            END IF;
            FOR k IN j + 1 .. j + p_en_count[e] LOOP
                sl_version[s] := sl_version[s] + 1;
                ev_ver[k] := sl_version[s];
                -- annals_event_hash written out (nested SQL functions are not inlined in
                -- PL/pgSQL); the Rust verifier checks the same bytes.
                ev_hash[k] := sha256(sl_hash[s] || '\x616e6e616c732e7631'::bytea  -- 'annals.v1'
                    || int8send(ev_pos[k]) || uuid_send(p_ev_ids[k])
                    || int4send(octet_length(p_slot_stream[s])) || convert_to(p_slot_stream[s], 'UTF8')
                    || int4send(octet_length(p_en_type[e])) || convert_to(p_en_type[e], 'UTF8')
                    || int8send(ev_ver[k])
                    || int4send(octet_length(p_it_tenants[i])) || convert_to(p_it_tenants[i], 'UTF8')
                    || int4send(octet_length(p_ev_types[k])) || convert_to(p_ev_types[k], 'UTF8')
                    || int4send(p_ev_schema_versions[k])
                    || int4send(octet_length(p_ev_payloads[k])) || convert_to(p_ev_payloads[k], 'UTF8')
                    || int4send(octet_length(p_it_metadata[i])) || convert_to(p_it_metadata[i], 'UTF8')
                    || int8send((extract(epoch FROM v_now) * 1000000)::bigint));
                sl_hash[s] := ev_hash[k];
            END LOOP;
            j := j + p_en_count[e];
        END LOOP;

        -- 3. Events, stream heads and command log in one statement.
        WITH new_events AS (
            INSERT INTO events (global_position, event_id, stream_id, stream_type,
                                stream_version, tenant_id, event_type, schema_version, payload,
                                metadata, recorded_at, tx_id, hash)
            SELECT ev_pos[g], p_ev_ids[g], p_slot_stream[p_en_slot[ev_entry[g]]],
                   p_en_type[ev_entry[g]], ev_ver[g], p_it_tenants[ev_item[g]], p_ev_types[g],
                   p_ev_schema_versions[g], p_ev_payloads[g]::json,
                   p_it_metadata[ev_item[g]]::json, v_now, v_xid, ev_hash[g]
              FROM generate_series(1, n_events) AS gs(g)
             WHERE it_status[ev_item[g]] = 0
        ), heads AS (
            INSERT INTO streams AS st (stream_id, stream_type, tenant_id, version, last_hash,
                                       created_at, updated_at)
            SELECT p_slot_stream[g], sl_type[g], sl_tenant[g], sl_version[g], sl_hash[g], v_now,
                   v_now
              FROM generate_series(1, n_slots) AS gs(g)
             WHERE sl_written[g]
            ON CONFLICT (stream_id) DO UPDATE
               SET version = excluded.version, last_hash = excluded.last_hash,
                   updated_at = excluded.updated_at
        )
        INSERT INTO command_log (command_id, fingerprint, result, recorded_at, first_position,
                                 event_count)
        SELECT p_it_command_ids[g], p_it_fingerprints[g], NULL, v_now, it_first[g], it_count[g]
          FROM generate_series(1, n_items) AS gs(g)
         WHERE it_status[g] = 0 AND p_it_command_ids[g] IS NOT NULL;
    END IF;

    e := 1;
    FOR i IN 1..n_items LOOP
        j := e;
        WHILE e <= n_entries AND p_en_item[e] = i LOOP
            e := e + 1;
        END LOOP;
        r_item := i;
        r_status := it_status[i];
        r_detail := it_detail[i];
        IF it_status[i] = 0 THEN
            r_first_position := it_first[i];
            r_versions := en_version[j:e - 1];
            r_recorded_at := v_now;
        ELSE
            r_first_position := NULL;
            r_versions := NULL;
            r_recorded_at := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Starts a new position epoch after a logical restore (see the header); safe to run any time.
-- Waits for running appends and blocks new ones while it runs (a short step).
CREATE FUNCTION annals_rebase_positions() RETURNS TABLE (epoch INTEGER, xid_offset BIGINT,
                                                         floor_position BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    v_epoch  INTEGER;
    v_offset BIGINT;
    v_max    BIGINT;
    v_next   BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(annals_epoch_lock_key());
    SELECT coalesce(max(global_position), 0) INTO v_max FROM events;
    SELECT coalesce(max(e.epoch), 0) + 1,
           coalesce((SELECT e2.xid_offset FROM annals_position_epochs e2 ORDER BY e2.epoch DESC LIMIT 1), 0)
      INTO v_epoch, v_offset
      FROM annals_position_epochs e;
    v_next := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
    -- Every later xid is >= v_next, so its first position is > v_max.
    v_offset := greatest(v_offset, v_max / 65536 + 1 - v_next);
    INSERT INTO annals_position_epochs (epoch, xid_offset, floor_position, created_at)
    VALUES (v_epoch, v_offset, v_max + 1, clock_timestamp());
    RETURN QUERY SELECT v_epoch, v_offset, v_max + 1;
END
$$;

-- The single-append function of earlier releases, kept for SQL callers and running binaries of
-- the previous release: one item through annals_append_group, the old JSON result, the old
-- errors (ANV01, ANC01) raised.
CREATE OR REPLACE FUNCTION annals_append(
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
    n_streams INTEGER := coalesce(array_length(p_stream_ids, 1), 0);
    v_counts  INTEGER[];
    v_out     RECORD;
BEGIN
    IF n_streams = 0 OR EXISTS (SELECT 1 FROM unnest(p_ev_stream) WITH ORDINALITY AS u(s, ord)
                                 WHERE u.ord > 1 AND u.s < p_ev_stream[u.ord - 1]) THEN
        RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
    END IF;
    SELECT array_agg((SELECT count(*)::int FROM unnest(p_ev_stream) AS x WHERE x = gs.s) ORDER BY gs.s)
      INTO v_counts FROM generate_series(1, n_streams) AS gs(s);
    SELECT * INTO v_out FROM annals_append_group(
        ARRAY[p_command_id], ARRAY[p_fingerprint], ARRAY[p_tenant], ARRAY[p_metadata],
        array_fill(1, ARRAY[n_streams]), (SELECT array_agg(gs.s ORDER BY gs.s) FROM generate_series(1, n_streams) AS gs(s)),
        p_stream_types, p_expected, v_counts, p_stream_ids,
        p_ev_ids, p_ev_types, p_ev_schema_versions, p_ev_payloads);
    IF v_out.r_status = 2 THEN
        RAISE EXCEPTION 'wrong expected version for stream %', v_out.r_detail::jsonb ->> 'stream_id'
            USING ERRCODE = 'ANV01', DETAIL = v_out.r_detail;
    ELSIF v_out.r_status = 3 THEN
        RAISE EXCEPTION 'command id % was already used for a different request', p_command_id
            USING ERRCODE = 'ANC01';
    ELSIF v_out.r_status = 4 THEN
        RAISE EXCEPTION 'stream % belongs to another tenant or stream type', v_out.r_detail::jsonb ->> 'stream_id'
            USING ERRCODE = 'ANS01';
    ELSIF v_out.r_status = 1 THEN
        RETURN v_out.r_detail::jsonb || jsonb_build_object('replayed', true);
    END IF;
    RETURN jsonb_build_object(
        'streams', (SELECT jsonb_agg(jsonb_build_object('stream_id', p_stream_ids[k],
                                                        'version', v_out.r_versions[k]) ORDER BY k)
                      FROM generate_series(1, n_streams) AS gs(k)),
        'events', (SELECT jsonb_agg(jsonb_build_object(
                              'event_id', ev.event_id, 'stream_id', ev.stream_id,
                              'stream_version', ev.stream_version,
                              'global_position', ev.global_position) ORDER BY ev.global_position)
                     FROM events ev
                    WHERE ev.global_position >= v_out.r_first_position
                      AND ev.global_position < v_out.r_first_position + array_length(p_ev_ids, 1)),
        'recorded_at', v_out.r_recorded_at,
        'replayed', false);
END
$$;
