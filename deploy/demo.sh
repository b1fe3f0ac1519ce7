#!/usr/bin/env bash
# The main job: starts what it needs (Postgres) and runs the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL="$(deploy/local/postgres.sh)"
export DATABASE_URL
exec cargo run --quiet -p event-store --example demo -- "$@"
