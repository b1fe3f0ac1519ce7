-- Two roles (issue 15, items 1 and 6). Migrations run as the owner of every table; the services
-- run as a member of `annals_service`, which may append to the event store and read it, and may
-- never change or remove what is stored:
--
-- * events, streams, command_log, annals_position_epochs: SELECT only. Appends go through
--   `annals_append_group` / `annals_append`, which become SECURITY DEFINER (they run with the
--   owner's rights, pinned search_path) and are executable by `annals_service` only, not by
--   PUBLIC. A later migration that replaces one of them must say SECURITY DEFINER and SET
--   search_path again: CREATE OR REPLACE resets both (the roles tests would then fail to append).
-- * the global chain (annals_chain_leaves, annals_chain_nodes) and the signed checkpoints:
--   SELECT and INSERT; the sealer's progress row annals_chain_state: SELECT and UPDATE. (The
--   chain's trust rests on the signatures, not on these grants: they only keep mistakes out.)
-- * audit_log: SELECT and INSERT. Its trigger refuses UPDATE and DELETE to everyone, and TRUNCATE
--   (the rebuild swap's maintenance path) now also needs membership in the table owner's role,
--   so `annals.audit_swap` alone no longer switches the guard off.
-- * the read side and the runtime's own bookkeeping (read models, summaries, projection state,
--   checkpoints, notifications, tokens): SELECT, INSERT, UPDATE, DELETE — all of it is derived
--   from the events and rebuilt from them. No TRUNCATE, no DDL: a rebuild (which moves tables) and
--   `rebase-positions` are maintenance verbs run as the owner.
-- * nobody but the owner may ALTER a table, so no service can disable a trigger.
--
-- `annals_service` is NOLOGIN; deploy/local/postgres.sh creates the login `annals_app` in it.
-- Roles are cluster-wide: created here when the migrating user may (an existing one is reused);
-- otherwise a NOTICE, and the services must connect as an owner with --allow-owner.
DO $$
DECLARE
    t TEXT;
    f REGPROCEDURE;
    append_only TEXT[] := ARRAY['audit_log', 'annals_chain_leaves', 'annals_chain_nodes',
                                'annals_checkpoints'];
    -- The sealer's one progress row: it moves forward, it is never inserted or removed.
    progress_only TEXT[] := ARRAY['annals_chain_state'];
    read_only TEXT[] := ARRAY['events', 'streams', 'command_log', 'annals_position_epochs',
                              '_sqlx_migrations'];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'annals_service') THEN
        CREATE ROLE annals_service NOLOGIN;
    END IF;
    -- The query service assumes annals_reader per request (row-level security).
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'annals_reader') THEN
        GRANT annals_reader TO annals_service;
    END IF;
    GRANT USAGE ON SCHEMA public TO annals_service;

    -- Table names come from the catalog or the constants above, never input.
    FOR t IN
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v')
    LOOP
        EXECUTE format('REVOKE ALL ON public.%I FROM annals_service', t);
        IF t = ANY (read_only) THEN
            EXECUTE format('GRANT SELECT ON public.%I TO annals_service', t);
        ELSIF t = ANY (append_only) THEN
            EXECUTE format('GRANT SELECT, INSERT ON public.%I TO annals_service', t);
        ELSIF t = ANY (progress_only) THEN
            EXECUTE format('GRANT SELECT, UPDATE ON public.%I TO annals_service', t);
        ELSE
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO annals_service', t);
        END IF;
    END LOOP;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO annals_service;

    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN ('annals_append_group', 'annals_append')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = public, pg_temp', f);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO annals_service', f);
    END LOOP;
    -- Maintenance only: a new position epoch is the owner's decision.
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN ('annals_rebase_positions', 'annals_rebuild_dress',
                             'annals_rebuild_index', 'annals_rebuild_swap')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
EXCEPTION
    WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
        RAISE NOTICE 'annals_service role not set up: %', SQLERRM;
END
$$;

-- Item 6: the swap's TRUNCATE of the audit log needs the flag AND the owner's role; a session
-- that merely may set a custom setting (any session) cannot switch the guard off.
CREATE OR REPLACE FUNCTION annals_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE'
       AND current_setting('annals.audit_swap', true) = 'on'
       AND pg_has_role(current_user,
                       (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'ANI02';
END
$$;
