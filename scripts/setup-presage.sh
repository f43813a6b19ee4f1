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

bash "$(dirname "$0")/apt-install.sh" "${APT_PACKAGES[@]}"
for file in /etc/presage.xml /usr/share/presage/database_en.db; do
    [ -e "$file" ] || { log "$file is missing after installing ${APT_PACKAGES[*]}"; exit 1; }
done
ldconfig -p | grep 'libpresage\.so\.1 ' >/dev/null || { log "libpresage.so.1 is not in the linker cache"; exit 1; }
