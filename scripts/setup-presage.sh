#!/usr/bin/env bash
# Installs Presage, the n-gram predictive-text engine that `nextword eval` compares against
# (server/nextword/eval/baselines.py): the library (libpresage1v5, pulled in by libpresage-dev),
# its C header and unversioned libpresage.so (libpresage-dev) and its default English model
# (libpresage-data: the configuration /etc/presage.xml and the n-gram database
# /usr/share/presage/database_en.db it points to). presage itself brings the command-line tools.
# Idempotent: when the packages are installed it only checks them and returns at once.
set -euo pipefail

APT_PACKAGES=(presage libpresage-dev libpresage-data)

log() { printf '[setup-presage] %s\n' "$*" >&2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Retry once: a mirror hiccup should not fail the whole test run.
    for attempt in 1 2; do
        if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
            break
        fi
        if [ "$attempt" = 2 ]; then log "apt-get install failed"; exit 1; fi
        log "apt-get failed; retrying in 10 s"
        sleep 10
    done
fi
for file in /etc/presage.xml /usr/share/presage/database_en.db; do
    [ -e "$file" ] || { log "$file is missing after installing ${APT_PACKAGES[*]}"; exit 1; }
done
ldconfig -p | grep -q 'libpresage\.so\.1 ' || { log "libpresage.so.1 is not in the linker cache"; exit 1; }
