#!/usr/bin/env bash
# Runs a config on every worker of a TPU VM (all workers run the same command: one JAX process per host).
#
# Usage:
#   TPU_NAME=debias-v4 ZONE=us-central2-b WORKDIR=gs://my-bucket/debias/cifar10 \
#     CONFIG=configs/paper/cifar10.py launch/tpu_run.sh [--config.train.num_steps=100000 ...]
#   ACTION=stop TPU_NAME=... ZONE=... launch/tpu_run.sh     # SIGTERM: save a checkpoint and stop (DETACH runs)
#   ACTION=logs TPU_NAME=... ZONE=... launch/tpu_run.sh     # the last lines of every worker's log
#
# Environment:
#   TPU_NAME, ZONE    required (as for launch/tpu_create.sh); PROJECT optional
#   WORKDIR           required for ACTION=run: checkpoints, metrics, samples; a rerun resumes from it.
#                     gs://BUCKET/PATH (needed on a pod slice: every host writes its part of each checkpoint
#                     into the same directory) or a path on the worker's disk (single host only)
#   CONFIG            default configs/default.py (relative to the repository)
#   MODE              train (default) | sample | eval | analyze
#   ACCELERATOR_TYPE  the TPU's type, to check the workdir (asked from gcloud when unset)
#   DETACH=1          run in the background (nohup) with a log per worker in ~/debias_jax_logs/; survives a
#                     closed ssh session; see it with ACTION=logs, stop it with ACTION=stop
#   DISTRIBUTED       1 (default): --distributed, jax.distributed.initialize() finds the other workers from
#                     the TPU metadata (harmless on a single host); 0 leaves it out
#   REMOTE_DIR, VENV  as for launch/tpu_setup.sh
#   DRY_RUN=1         print the commands instead of running them
# Arguments after the variables go to debias_jax.main unchanged (e.g. --config.loss.weighting=constant).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACTION="${ACTION:-run}"
MODE="${MODE:-train}"
CONFIG="${CONFIG:-configs/default.py}"
DETACH="${DETACH:-0}"
DISTRIBUTED="${DISTRIBUTED:-1}"
REMOTE_DIR="${REMOTE_DIR:-debias_jax}"
VENV="${VENV:-~/venvs/debias_jax}"
LOG_DIR="debias_jax_logs"
require TPU_NAME ZONE
check_tpu_name
check_zone
check_remote_dir
check_bool DETACH
check_bool DISTRIBUTED
check_pattern VENV '^[A-Za-z0-9_~/.-]+$' "use a plain path such as ~/venvs/debias_jax"
gcloud_scope

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${SCOPE[@]}" --worker=all --command="$1"
}

case "${ACTION}" in
  run) ;;
  stop)
    ssh_all "if [ -f ${LOG_DIR}/run.pid ]; then kill -TERM \$(cat ${LOG_DIR}/run.pid) && echo \"\$(hostname): stopping (a checkpoint is saved first)\"; else echo \"\$(hostname): no run started with DETACH=1\"; fi"
    exit 0 ;;
  logs)
    ssh_all "tail -n ${LINES:-20} ${LOG_DIR}/run.log"
    exit 0 ;;
  *) die "ACTION='${ACTION}' is not valid; use run, stop or logs." ;;
esac

require WORKDIR
check_pattern MODE '^(train|sample|eval|analyze)$' "use train, sample, eval or analyze"
check_pattern WORKDIR '^[A-Za-z0-9_~/.:=@+-]+$' "use gs://BUCKET/PATH or a plain path (no spaces or quotes)"
check_pattern CONFIG '^[A-Za-z0-9_/.-]+\.py$' "use a config file of the repository such as configs/default.py"
[[ -f "${REPO_ROOT}/${CONFIG}" ]] || die "CONFIG=${CONFIG}: no such file in ${REPO_ROOT} (paths are relative to the repository)."

if [[ "${WORKDIR}" != gs://* ]]; then
  accelerator="${ACCELERATOR_TYPE:-}"
  if [[ -z "${accelerator}" ]] && ! is_dry_run; then
    accelerator="$(gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${SCOPE[@]}" --format='value(acceleratorType)')"
  fi
  if [[ -n "${accelerator}" ]] && is_multi_host "${accelerator}"; then
    die "${TPU_NAME} is a ${accelerator} pod slice: its workers need one shared workdir; use WORKDIR=gs://BUCKET/PATH (not '${WORKDIR}' on each worker's own disk)."
  fi
fi

printf -v program '%q ' -m debias_jax.main "--mode=${MODE}" "--config=${CONFIG}" "--workdir=${WORKDIR}"
if [[ "${DISTRIBUTED}" == "1" ]]; then
  program+="--distributed "
fi
if (($#)); then
  printf -v extra '%q ' "$@"
  program+="${extra}"
fi
python_command="${VENV}/bin/python ${program% }"
if [[ "${DETACH}" == "1" ]]; then
  ssh_all "cd ${REMOTE_DIR} && mkdir -p ~/${LOG_DIR} && { nohup ${python_command} > ~/${LOG_DIR}/run.log 2>&1 < /dev/null & echo \$! > ~/${LOG_DIR}/run.pid; } && echo \"\$(hostname): started, log in ~/${LOG_DIR}/run.log\""
else
  status=0
  ssh_all "cd ${REMOTE_DIR} && ${python_command}" || status=$?
  if [[ "${status}" -eq 75 ]]; then   # debias_jax.main: stopped early (SIGTERM), progress saved
    echo "The run stopped early with its checkpoint saved (exit status 75): run the same command again to resume." >&2
  fi
  exit "${status}"
fi
