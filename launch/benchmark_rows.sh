#!/usr/bin/env bash
# The README's throughput rows on this machine's accelerator (one GPU or TPU host), in one command: the default
# config, CIFAR-10 and the 256 px model in bfloat16, each timed by debias_jax.benchmark after compilation, with a
# JSON file, a log and its README row in OUT. Prepared so that a session lent a GPU spends its minutes measuring.
#
# Usage:
#   PYTHON=python3 launch/benchmark_rows.sh                       # all three rows into runs/benchmark
#   OUT=/tmp/rows BATCH_256=64 ROWS="ffhq256" launch/benchmark_rows.sh
#   DRY_RUN=1 launch/benchmark_rows.sh                            # print the commands
#
# Environment:
#   OUT         where the .json/.log files go (default runs/benchmark); README rows are printed at the end
#   ROWS        which rows, space-separated, of: default cifar10 ffhq256 (default: all three)
#   BATCH_256   global batch of the 256 px row (default 32; the paper's runs use 8 per GPU)
#   PYTHON      the interpreter with debias_jax installed (default ${VENV}/bin/python, else python3)
#   VENV        default ~/venvs/debias_jax (what launch/install.sh makes)
#   DRY_RUN=1   print the commands instead of running them
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OUT="${OUT:-runs/benchmark}"
ROWS="${ROWS:-default cifar10 ffhq256}"
BATCH_256="${BATCH_256:-32}"
VENV="${VENV:-${HOME}/venvs/debias_jax}"
check_pattern ROWS '^( *(default|cifar10|ffhq256) *)+$' "use a space-separated list of default, cifar10, ffhq256"
check_pattern BATCH_256 '^[1-9][0-9]*$' "use a positive integer"
cd "${REPO_ROOT}"
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON="${VENV}/bin/python"
  [[ -x "${PYTHON}" ]] || PYTHON=python3
fi
run mkdir -p "${OUT}"

for row in ${ROWS}; do
  case "${row}" in
    default) args=(--config configs/default.py --train_steps 50 --ddpm_steps 1000) ;;
    cifar10) args=(--config configs/paper/cifar10.py --config.model.dtype=bfloat16 --train_steps 20
                   --sample_batch_size 64 --ddpm_steps 200) ;;
    ffhq256) args=(--config configs/paper/ffhq256.py --config.model.dtype=bfloat16
                   "--config.train.batch_size=${BATCH_256}" --train_steps 10 --sample_batch_size 8 --ddpm_steps 50) ;;
  esac
  note "${row}: ${args[*]}"
  if is_dry_run; then
    run "${PYTHON}" -m debias_jax.benchmark "${args[@]}" --output "${OUT}/${row}.json"
  else
    "${PYTHON}" -m debias_jax.benchmark "${args[@]}" --output "${OUT}/${row}.json" 2>&1 | tee "${OUT}/${row}.log"
  fi
done
is_dry_run || grep -h -A1 "^README row:" "${OUT}"/*.log | grep "^|"
