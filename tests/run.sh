#!/usr/bin/env bash
# Install what the tests need, then run them all:
#   * Debian packages: chromium (headless browser tests), nginx and haproxy (reverse-proxy tests),
#     with apt-get when they are missing (as root, or through sudo);
#   * Python: the package with its test extra (pytest, hypothesis, websockets, playwright,
#     python-socketio);
#   * Node: the pinned ws and socket.io-client (tests/node/package-lock.json).
# Extra arguments go to pytest, e.g.  bash tests/run.sh -k topics
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive

missing=""
for pkg in chromium nginx haproxy; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
command -v node >/dev/null || { echo "tests/run.sh: Node.js (20 or newer) is needed for the ws and socket.io-client tests" >&2; exit 1; }

python3 -m pip install -q -e '.[test]'
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
exec python3 -m pytest -q "$@"
