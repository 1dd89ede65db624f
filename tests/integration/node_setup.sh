#!/usr/bin/env bash
# Installs the Node.js WebSocket peer of the integration tests (the `ws`
# package, pinned in package-lock.json) into tests/integration/node_modules
# from the npm registry. Safe to run again: it does nothing when the pinned
# version is already there. test_ws.py runs it before its Node tests, so a
# fresh machine needs only node and npm (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")"
want=$(sed -n 's/.*"ws": "\(.*\)".*/\1/p' package.json)
have=$(sed -n 's/.*"version": "\(.*\)".*/\1/p' node_modules/ws/package.json 2>/dev/null || true)
if [ -n "$want" ] && [ "$want" = "$have" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "node_setup: npm not found; run scripts/setup.sh" >&2
  exit 1
fi
npm ci --no-audit --no-fund --loglevel=error
