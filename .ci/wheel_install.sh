#!/usr/bin/env bash
# The wheel as a user installs it: built from a copy of the package (a stale build/ of the checkout
# cannot leak into it), installed into a fresh venv outside the checkout, then, from a directory
# outside the checkout (so the source tree cannot be imported), mode `native` must be available
# (its C++ source came in the wheel) and a short quick-start training must finish using it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
cp -r pyproject.toml setup.cfg README.md igc_jax "$tmp/src"
find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
pip wheel --no-deps -q -w "$tmp/dist" "$tmp/src"
python -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "$tmp"/dist/igc_jax-*.whl
cd "$tmp"
venv/bin/python - <<'PY'
import igc_jax, sys
from igc_jax.igc import native
assert igc_jax.__file__.startswith(sys.prefix), f"igc_jax imported from {igc_jax.__file__}"
assert native.available(), native.build_error()
print("wheel install:", igc_jax.__file__, "native available")
PY
venv/bin/python -m igc_jax.main --config="$root/experiments/quickstart.py" --workdir="$tmp/run" \
  --config.num_train_steps=20
venv/bin/python - <<'PY'
import json
status = json.load(open("run/status.json"))
assert status["status"] == "finished" and status["step"] == 20, status
assert "native" in status["conv_modes"]["layers"].values(), status["conv_modes"]
print("wheel install: 20 steps trained with", sorted(set(status["conv_modes"]["layers"].values())))
PY
