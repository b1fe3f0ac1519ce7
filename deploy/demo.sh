#!/usr/bin/env bash
# The main job: starts what it needs (Postgres) and runs the end-to-end demos:
# the event store on its own, then real gRPC commands through the command API.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL="$(deploy/local/postgres.sh)"
export DATABASE_URL
cargo build --quiet -p event-store --example demo -p command-api --example demo
cargo run --quiet -p event-store --example demo -- "$@"
echo
cargo run --quiet -p command-api --example demo
