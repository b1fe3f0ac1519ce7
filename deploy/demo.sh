#!/usr/bin/env bash
# The main job: starts what it needs (Postgres) and runs the end-to-end demo in a fresh
# database `annals_demo` (recreated each run, kept afterwards for a look with psql):
#   1. the event store on its own (append, retry, conflict, atomic transfer, subscription),
#   2. real gRPC commands for all four aggregates through the command API,
#   3. the projections run in-process and the query API answers over gRPC (min_position, as-of).
# ANNALS_KAFKA=1 also publishes everything to Kafka (tansu, started here) and counts the messages.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_URL="$(deploy/local/postgres.sh)"

# Same server, database annals_demo; fall back to the given database if we may not create one.
prefix="${BASE_URL%%\?*}"
query="${BASE_URL#"$prefix"}"
DEMO_URL="${prefix%/*}/annals_demo${query}"
if psql "$BASE_URL" -qX -v ON_ERROR_STOP=1 \
     -c "DROP DATABASE IF EXISTS annals_demo WITH (FORCE)" \
     -c "CREATE DATABASE annals_demo" >/dev/null 2>&1; then
  DATABASE_URL="$DEMO_URL"
else
  echo "demo.sh: cannot create database annals_demo; using $BASE_URL as it is" >&2
  DATABASE_URL="$BASE_URL"
fi
export DATABASE_URL
echo "== demo database: $DATABASE_URL"

cargo build --quiet -p event-store --example store_demo -p annals-relay --example relay_demo \
  -p command-api --example command_demo -p query-api --example query_demo
cargo run --quiet -p event-store --example store_demo -- "$@"
echo
cargo run --quiet -p command-api --example command_demo
if [ "${ANNALS_KAFKA:-0}" = "1" ]; then
  KAFKA_BOOTSTRAP="$(deploy/local/kafka.sh)"
  export KAFKA_BOOTSTRAP
  echo
  cargo run --quiet -p annals-relay --example relay_demo
fi
echo
cargo run --quiet -p query-api --example query_demo
