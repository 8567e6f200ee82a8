#!/usr/bin/env bash
# Runs a config on NVIDIA GPUs: one host with any number of GPUs, or several hosts (one JAX process each, or one
# per GPU under SLURM) joined by jax.distributed.
#
# Usage:
#   INSTALL=1 WORKDIR=runs/cifar10 CONFIG=configs/paper/cifar10.py launch/gpu_run.sh   # install, then train
#   WORKDIR=runs/cifar10 CONFIG=configs/paper/cifar10.py launch/gpu_run.sh --config.train.num_steps=1000
#   CUDA_VISIBLE_DEVICES=0,1 WORKDIR=... launch/gpu_run.sh                            # a subset of the GPUs
#   # several hosts, without SLURM: the same command on every host, each with its PROCESS_ID
#   COORDINATOR=10.0.0.1:12345 NUM_PROCESSES=2 PROCESS_ID=0 WORKDIR=/shared/run launch/gpu_run.sh   # host 0
#   COORDINATOR=10.0.0.1:12345 NUM_PROCESSES=2 PROCESS_ID=1 WORKDIR=/shared/run launch/gpu_run.sh   # host 1
#   # SLURM: see launch/slurm_gpu.sbatch (srun starts this script once per task)
#
# Environment:
#   WORKDIR         required: checkpoints, metrics, samples; a rerun resumes from it. Several hosts need one
#                   shared directory (NFS, Lustre, or gs://): every process writes its part of each checkpoint
#   CONFIG          default configs/default.py (relative to the repository)
#   MODE            train (default) | sample | eval | analyze
#   INSTALL=1       first run launch/install.sh ${CUDA:-cuda12}: the package with its cuda12 extra, jax[cuda12]
#                   (CUDA=cuda13: the cuda13 extra, CUDA 13 wheels)
#   VENV            the environment to install into / run from (default ~/venvs/debias_jax)
#   PYTHON          run with this interpreter instead of ${VENV}/bin/python (an environment you made yourself)
#   COORDINATOR, NUM_PROCESSES, PROCESS_ID
#                   several hosts without SLURM: host:port of process 0, the number of processes, this one's
#                   index; each process uses all GPUs of its host
#   JAX_PLATFORMS   default cuda, so that a machine without a usable GPU fails at once instead of training on
#                   the CPU; JAX_PLATFORMS=cpu runs on the CPU
#   DRY_RUN=1       print the commands instead of running them
# Arguments after the variables go to debias_jax.main unchanged (e.g. --config.loss.weighting=constant).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MODE="${MODE:-train}"
CONFIG="${CONFIG:-configs/default.py}"
INSTALL="${INSTALL:-0}"
CUDA="${CUDA:-cuda12}"
VENV="${VENV:-${HOME}/venvs/debias_jax}"
PLATFORMS="${JAX_PLATFORMS:-cuda}"
require WORKDIR
check_bool INSTALL
check_pattern CUDA '^cuda1[23]$' "use cuda12 or cuda13"
check_pattern MODE '^(train|sample|eval|analyze)$' "use train, sample, eval or analyze"
check_pattern PLATFORMS '^[a-z,]+$' "JAX_PLATFORMS is a comma-separated list such as cuda or cpu"
cd "${REPO_ROOT}"
[[ -f "${CONFIG}" ]] || die "CONFIG=${CONFIG}: no such file in ${REPO_ROOT} (paths are relative to the repository)."

if [[ "${INSTALL}" == "1" ]]; then
  run env VENV="${VENV}" "${LAUNCH_DIR}/install.sh" "${CUDA}"
fi
PYTHON="${PYTHON:-${VENV}/bin/python}"
if ! is_dry_run; then
  [[ -x "${PYTHON}" ]] || die "no Python at ${PYTHON}: install first (INSTALL=1), or set VENV or PYTHON."
fi

distributed=()
if [[ -n "${COORDINATOR:-}" || -n "${NUM_PROCESSES:-}" || -n "${PROCESS_ID:-}" ]]; then
  require COORDINATOR NUM_PROCESSES PROCESS_ID
  check_pattern COORDINATOR '^[A-Za-z0-9.-]+:[0-9]{1,5}$' "use host:port of process 0, such as 10.0.0.1:12345"
  check_pattern NUM_PROCESSES '^[1-9][0-9]*$' "use a positive integer"
  check_pattern PROCESS_ID '^[0-9]+$' "use an integer from 0 to NUM_PROCESSES - 1"
  ((PROCESS_ID < NUM_PROCESSES)) || die "PROCESS_ID=${PROCESS_ID} must be below NUM_PROCESSES=${NUM_PROCESSES}."
  distributed=(--distributed --coordinator="${COORDINATOR}" --num_processes="${NUM_PROCESSES}"
               --process_id="${PROCESS_ID}")
elif [[ -n "${SLURM_JOB_ID:-}" && "${SLURM_NTASKS:-1}" -gt 1 ]]; then
  # jax.distributed.initialize() reads SLURM's variables; it gives each task the GPU of its SLURM_LOCALID.
  distributed=(--distributed)
  note "SLURM task ${SLURM_PROCID:-?} of ${SLURM_NTASKS}"
fi

run env JAX_PLATFORMS="${PLATFORMS}" "${PYTHON}" -m debias_jax.main --mode="${MODE}" --config="${CONFIG}" \
  --workdir="${WORKDIR}" "${distributed[@]}" "$@"
