#!/usr/bin/env bash
# Makes a Postgres reachable for annals and prints its connection URL on stdout.
#
#   export DATABASE_URL="$(deploy/local/postgres.sh)"            # the owner: migrations, tests
#   export SERVICE_URL="$(deploy/local/postgres.sh --service)"    # the services' login
#
# In order: use $DATABASE_URL if it answers; otherwise the local default
# (postgres://annals:annals@127.0.0.1:5432/annals): start an installed local cluster, or install
# Debian's `postgresql` and start it; then create the `annals` role and database if missing.
# Idempotent; progress goes to stderr, only the URL to stdout.
set -euo pipefail

DEFAULT_URL="postgres://annals:annals@127.0.0.1:5432/annals"
export PGCONNECT_TIMEOUT=3

SCRIPT_NAME=postgres.sh
# shellcheck source=deploy/local/lib.sh
. "$(dirname "$0")/lib.sh"

answers() { psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; }

WANT=owner
[ "${1:-}" = "--service" ] && WANT=service

# The two roles (README, Roles): the owner runs migrations; services log in as `annals_app`, a
# member of `annals_service` (whose privileges the migrations grant). Created through the owner's
# URL when it may create roles; roles are cluster-wide, so existing ones are kept.
ensure_service_login() {
  psql "$1" -v ON_ERROR_STOP=1 -Atqc "DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'annals_service') THEN
      CREATE ROLE annals_service NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'annals_app') THEN
      CREATE ROLE annals_app LOGIN PASSWORD 'annals_app' IN ROLE annals_service;
    END IF;
  END \$\$;" >/dev/null 2>&1 \
    || log "cannot create the roles annals_service/annals_app with this login (needs CREATEROLE)"
}

# Prints the owner's URL, or with --service the same server and database for annals_app.
emit() {
  ensure_service_login "$1"
  if [ "$WANT" = service ]; then
    local scheme="${1%%://*}" rest="${1#*://}"
    printf '%s://annals_app:annals_app@%s\n' "$scheme" "${rest#*@}"
  else
    printf '%s\n' "$1"
  fi
}

command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 \
  || apt_install postgresql-client

if [ -n "${DATABASE_URL:-}" ]; then
  if answers "$DATABASE_URL"; then
    emit "$DATABASE_URL"
    exit 0
  fi
  [ "$DATABASE_URL" = "$DEFAULT_URL" ] || log "DATABASE_URL does not answer; falling back to the local default"
fi
if answers "$DEFAULT_URL"; then
  emit "$DEFAULT_URL"
  exit 0
fi

server_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

start_local_cluster() {
  if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
  fi
  local cluster
  cluster=$(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }')
  if [ -z "$cluster" ]; then
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    log "creating cluster $version/main on port 5432"
    as_root pg_createcluster "$version" main --port 5432 >&2
    cluster="$version main"
  fi
  log "starting cluster $cluster"
  # shellcheck disable=SC2086 # "version name" splits into two arguments on purpose
  as_root pg_ctlcluster --skip-systemctl-redirect $cluster start >&2 || true
  for _ in $(seq 1 60); do
    server_up && return 0
    sleep 0.5
  done
  die "cluster $cluster did not accept connections within 30 s (see /var/log/postgresql/)"
}

server_up || start_local_cluster

# A superuser session: TCP as `postgres` works under trust auth, the local socket as the OS
# user `postgres` under Debian's default peer auth.
admin() {
  if psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
  elif id postgres >/dev/null 2>&1; then
    as_root runuser -u postgres -- psql -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
  else
    die "cannot reach the local server as a superuser to create the annals role"
  fi
}

log "creating role and database annals (if missing)"
admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'annals') THEN
    CREATE ROLE annals LOGIN SUPERUSER PASSWORD 'annals';
  END IF;
END \$\$;" >&2
if [ "$(admin -c "SELECT 1 FROM pg_database WHERE datname = 'annals'")" != "1" ]; then
  admin -c "CREATE DATABASE annals OWNER annals ENCODING 'UTF8' TEMPLATE template0" >&2
fi

answers "$DEFAULT_URL" || die "created role and database, but $DEFAULT_URL still does not answer (check pg_hba.conf)"
emit "$DEFAULT_URL"
