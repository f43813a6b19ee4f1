#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet (as root, or through
# sudo), retrying once on a mirror hiccup. Idempotent: with everything installed it only checks.
# Used by setup-e2e.sh and setup-presage.sh.
set -euo pipefail

log() { printf '[apt-install] %s\n' "$*" >&2; }

missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
((${#missing[@]})) || exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
for attempt in 1 2; do
    if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        exit 0
    fi
    if [ "$attempt" = 2 ]; then log "apt-get install failed"; exit 1; fi
    log "apt-get failed; retrying in 10 s"
    sleep 10
done
