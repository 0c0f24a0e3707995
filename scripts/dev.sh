#!/usr/bin/env bash
# One entry point for a fresh machine: creates the virtual environment, installs
# llmpulse with its dev tools, then runs the demo or the full test suite.
# The real services (Kafka jars from Maven Central, redis-server and prometheus
# from Debian packages) are installed on first use by `llmpulse stack up`, which
# both the demo and the test fixtures call.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/dev.sh demo|test|setup [extra args passed to llmpulse demo or pytest]" >&2
  exit 2
}

PYTHON=${PYTHON:-python3}
VENV=${LLMPULSE_VENV:-.venv}

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "error: llmpulse needs Python 3.11 or newer as '$PYTHON' (set PYTHON=...)" >&2
    exit 1
  fi
  local stamp="$VENV/.llmpulse-installed"
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing llmpulse and dev tools into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
    echo "$want" > "$stamp"
  fi
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in
  setup)
    setup
    ;;
  demo)
    setup
    exec "$VENV/bin/llmpulse" demo "$@"
    ;;
  test)
    setup
    echo "==> ruff check"; "$VENV/bin/ruff" check .
    echo "==> ruff format --check"; "$VENV/bin/ruff" format --check .
    echo "==> mypy (strict)"; "$VENV/bin/mypy"
    echo "==> pytest"; exec "$VENV/bin/pytest" -q "$@"
    ;;
  *) usage ;;
esac
