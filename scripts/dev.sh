#!/usr/bin/env bash
# One entry point for a fresh machine: creates the virtual environment, installs
# llmpulse with its dev tools, then runs the demo or the test suite. `test` runs the
# linters, then the test tiers one by one (unit, chdb, stack: see README "Tests"),
# stopping at the first that fails; `test-unit` runs the linters and the unit tier only.
# The real services (Kafka jars from Maven Central, redis-server and prometheus
# from Debian packages) are installed on first use by `llmpulse stack up`, which
# both the demo and the test fixtures call.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/dev.sh demo|test|test-unit|setup [extra args passed to llmpulse demo or pytest]" >&2
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

lint() {
  echo "==> ruff check"; "$VENV/bin/ruff" check .
  echo "==> ruff format --check"; "$VENV/bin/ruff" format --check .
  echo "==> mypy (strict)"; "$VENV/bin/mypy"
}

# pytest_tier TIER [pytest args...]: one tier, its own exit status. Exit status 5 (no
# test selected) is not a failure: extra args such as -k or a file may leave a tier empty.
pytest_tier() {
  local tier=$1 status=0
  shift
  echo "==> pytest: $tier tier"
  "$VENV/bin/pytest" -q -m "$tier" "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    echo "    (no $tier tests selected)"
  elif [ "$status" -ne 0 ]; then
    echo "error: the $tier tier failed (pytest exit status $status); later tiers not run" >&2
    return "$status"
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
    lint
    for tier in unit chdb stack; do
      pytest_tier "$tier" "$@" || exit $?
    done
    ;;
  test-unit)
    setup
    lint
    pytest_tier unit "$@"
    ;;
  *) usage ;;
esac
