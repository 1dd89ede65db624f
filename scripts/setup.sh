#!/usr/bin/env bash
# Installs every Debian package that building and testing ringbus needs.
# Safe to run again. With --if-needed it does nothing when all are present.
# With --fuzz it also installs clang's libFuzzer for `make fuzz` (not needed
# by `make test`, which replays the corpora with gcc).
set -euo pipefail

MODE="${1:-}"

PACKAGES=(
  build-essential pkg-config git clang-format
  liburing-dev libsystemd-dev check libsubunit-dev
  libwolfssl-dev libngtcp2-dev libngtcp2-crypto-gnutls-dev libnghttp3-dev
  libpq-dev libssl-dev postgresql openssl gnutls-bin
  libjwt-dev libargon2-dev libjansson-dev libxxhash-dev python3-jwt python3-cryptography
  chromium libwebsockets-dev ngtcp2-client
  nats-server redis-server gnuplot-nox
  python3 python3-pytest python3-prometheus-client iproute2
  systemd
  lintian man-db strace
)

if [ "$MODE" = "--fuzz" ]; then
  PACKAGES+=(clang-14 libclang-rt-14-dev)
fi

# Node.js and npm: the machine's own when it has them (a NodeSource build
# ships npm inside nodejs and conflicts with Debian's npm package).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PACKAGES+=(nodejs npm)
fi

# The JavaScript client's development peer (`ws`, pinned in
# client/js/package-lock.json) into client/js/node_modules.
js_deps() {
  "$(dirname "$0")/../client/js/test/node_setup.sh"
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "$MODE" = "--if-needed" ] && [ ${#missing[@]} -eq 0 ]; then
  js_deps
  exit 0
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  js_deps
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
js_deps
