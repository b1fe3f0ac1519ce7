#!/usr/bin/env bash
# All tests against real services: starts Postgres and a Kafka-compatible broker (tansu, installed
# with cargo once per machine) when needed, then format, lint and test.
# Build artifacts stay in target/ between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT_NAME=test.sh
# shellcheck source=deploy/local/lib.sh
. deploy/local/lib.sh

# Workspace-wide builds include the benchmark's peer esrs, which turns on sqlx's native-tls:
# OpenSSL headers are needed to compile.
if ! pkg-config --exists openssl 2>/dev/null; then
  apt_install pkg-config libssl-dev
fi

DATABASE_URL="$(deploy/local/postgres.sh)"
export DATABASE_URL
KAFKA_BOOTSTRAP="$(deploy/local/kafka.sh)"
export KAFKA_BOOTSTRAP
# Python with grpcio for the command API's foreign-client (reflection) test.
ANNALS_PYTHON="$(deploy/local/python.sh)"
export ANNALS_PYTHON
echo "== using $DATABASE_URL and Kafka at $KAFKA_BOOTSTRAP"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
