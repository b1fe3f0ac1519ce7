# Shared helpers of the deploy/local scripts (sourced, not run). Callers set SCRIPT_NAME first.

log() { printf '%s: %s\n' "${SCRIPT_NAME:-deploy}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command as root: directly when we are root, else through passwordless sudo.
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@" || die "sudo refused: $*"
  else die "need root (or sudo) to run: $*"
  fi
}

# Installs Debian packages quietly, running `apt-get update` once per script run.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get is not available to install $*"
  if [ -z "${APT_UPDATED:-}" ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
