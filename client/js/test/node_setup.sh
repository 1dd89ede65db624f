#!/usr/bin/env bash
# Installs the JavaScript client's development peer (the `ws` package that
# Node < 22 needs for WebSocket, pinned in package-lock.json) into
# client/js/node_modules from the npm registry. Run by scripts/setup.sh and
# before `make test-js`; does nothing when the pinned version is there.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sed -n 's/.*"ws": "\([0-9.]*\)".*/\1/p' package.json | tail -n 1)
have=$(sed -n 's/.*"version": "\(.*\)".*/\1/p' node_modules/ws/package.json 2>/dev/null || true)
if [ -n "$want" ] && [ "$want" = "$have" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "client/js: npm not found; run scripts/setup.sh" >&2
  exit 1
fi
npm ci --no-audit --no-fund --loglevel=error
