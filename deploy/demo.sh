#!/usr/bin/env bash
# The main job: starts what it needs (Postgres) and runs the end-to-end demos:
# the event store on its own, then real gRPC commands through the command API, then (last)
# the projections run in-process and the query API answers over gRPC (min_position, as-of).
# ANNALS_KAFKA=1 also publishes everything to Kafka (tansu, started here) and counts the messages.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL="$(deploy/local/postgres.sh)"
export DATABASE_URL
cargo build --quiet -p event-store --example demo -p command-api --example demo \
  -p query-api --example demo
cargo run --quiet -p event-store --example demo -- "$@"
echo
cargo run --quiet -p command-api --example demo
if [ "${ANNALS_KAFKA:-0}" = "1" ]; then
  KAFKA_BOOTSTRAP="$(deploy/local/kafka.sh)"
  export KAFKA_BOOTSTRAP
  echo
  cargo run --quiet -p event-store --example relay_demo
fi
echo
cargo run --quiet -p query-api --example demo
