-- Rebuild swap by rename (issue 13). A rebuild fills fresh tables in the schema annals_rebuild;
-- the swap used to delete the live rows and copy the shadow's in, one long transaction that
-- blocked readers for as long as the copy took. Now the shadow tables are moved into `public`
-- (the live ones out to `annals_retired`, dropped after the commit): a catalog change under a
-- short ACCESS EXCLUSIVE lock, whatever the size of the model.
--
-- A moved-in table must be indistinguishable from the one it replaces, so before it is filled
-- `annals_rebuild_dress` gives it what `CREATE TABLE .. (LIKE .. INCLUDING ALL)` does not copy:
-- the live constraint names, row-level security and its policies, privileges and triggers (the
-- audit log's append-only triggers included); once it is filled, `annals_rebuild_index`
-- builds the live secondary indexes on it, with their names. Views over a swapped table are re-pointed in the
-- swap (`CREATE OR REPLACE VIEW` with the same definition and options, so their grants and
-- `security_invoker` stay).
--
-- Table names are the projections' fixed internal lists, never input; they are still quoted
-- with %I. Both functions run with search_path = pg_catalog so that every definition read
-- from the catalog names its objects with their schema.

CREATE FUNCTION annals_rebuild_dress(tbl TEXT) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    live REGCLASS := format('public.%I', tbl)::regclass;
    shadow REGCLASS := format('annals_rebuild.%I', tbl)::regclass;
    r RECORD;
    def TEXT;
    live_on TEXT := ' ON public.' || quote_ident(tbl) || ' ';
BEGIN
    -- Secondary indexes are built once the shadow is filled (annals_rebuild_index): one sort
    -- per index instead of maintaining each through every insert. Indexes backing a constraint
    -- (primary key, unique) stay: the replay's upserts need them.
    FOR r IN
        SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = shadow
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
    LOOP
        EXECUTE format('DROP INDEX annals_rebuild.%I', r.relname);
    END LOOP;

    -- Constraint index (and constraint) names: LIKE generates its own; keep the live ones.
    FOR r IN
        SELECT li.relname AS live_name, si.relname AS shadow_name
          FROM pg_index l
          JOIN pg_class li ON li.oid = l.indexrelid
          JOIN pg_index s ON s.indrelid = shadow
          JOIN pg_class si ON si.oid = s.indexrelid
         WHERE l.indrelid = live
           AND regexp_replace(pg_get_indexdef(l.indexrelid),
                              '^CREATE (UNIQUE )?INDEX \S+ ON \S+ ', 'CREATE \1INDEX ON ')
             = regexp_replace(pg_get_indexdef(s.indexrelid),
                              '^CREATE (UNIQUE )?INDEX \S+ ON \S+ ', 'CREATE \1INDEX ON ')
           AND li.relname <> si.relname
    LOOP
        EXECUTE format('ALTER INDEX annals_rebuild.%I RENAME TO %I', r.shadow_name, r.live_name);
    END LOOP;

    SELECT relrowsecurity, relforcerowsecurity INTO r FROM pg_class WHERE oid = live;
    IF r.relrowsecurity THEN
        EXECUTE format('ALTER TABLE annals_rebuild.%I ENABLE ROW LEVEL SECURITY', tbl);
    END IF;
    IF r.relforcerowsecurity THEN
        EXECUTE format('ALTER TABLE annals_rebuild.%I FORCE ROW LEVEL SECURITY', tbl);
    END IF;
    FOR r IN
        SELECT policyname, permissive, roles, cmd, qual, with_check
          FROM pg_policies WHERE schemaname = 'public' AND tablename = tbl
    LOOP
        EXECUTE format('CREATE POLICY %I ON annals_rebuild.%I AS %s FOR %s TO %s%s%s',
            r.policyname, tbl, r.permissive, r.cmd,
            (SELECT string_agg(CASE WHEN x = 'public' THEN 'PUBLIC' ELSE quote_ident(x) END, ', ')
               FROM unnest(r.roles) AS x),
            CASE WHEN r.qual IS NULL THEN '' ELSE ' USING (' || r.qual || ')' END,
            CASE WHEN r.with_check IS NULL THEN '' ELSE ' WITH CHECK (' || r.with_check || ')' END);
    END LOOP;

    -- Privileges granted to others (the owner's own are implicit).
    FOR r IN
        SELECT a.grantee, a.privilege_type, a.is_grantable
          FROM pg_class c, aclexplode(c.relacl) AS a
         WHERE c.oid = live AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON annals_rebuild.%I TO %s%s', r.privilege_type, tbl,
            CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END,
            CASE WHEN r.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;

    FOR r IN
        SELECT t.tgname, t.tgenabled, pg_get_triggerdef(t.oid) AS def
          FROM pg_trigger t WHERE t.tgrelid = live AND NOT t.tgisinternal
    LOOP
        IF position(live_on IN r.def) = 0 THEN
            RAISE EXCEPTION 'cannot copy trigger % of %: unexpected definition %', r.tgname, tbl, r.def;
        END IF;
        def := replace(r.def, live_on, ' ON annals_rebuild.' || quote_ident(tbl) || ' ');
        EXECUTE def;
        IF r.tgenabled = 'D' THEN
            EXECUTE format('ALTER TABLE annals_rebuild.%I DISABLE TRIGGER %I', tbl, r.tgname);
        END IF;
    END LOOP;
END
$$;

-- Builds on the filled shadow table `tbl` the live table's secondary indexes, with their names,
-- and gathers its statistics.
CREATE FUNCTION annals_rebuild_index(tbl TEXT) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    live REGCLASS := format('public.%I', tbl)::regclass;
    live_on TEXT := ' ON public.' || quote_ident(tbl) || ' ';
    r RECORD;
BEGIN
    FOR r IN
        SELECT c.relname, pg_get_indexdef(i.indexrelid) AS def
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = live
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
    LOOP
        IF position(live_on IN r.def) = 0 THEN
            RAISE EXCEPTION 'cannot copy index % of %: unexpected definition %', r.relname, tbl, r.def;
        END IF;
        EXECUTE replace(r.def, live_on, ' ON annals_rebuild.' || quote_ident(tbl) || ' ');
    END LOOP;
    -- A moved-in table brings no statistics: without them readers get the plans of an empty
    -- table until the next (auto)analyze. A small sample (statistics target 10, this
    -- transaction only) gives the planner sizes and rough distributions at a tenth of the
    -- cost of a full ANALYZE; autovacuum refines them later.
    PERFORM set_config('default_statistics_target', '10', true);
    EXECUTE format('ANALYZE annals_rebuild.%I', tbl);
END
$$;

-- Moves the dressed shadow tables `tbls` into public and the live ones out to annals_retired,
-- and re-points the views over them. Runs inside the caller's (short) swap transaction; fails
-- with lock_not_available (55P03) when a table or view is in use at that instant.
CREATE FUNCTION annals_rebuild_swap(tbls TEXT[]) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t TEXT;
    v RECORD;
    view_schemas TEXT[] := '{}';
    view_names TEXT[] := '{}';
    view_options TEXT[] := '{}';
    view_defs TEXT[] := '{}';
    live OID[];
BEGIN
    SELECT array_agg(format('public.%I', x)::regclass::oid) INTO live FROM unnest(tbls) AS x;
    -- Read before the move, while the definitions still name public.<table>.
    FOR v IN
        SELECT DISTINCT c.oid, n.nspname, c.relname, c.relkind, c.reloptions
          FROM pg_depend d
          JOIN pg_rewrite rw ON rw.oid = d.objid
          JOIN pg_class c ON c.oid = rw.ev_class
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.refobjid = ANY (live) AND c.oid <> ALL (live)
    LOOP
        IF v.relkind <> 'v' THEN
            RAISE EXCEPTION 'cannot swap tables under %.%: not a plain view', v.nspname, v.relname;
        END IF;
        view_schemas := view_schemas || v.nspname::text;
        view_names := view_names || v.relname::text;
        view_options := view_options || COALESCE(array_to_string(v.reloptions, ', '), '');
        view_defs := view_defs || regexp_replace(pg_get_viewdef(v.oid), ';\s*$', '');
    END LOOP;

    -- Every lock at once and without waiting: a swap that waited for one table while holding
    -- another could deadlock with a reader holding the second and waiting for the first (a
    -- view reads several tables; its reader locks the view first). Without the locks, the
    -- caller rolls back and tries again; readers only ever wait for a swap that has them all.
    EXECUTE 'LOCK TABLE ' || (
        SELECT string_agg(x, ', ') FROM (
            SELECT format('public.%I', y) AS x FROM unnest(tbls) AS y
            UNION ALL
            SELECT format('%I.%I', view_schemas[i], view_names[i])
              FROM generate_subscripts(view_names, 1) AS i) AS l)
        || ' IN ACCESS EXCLUSIVE MODE NOWAIT';

    CREATE SCHEMA IF NOT EXISTS annals_retired;
    FOREACH t IN ARRAY tbls LOOP
        EXECUTE format('DROP TABLE IF EXISTS annals_retired.%I', t);
        EXECUTE format('ALTER TABLE public.%I SET SCHEMA annals_retired', t);
        EXECUTE format('ALTER TABLE annals_rebuild.%I SET SCHEMA public', t);
    END LOOP;

    FOR i IN 1 .. coalesce(array_length(view_names, 1), 0) LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %I.%I%s AS %s', view_schemas[i], view_names[i],
            CASE WHEN view_options[i] = '' THEN '' ELSE ' WITH (' || view_options[i] || ')' END,
            view_defs[i]);
    END LOOP;
END
$$;
