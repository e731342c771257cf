#!/usr/bin/env bash
# Sets everything up on a fresh machine (or reuses .venv), then runs the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ensure_optional_packages
cd "$ROOT"
exec "$PY" -m pytest -n 2 -q "$@"
