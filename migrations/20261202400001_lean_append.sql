-- A leaner append call (issue 12: the fixed cost of a lone append).
--
-- Profiling one-append calls with perf showed where the server's time went beyond the writes:
-- * each call is a transaction of its own, and PL/pgSQL chose custom plans for its statements
--   (their array arguments differ in length from call to call), so both big statements were
--   planned again on every call: a quarter of the call's CPU. The function now says
--   `plan_cache_mode = force_generic_plan`; its statements read by key, so the generic plans are
--   the plans we want.
-- * `annals_stream_lock_key` could not be inlined (its body converted an integer to text
--   through `textanycat`, which is only STABLE), so every lock key ran the SQL-function
--   executor. Same key text, now inlinable.
-- * the general path's bookkeeping (twenty array initialisations, four loops over items,
--   entries and events) ran for a lone append too. One item on one stream, the shape of every
--   group a lone writer sends and of most commands, now takes a path of scalars with the same
--   decisions, the same three statements (locks; reads after the locks; one write) and the same
--   answer.
-- Signature, results and guarantees are unchanged (see 20261202000001_group_commit.sql and
-- 20261202100001_tenant_scoped_ids.sql); as 20261202300001_service_role.sql asks, the function
-- stays SECURITY DEFINER with a pinned search_path (CREATE OR REPLACE keeps its grants).

CREATE OR REPLACE FUNCTION annals_stream_lock_key(p_tenant TEXT, p_stream TEXT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT hashtextextended('annals.stream:' || length(p_tenant)::text || ':' || p_tenant || ':' || p_stream, 0)
$$;

-- The answer to a replayed command: its events, which occupy the contiguous positions
-- [p_first, p_first + p_count), as the JSON the store decodes (`writer::replayed`). One
-- definition for both paths of annals_append_group and for EventStore::command_result.
CREATE FUNCTION annals_command_events(p_first BIGINT, p_count INTEGER) RETURNS TEXT
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
               'events', jsonb_agg(jsonb_build_object(
                   'event_id', ev.event_id, 'stream_id', ev.stream_id,
                   'stream_version', ev.stream_version,
                   'global_position', ev.global_position) ORDER BY ev.global_position),
               'recorded_at', min(ev.recorded_at))::text
      FROM events ev
     WHERE ev.global_position >= p_first
       AND ev.global_position < p_first + p_count
$$;

CREATE OR REPLACE FUNCTION annals_append_group(
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
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = public, pg_temp
-- Each call is its own transaction: custom plans would be re-planned on every call (the
-- arrays' lengths differ), which cost a quarter of the call's CPU.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    n_items   INTEGER := coalesce(array_length(p_it_tenants, 1), 0);
    n_entries INTEGER := coalesce(array_length(p_en_item, 1), 0);
    n_slots   INTEGER := coalesce(array_length(p_slot_stream, 1), 0);
    n_events  INTEGER := coalesce(array_length(p_ev_ids, 1), 0);
    -- per item: 0 undecided/accepted, else the refusal status
    it_status INTEGER[];
    it_detail TEXT[];
    it_first BIGINT[];
    it_count INTEGER[];
    -- per slot: head as read, then as decided
    sl_version BIGINT[];
    sl_hash BYTEA[];
    sl_tenant TEXT[];
    sl_type TEXT[];
    sl_head    BIGINT[];
    sl_written BOOLEAN[];
    en_version BIGINT[];
    ev_item INTEGER[];
    ev_entry INTEGER[];
    ev_pos BIGINT[];
    ev_ver BIGINT[];
    ev_hash BYTEA[];
    lg_item        INTEGER[];
    lg_fingerprint BYTEA[];
    lg_result      TEXT[];
    lg_first       BIGINT[];
    lg_count       INTEGER[];
    hd_version BIGINT[];
    hd_hash    BYTEA[];
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
    -- the one-item path
    v_head     BIGINT;
    v_hash     BYTEA;
    v_type     TEXT;
    v_logged   BOOLEAN;
    v_fp       BYTEA;
    v_result   TEXT;
    v_first    BIGINT;
    v_count    INTEGER;
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

    -- One item on one stream (every group of a lone writer, and most commands): the same
    -- decisions as the general path below, in scalars, with three statements of a few plan
    -- nodes each. Its answer is the one the general path would give.
    IF n_items = 1 AND n_entries = 1 AND n_slots = 1 THEN
        IF p_en_item[1] IS DISTINCT FROM 1 OR p_en_slot[1] IS DISTINCT FROM 1
           OR p_en_count[1] IS DISTINCT FROM n_events OR p_it_tenants[1] IS NULL THEN
            RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
        END IF;
        -- 1. The locks, as in the general path.
        PERFORM pg_advisory_xact_lock_shared(annals_epoch_lock_key()),
                pg_advisory_xact_lock(annals_stream_lock_key(p_it_tenants[1], p_slot_stream[1]));
        v_now := clock_timestamp();
        -- 2. After the locks: head, command log entry, epoch, newest event.
        SELECT st.version, st.last_hash, st.stream_type, cl.command_id IS NOT NULL,
               cl.fingerprint, cl.result::text, cl.first_position, cl.event_count,
               coalesce(ep.xid_offset, 0), coalesce(ep.floor_position, 0),
               newest.global_position, newest.tx_id
          INTO v_head, v_hash, v_type, v_logged, v_fp, v_result, v_first, v_count,
               v_offset, v_floor, v_last_pos, v_last_tx
          FROM (SELECT) AS one
          LEFT JOIN streams st
                 ON st.tenant_id = p_it_tenants[1] AND st.stream_id = p_slot_stream[1]
          LEFT JOIN command_log cl
                 ON cl.tenant_id = p_it_tenants[1] AND cl.command_id = p_it_command_ids[1]
          LEFT JOIN LATERAL (SELECT e.xid_offset, e.floor_position FROM annals_position_epochs e
                              ORDER BY e.epoch DESC LIMIT 1) AS ep ON true
          LEFT JOIN LATERAL (SELECT ev.global_position, ev.tx_id FROM events ev
                              ORDER BY ev.global_position DESC LIMIT 1) AS newest ON true;
        r_item := 1;
        r_first_position := NULL;
        r_versions := NULL;
        r_recorded_at := NULL;
        r_detail := NULL;
        IF v_logged THEN
            IF v_fp IS DISTINCT FROM p_it_fingerprints[1] THEN
                r_status := 3;
            ELSE
                r_status := 1;
                r_detail := coalesce(v_result, annals_command_events(v_first, v_count));
            END IF;
            RETURN NEXT;
            RETURN;
        END IF;
        v_head := coalesce(v_head, 0);
        IF v_type IS NOT NULL AND v_type <> p_en_type[1] THEN
            r_status := 4;
            r_detail := jsonb_build_object('stream_id', p_slot_stream[1])::text;
            RETURN NEXT;
            RETURN;
        END IF;
        IF (p_en_expected[1] = 0 AND v_head > 0)
           OR (p_en_expected[1] > 0 AND v_head <> p_en_expected[1]) THEN
            r_status := 2;
            r_detail := jsonb_build_object(
                'stream_id', p_slot_stream[1], 'expected', p_en_expected[1],
                'actual', CASE WHEN v_head > 0 THEN v_head END)::text;
            RETURN NEXT;
            RETURN;
        END IF;
        IF v_last_pos >= v_floor AND v_last_tx >= pg_snapshot_xmax(pg_current_snapshot()) THEN
            RAISE EXCEPTION 'the newest stored event (position %) was written by transaction %, which this database server has not reached yet', v_last_pos, v_last_tx
                USING ERRCODE = 'ANR01',
                      HINT = 'the store was restored or replicated into another cluster; run SELECT annals_rebase_positions() once (annals store rebase-positions) so that new positions follow the stored ones';
        END IF;
        v_xid := pg_current_xact_id();
        v_base := (v_xid::text::bigint + v_offset) * 65536;
        v_hash := coalesce(v_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
        ev_hash := array_fill(NULL::BYTEA, ARRAY[n_events]);
        FOR k IN 1..n_events LOOP
            v_hash := sha256(v_hash || '\x616e6e616c732e7631'::bytea  -- 'annals.v1'
                || int8send(v_base + k - 1) || uuid_send(p_ev_ids[k])
                || int4send(octet_length(p_slot_stream[1])) || convert_to(p_slot_stream[1], 'UTF8')
                || int4send(octet_length(p_en_type[1])) || convert_to(p_en_type[1], 'UTF8')
                || int8send(v_head + k)
                || int4send(octet_length(p_it_tenants[1])) || convert_to(p_it_tenants[1], 'UTF8')
                || int4send(octet_length(p_ev_types[k])) || convert_to(p_ev_types[k], 'UTF8')
                || int4send(p_ev_schema_versions[k])
                || int4send(octet_length(p_ev_payloads[k])) || convert_to(p_ev_payloads[k], 'UTF8')
                || int4send(octet_length(p_it_metadata[1])) || convert_to(p_it_metadata[1], 'UTF8')
                || int8send((extract(epoch FROM v_now) * 1000000)::bigint));
            ev_hash[k] := v_hash;
        END LOOP;
        -- 3. Events, stream head and command log in one statement.
        WITH new_events AS (
            INSERT INTO events (global_position, event_id, stream_id, stream_type,
                                stream_version, tenant_id, event_type, schema_version, payload,
                                metadata, recorded_at, tx_id, hash)
            SELECT v_base + g - 1, p_ev_ids[g], p_slot_stream[1], p_en_type[1], v_head + g,
                   p_it_tenants[1], p_ev_types[g], p_ev_schema_versions[g], p_ev_payloads[g]::json,
                   p_it_metadata[1]::json, v_now, v_xid, ev_hash[g]
              FROM generate_series(1, n_events) AS gs(g)
        ), head AS (
            INSERT INTO streams AS st (stream_id, stream_type, tenant_id, version, last_hash,
                                       created_at, updated_at)
            VALUES (p_slot_stream[1], p_en_type[1], p_it_tenants[1], v_head + n_events, v_hash,
                    v_now, v_now)
            ON CONFLICT (tenant_id, stream_id) DO UPDATE
               SET version = excluded.version, last_hash = excluded.last_hash,
                   updated_at = excluded.updated_at
        )
        INSERT INTO command_log (tenant_id, command_id, fingerprint, result, recorded_at,
                                 first_position, event_count)
        SELECT p_it_tenants[1], p_it_command_ids[1], p_it_fingerprints[1], NULL, v_now, v_base,
               n_events
         WHERE p_it_command_ids[1] IS NOT NULL;
        r_status := 0;
        r_first_position := v_base;
        r_versions := ARRAY[v_head + n_events];
        r_recorded_at := v_now;
        RETURN NEXT;
        RETURN;
    END IF;

    -- The general path: any number of items and streams.
    it_status := array_fill(0, ARRAY[n_items]);
    it_detail := array_fill(NULL::TEXT, ARRAY[n_items]);
    it_first := array_fill(NULL::BIGINT, ARRAY[n_items]);
    it_count := array_fill(0, ARRAY[n_items]);
    sl_version := array_fill(0::BIGINT, ARRAY[n_slots]);
    sl_hash := array_fill('\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, ARRAY[n_slots]);
    sl_tenant := array_fill(NULL::TEXT, ARRAY[n_slots]);
    sl_type := array_fill(NULL::TEXT, ARRAY[n_slots]);
    sl_written := array_fill(false, ARRAY[n_slots]);
    en_version := array_fill(0::BIGINT, ARRAY[n_entries]);
    ev_item := array_fill(0, ARRAY[n_events]);
    ev_entry := array_fill(0, ARRAY[n_events]);
    ev_pos := array_fill(0::BIGINT, ARRAY[n_events]);
    ev_ver := array_fill(0::BIGINT, ARRAY[n_events]);
    ev_hash := array_fill(NULL::BYTEA, ARRAY[n_events]);

    -- Map events to items, check the entry/event layout.
    j := 0;
    FOR e IN 1..n_entries LOOP
        i := p_en_item[e];
        s := p_en_slot[e];
        IF i IS NULL OR i < 1 OR i > n_items OR s IS NULL OR s < 1 OR s > n_slots
           OR p_en_count[e] IS NULL OR p_en_count[e] < 1 OR j + p_en_count[e] > n_events THEN
            RAISE EXCEPTION 'malformed append arguments' USING ERRCODE = 'ANA01';
        END IF;
        -- A slot is one (tenant, stream) of the group: every item naming it is of its tenant.
        -- (A caller that keyed slots by stream alone gets ANA01 for a group mixing tenants on one
        -- stream id, and its writer retries the items one by one.)
        IF sl_tenant[s] IS NULL THEN
            sl_tenant[s] := p_it_tenants[i];
        ELSIF sl_tenant[s] <> p_it_tenants[i] THEN
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
               FROM (SELECT DISTINCT annals_stream_lock_key(tid, sid) AS key
                       FROM unnest(sl_tenant, p_slot_stream) AS u(tid, sid) ORDER BY 1) AS keys);

    -- After the locks: a waiter reads a later time than the append it waited for.
    v_now := clock_timestamp();

    -- 2. After the locks: the stream heads, the command ids already logged, the position
    --    epoch, and the newest event for the restore check.
    SELECT h.versions, h.hashes, h.types, coalesce(ep.xid_offset, 0),
           coalesce(ep.floor_position, 0), newest.global_position, newest.tx_id,
           lg.items, lg.fingerprints, lg.results, lg.firsts, lg.counts
      INTO hd_version, hd_hash, hd_type, v_offset, v_floor, v_last_pos, v_last_tx,
           lg_item, lg_fingerprint, lg_result, lg_first, lg_count
      FROM (SELECT array_agg(st.version ORDER BY u.ord) AS versions,
                   array_agg(st.last_hash ORDER BY u.ord) AS hashes,
                   array_agg(st.stream_type ORDER BY u.ord) AS types
              FROM unnest(sl_tenant, p_slot_stream) WITH ORDINALITY AS u(tid, sid, ord)
              LEFT JOIN streams st ON st.tenant_id = u.tid AND st.stream_id = u.sid) AS h
     CROSS JOIN (SELECT array_agg(u.ord) AS items, array_agg(cl.fingerprint) AS fingerprints,
                        array_agg(cl.result::text) AS results,
                        array_agg(cl.first_position) AS firsts,
                        array_agg(cl.event_count) AS counts
                   FROM unnest(p_it_tenants, p_it_command_ids) WITH ORDINALITY AS u(tid, cid, ord)
                   JOIN command_log cl ON cl.tenant_id = u.tid AND cl.command_id = u.cid) AS lg
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
            it_detail[i] := annals_command_events(lg_first[j], lg_count[j]);
        END IF;
    END LOOP;
    FOR s IN 1 .. n_slots LOOP
        IF hd_version[s] IS NOT NULL THEN
            sl_version[s] := hd_version[s];
            sl_hash[s] := hd_hash[s];
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
            IF sl_type[s] IS NOT NULL AND sl_type[s] <> p_en_type[k] THEN
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
            ON CONFLICT (tenant_id, stream_id) DO UPDATE
               SET version = excluded.version, last_hash = excluded.last_hash,
                   updated_at = excluded.updated_at
        )
        INSERT INTO command_log (tenant_id, command_id, fingerprint, result, recorded_at,
                                 first_position, event_count)
        SELECT p_it_tenants[g], p_it_command_ids[g], p_it_fingerprints[g], NULL, v_now,
               it_first[g], it_count[g]
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
