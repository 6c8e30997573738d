#!/usr/bin/env bash
# Train igc-jax on a Cloud TPU VM or pod slice: create it, install, run on every worker, tail, delete.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --name NAME --zone ZONE --accelerator TYPE --config FILE[:ARG]
                        --workdir gs://BUCKET/DIR [options] [-- EXTRA_FLAGS...]

Creates a Cloud TPU VM or pod slice, copies this checkout to every worker, installs it in a
Python >= 3.11 venv with jax[tpu], runs ONE igc_jax.main (or, with --sweep, igc_jax.sweep)
command on all workers at once (one JAX process per worker), follows worker 0's log until the
run ends, and deletes the TPU (also when a step fails or you press Ctrl-C; --keep to keep it).
The workdir (checkpoints, metrics) and TFDS_DATA_DIR must be on gs:// so every worker sees them
and a re-run resumes from the last checkpoint.

Required:
  --name NAME            TPU VM name (also the queued-resource name with --spot)
  --zone ZONE            e.g. us-west4-a, europe-west4-b, us-central2-b
  --accelerator TYPE     e.g. v5litepod-8 (1 host), v5litepod-32 (pod slice, 8 hosts), v4-32, v6e-8
  --config FILE[:ARG]    config file (or sweep file with --sweep), e.g. experiments/cifar100_lm_sweep.py
  --workdir gs://...     run workdir (sweep root with --sweep)

Options:
  --project ID           Google Cloud project (default: gcloud's core/project)
  --version VERSION      TPU software version (default from the accelerator: v6e -> v2-alpha-tpuv6e,
                         v5litepod -> v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5, else tpu-ubuntu2204-base)
  --spot                 Spot capacity through a queued resource (waits until ACTIVE);
                         default: on-demand `gcloud compute tpus tpu-vm create`
  --sweep                run `python -m igc_jax.sweep` instead of `python -m igc_jax.main`
  --tfds-data-dir gs://  TFDS data dir on every worker (default: $TFDS_DATA_DIR)
  --python VERSION       Python of the venv on the workers (default 3.11; >= 3.11)
  --steps LIST           comma-separated subset of create,copy,install,run,tail,delete
                         (default: all), e.g. --steps tail to re-attach to a running job
  --keep                 do not delete the TPU at the end
  --dry-run              print every command, run none
  -h, --help             this help
  -- EXTRA_FLAGS         passed to igc_jax.main/sweep, e.g. -- --config.num_epochs=10 --only=L40M2

Example (a v5e pod slice, Spot):
  launch/tpu_vm.sh --name igc-lm --zone us-west4-a --accelerator v5litepod-32 --spot --sweep \
    --config experiments/cifar100_lm_sweep.py --workdir gs://my-bucket/igc/lm \
    --tfds-data-dir gs://my-bucket/tensorflow_datasets
EOF
}

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

# Print a command the way a shell would read it back (words quoted only where needed).
show() {
  local out="+" word
  for word in "$@"; do out+=" $(quote "$word")"; done
  echo "$out"
}

quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" != *"'"* ]]; then
    printf "'%s'" "$1"
  else
    printf '%s' "${1@Q}"
  fi
}

# Print the command; run it unless --dry-run.
run() {
  show "$@"
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

# A command as one line for the remote bash (each word quoted for it).
remote_words() {
  local out="" word
  for word in "$@"; do out+="$(quote "$word") "; done
  echo "${out% }"
}

default_version() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

NAME="" ZONE="" ACCEL="" CONFIG="" WORKDIR="" PROJECT="" VERSION="" SPOT=0 SWEEP=0
TFDS_DIR="${TFDS_DATA_DIR:-}" PY_VERSION="3.11" STEPS="create,copy,install,run,tail,delete"
KEEP=0 DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --accelerator) ACCEL="${2:?--accelerator needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --tfds-data-dir) TFDS_DIR="${2:?--tfds-data-dir needs a value}"; shift 2 ;;
    --python) PY_VERSION="${2:?--python needs a value}"; shift 2 ;;
    --steps) STEPS="${2:?--steps needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --sweep) SWEEP=1; shift ;;
    --keep) KEEP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

for step in ${STEPS//,/ }; do
  case "$step" in create|copy|install|run|tail|delete) ;; *) die "unknown step '$step' in --steps" ;; esac
done
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
if has_step create; then [[ -n "$ACCEL" ]] || die "--accelerator is required to create the TPU"; fi
if has_step run; then
  [[ -n "$CONFIG" ]] || die "--config is required"
  [[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// path (every worker writes there), got '${WORKDIR}'"
  [[ -z "$TFDS_DIR" || "$TFDS_DIR" == gs://* ]] || die "--tfds-data-dir must be a gs:// path, got '${TFDS_DIR}'"
fi
if ! [[ "$PY_VERSION" =~ ^3\.([0-9]+)$ ]] || (( BASH_REMATCH[1] < 11 )); then
  die "--python must be 3.11 or newer, got '$PY_VERSION'"
fi
VERSION="${VERSION:-$(default_version "$ACCEL")}"

GCLOUD_FLAGS=("--zone=$ZONE")
if [[ -n "$PROJECT" ]]; then GCLOUD_FLAGS+=("--project=$PROJECT"); fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARBALL="${TMPDIR:-/tmp}/igc-jax-$NAME.tgz"
# Paths on the workers (relative to the login user's home).
R_SRC="igc-jax" R_VENV="igc-venv" R_JOB="igc-jax-job.sh" R_LOG="igc-jax.log" R_RC="igc-jax.rc"

ssh_all() { run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"; }

create_tpu() {
  echo "# create: $ACCEL ($VERSION) in $ZONE, $([[ "$SPOT" == 1 ]] && echo Spot || echo on-demand)"
  if [[ "$SPOT" == 1 ]]; then
    run gcloud compute tpus queued-resources create "$NAME" "${GCLOUD_FLAGS[@]}" \
      --node-id="$NAME" --accelerator-type="$ACCEL" --runtime-version="$VERSION" --spot
    wait_active
  else
    run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}" \
      --accelerator-type="$ACCEL" --version="$VERSION"
  fi
}

wait_active() {
  local describe=(gcloud compute tpus queued-resources describe "$NAME" "${GCLOUD_FLAGS[@]}" --format='value(state.state)')
  echo "# wait: repeat until the queued resource is ACTIVE"
  show "${describe[@]}"
  [[ "$DRY_RUN" == 1 ]] && return 0
  local state
  while true; do
    state="$("${describe[@]}")"
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED|SUSPENDING) die "queued resource $NAME is $state" ;;
      *) echo "  $state"; sleep 30 ;;
    esac
  done
}

delete_tpu() {
  echo "# delete"
  if [[ "$SPOT" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME" "${GCLOUD_FLAGS[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}" --quiet
  fi
}

copy_code() {
  echo "# copy: this checkout (tracked and untracked, not ignored files) to every worker"
  show git -C "$REPO" ls-files -z --cached --others --exclude-standard "|" tar --null -czf "$TARBALL" -C "$REPO" -T -
  if [[ "$DRY_RUN" == 0 ]]; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard | tar --null -czf "$TARBALL" -C "$REPO" -T -
  fi
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:igc-jax.tgz" "${GCLOUD_FLAGS[@]}" --worker=all
}

install_workers() {
  echo "# install: Python $PY_VERSION venv with igc-jax and jax[tpu] on every worker"
  ssh_all "set -euo pipefail; rm -rf $R_SRC && mkdir -p $R_SRC && tar -xzf igc-jax.tgz -C $R_SRC; \
python3 -m pip install --user --quiet --upgrade uv; \
~/.local/bin/uv venv --python $PY_VERSION --allow-existing $R_VENV; \
~/.local/bin/uv pip install --python $R_VENV/bin/python --upgrade -e ./$R_SRC \"jax[tpu]\""
}

run_workers() {
  local module="igc_jax.main"
  if [[ "$SWEEP" == 1 ]]; then module="igc_jax.sweep"; fi
  local env_line=""
  if [[ -n "$TFDS_DIR" ]]; then env_line="export TFDS_DATA_DIR=$(quote "$TFDS_DIR")"; fi
  echo "# run on all workers (detached; log ~/$R_LOG, exit status ~/$R_RC): python -m $module"
  ssh_all "cat > ~/$R_JOB <<\"JOB\"
cd ~/$R_SRC
$env_line
$(remote_words "../$R_VENV/bin/python" -m "$module" "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")
echo \$? > ~/$R_RC
JOB
rm -f ~/$R_RC; setsid nohup bash ~/$R_JOB > ~/$R_LOG 2>&1 < /dev/null &"
}

tail_log() {
  echo "# tail: worker 0's log until the run ends; exits with its status"
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker=0 --command="tail -n +1 -F ~/$R_LOG & t=\$!; \
while [ ! -f ~/$R_RC ]; do sleep 15; done; sleep 2; kill \$t; exit \"\$(cat ~/$R_RC)\""
}

if has_step delete && [[ "$KEEP" == 0 ]]; then trap delete_tpu EXIT; fi
if has_step create; then create_tpu; fi
if has_step copy; then copy_code; fi
if has_step install; then install_workers; fi
if has_step run; then run_workers; fi
if has_step tail; then tail_log; fi
