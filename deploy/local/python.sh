#!/usr/bin/env bash
# Prints a Python interpreter that has grpcio + grpcio-reflection (the command API's foreign-client
# test uses it). Creates target/pyenv once (from PyPI) and reuses it afterwards.
set -euo pipefail
SCRIPT_NAME=python.sh
# shellcheck source=deploy/local/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."
VENV=target/pyenv
# Debian ships python3 without the venv module (package python3-venv).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_install python3 python3-venv
fi
if ! "$VENV/bin/python" -c 'import grpc, grpc_reflection' >/dev/null 2>&1; then
  echo "== creating $VENV with grpcio, grpcio-reflection (once)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-reflection protobuf >&2
fi
echo "$PWD/$VENV/bin/python"
