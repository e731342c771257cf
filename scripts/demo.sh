#!/usr/bin/env bash
# Sets everything up on a fresh machine (or reuses .venv), then runs the demo: the paper's 2D experiment,
# baseline EDM vs DisCo-Diff, with figures and a metrics table in demo-output/.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$VENV/bin/discodiff" demo --out "${DEMO_OUT:-demo-output}" "$@"
