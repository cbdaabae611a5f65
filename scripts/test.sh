#!/usr/bin/env bash
# Install bnfold with its dev and torch extras into .venv, then lint and run the tests.
# Usage: bash scripts/test.sh [pytest args…]   (e.g. --slow for the long profile)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch is pinned for development only (constraints-dev.txt); users get what they choose.
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c constraints-dev.txt -e ".[dev,torch]"

.venv/bin/ruff check .
.venv/bin/ruff format --check .

set +e
.venv/bin/python -m pytest -n 2 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
