#!/usr/bin/env bash
# Makes a Kafka-compatible broker reachable for annals and prints its bootstrap address.
#
#   export KAFKA_BOOTSTRAP="$(deploy/local/kafka.sh)"
#
# Uses $KAFKA_BOOTSTRAP if something listens there; otherwise starts tansu
# (https://crates.io/crates/tansu) on 127.0.0.1:9092 with in-memory storage, installing it with
# `cargo install` first when it is not on PATH (about 12 minutes on 2 cores, once per machine).
# ANNALS_TANSU_STORAGE=postgres://... selects durable storage instead.
# `deploy/local/kafka.sh --install-only` only installs. Progress goes to stderr.
set -euo pipefail

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ADDR="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
HOST="${ADDR%:*}"
PORT="${ADDR##*:}"
STATE_DIR="${ANNALS_STATE_DIR:-${TMPDIR:-/tmp}/annals}"
mkdir -p "$STATE_DIR"

listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

install_tansu() {
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  command -v tansu >/dev/null 2>&1 && return 0
  log "installing tansu with cargo (once per machine; takes a while)"
  # --locked: the postgres feature does not compile against newer dependency versions.
  # dynostore: needed for memory:// storage.
  cargo install tansu --locked --features dynostore,postgres >&2 \
    || die "cargo install tansu failed"
}

install_tansu
[ "${1:-}" = "--install-only" ] && exit 0

if listening; then
  printf '%s\n' "$ADDR"
  exit 0
fi

storage="${ANNALS_TANSU_STORAGE:-memory://tansu/}"
log "starting tansu on $ADDR ($storage), log in $STATE_DIR/tansu.log"
nohup tansu broker \
  --listener-url "tcp://$ADDR" \
  --advertised-listener-url "tcp://$ADDR" \
  --storage-engine "$storage" >"$STATE_DIR/tansu.log" 2>&1 &
echo $! >"$STATE_DIR/tansu.pid"

for _ in $(seq 1 100); do
  listening && { printf '%s\n' "$ADDR"; exit 0; }
  kill -0 "$(cat "$STATE_DIR/tansu.pid")" 2>/dev/null || die "tansu exited; see $STATE_DIR/tansu.log"
  sleep 0.1
done
die "tansu did not listen on $ADDR within 10 s; see $STATE_DIR/tansu.log"
