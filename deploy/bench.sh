#!/usr/bin/env bash
# Benchmarks (issues 8, 12, 13): starts Postgres and a Kafka-compatible broker (tansu) when needed, builds
# the harness and the server binaries in release (artifacts stay in target/), and runs the quick
# suite. Writes target/bench/results.json and target/bench/results.md and prints the table.
#
#   deploy/bench.sh            # quick profile (the default; minutes on 2 cores after the build)
#   deploy/bench.sh --full     # 4x the operations
#   deploy/bench.sh --suites append,batch --smoke
#
# Arguments are passed to `annals-bench` (see `target/release/annals-bench --help`).
# ANNALS_BENCH_KAFKA=0 skips the broker (and the Kafka suite).
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL="$(deploy/local/postgres.sh)"
export DATABASE_URL
if [ "${ANNALS_BENCH_KAFKA:-1}" = "1" ]; then
  KAFKA_BOOTSTRAP="$(deploy/local/kafka.sh)"
  export KAFKA_BOOTSTRAP
else
  unset KAFKA_BOOTSTRAP
fi
echo "== building (release) the harness and the three server binaries" >&2
cargo build --release --locked -p annals-bench -p command-api -p projections -p query-api \
  -p annals-relay --bin annals-bench --bin annals-command-api --bin annals-projections \
  --bin annals-query-api --bin annals-relay >&2
echo "== running on $DATABASE_URL${KAFKA_BOOTSTRAP:+ and Kafka at $KAFKA_BOOTSTRAP}" >&2
exec target/release/annals-bench --out target/bench "$@"
