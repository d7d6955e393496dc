#!/usr/bin/env bash
# Install what the tests need, then run them all:
#   * Debian packages, with apt-get when they are missing (as root, or through sudo):
#     chromium (headless browser tests), nginx and haproxy (reverse-proxy tests), nodejs and npm
#     (when there is no `node`; npm alone when only it is missing), python3-venv (when Python's venv cannot bootstrap pip);
#   * Python: a virtual environment, .venv in the repository (or the active one, $VIRTUAL_ENV),
#     with the package installed editable and its test extra (pytest, hypothesis, websockets,
#     playwright, python-socketio); nothing is installed into the system's Python;
#   * Node: the pinned ws and socket.io-client, into tests/node/node_modules
#     (tests/node/package-lock.json).
# Extra arguments go to pytest, e.g.  bash tests/run.sh -k topics
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
. tests/venv.sh

missing=""
for pkg in chromium nginx haproxy; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if ! command -v node >/dev/null; then missing="$missing nodejs npm"
elif ! command -v npm >/dev/null; then missing="$missing npm"; fi
if [ ! -x "$PY" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing="$missing python3-venv"
fi
if [ -n "$missing" ]; then
  echo "tests/run.sh: apt-get install$missing" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q -e '.[test]'
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
exec "$PY" -m pytest -q "$@"
