#!/usr/bin/env bash
# Train igc-jax on one multi-GPU host: a Python >= 3.11 venv with jax[cuda12], then one run or sweep.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh --config FILE[:ARG] --workdir DIR [options] [-- EXTRA_FLAGS...]

Creates (once) a venv with this checkout and jax[cuda12] (CUDA 12 from pip wheels: only an
NVIDIA driver is needed on the host), then runs ONE process that uses every GPU of the host:
`python -m igc_jax.main` (or, with --sweep, `python -m igc_jax.sweep`). The batch is split over
the GPUs (the global batch must divide by their number). Re-running resumes from the workdir's
last checkpoint; a sweep skips finished points.

Required:
  --config FILE[:ARG]   config file (or sweep file with --sweep)
  --workdir DIR         run workdir (sweep root with --sweep)

Options:
  --venv DIR            venv to create or reuse (default: .venv-gpu in the checkout)
  --python PYTHON       interpreter that creates the venv (default: python3.11; must be >= 3.11)
  --no-install          use the venv as it is
  --gpus LIST           CUDA_VISIBLE_DEVICES for the run (default: all GPUs)
  --sweep               run igc_jax.sweep instead of igc_jax.main
  --dry-run             print every command, run none
  -h, --help            this help
  -- EXTRA_FLAGS        passed to igc_jax.main/sweep, e.g. -- --config.batch_size=512

Example:
  launch/gpu.sh --sweep --config experiments/cifar_depth_sweep.py --workdir runs/depth \
    -- --only=D20-IGC-L24M2,D20-RegConv-W16
EOF
}

die() { echo "gpu.sh: $*" >&2; exit 2; }

quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"; else printf '%s' "${1@Q}"; fi
}

# Print the command; run it unless --dry-run.
run() {
  local out="+" word
  for word in "$@"; do out+=" $(quote "$word")"; done
  echo "$out"
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="" WORKDIR="" VENV="$REPO/.venv-gpu" PYTHON="python3.11" INSTALL=1 GPUS="" SWEEP=0 DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --venv) VENV="${2:?--venv needs a value}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs a value}"; shift 2 ;;
    --gpus) GPUS="${2:?--gpus needs a value}"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --sweep) SWEEP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"

if [[ "$INSTALL" == 1 ]]; then
  echo "# install: venv $VENV with igc-jax and jax[cuda12]"
  if [[ ! -x "$VENV/bin/python" ]]; then
    if [[ "$DRY_RUN" == 0 ]] && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      die "$PYTHON is missing or older than 3.11 (choose one with --python)"
    fi
    run "$PYTHON" -m venv "$VENV"
  fi
  run "$VENV/bin/python" -m pip install --upgrade pip
  # One resolve for both, so jax[cuda12] stays inside igc-jax's supported jax range.
  run "$VENV/bin/python" -m pip install --upgrade -e "$REPO" "jax[cuda12]"
fi

MODULE="igc_jax.main"
if [[ "$SWEEP" == 1 ]]; then MODULE="igc_jax.sweep"; fi
echo "# run: python -m $MODULE on ${GPUS:-all} GPUs"
ENV_CMD=()
if [[ -n "$GPUS" ]]; then ENV_CMD=(env "CUDA_VISIBLE_DEVICES=$GPUS"); fi
run "${ENV_CMD[@]}" "$VENV/bin/python" -m "$MODULE" "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}"
