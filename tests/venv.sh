# Sourced by tests/run.sh and .ci/run (from the repository's root): the Python environment the
# tests run in.  An active virtual environment ($VIRTUAL_ENV) is used as it is; otherwise .venv in
# the repository, which tests/run.sh creates.  Sets VENV and PY (its python).
VENV="${VIRTUAL_ENV:-$PWD/.venv}"
PY="$VENV/bin/python"
