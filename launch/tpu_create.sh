#!/usr/bin/env bash
# Creates a Cloud TPU VM: a single host (v4-8, v5litepod-8, v6e-8, ...) or a multi-host pod slice (v4-32, ...).
#
# Usage:
#   TPU_NAME=debias-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-8 launch/tpu_create.sh
#   TPU_NAME=debias-pod ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 SPOT=1 launch/tpu_create.sh
#
# Environment:
#   TPU_NAME          required; the TPU's name (lower-case letters, digits, hyphens)
#   ZONE              required; a zone that offers the accelerator type (e.g. us-central2-b for v4,
#                     us-west4-a for v5e, us-east5-a for v5p, us-east5-b for v6e)
#   ACCELERATOR_TYPE  default v4-8; more than 8 chips/cores (v4-16, v4-32, ...) is a multi-host pod slice
#   RUNTIME_VERSION   default: the TPU software version for the type (tpu-ubuntu2204-base for v2-v4,
#                     v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e)
#   PROJECT           optional; the gcloud default project otherwise
#   SPOT=1            a Spot TPU (cheaper, preemptible: rerun launch/tpu_run.sh to resume from the workdir)
#   RESERVED=1        use a reservation
#   DRY_RUN=1         print the gcloud command instead of running it
# Then: launch/tpu_setup.sh, launch/tpu_run.sh; delete with launch/tpu_delete.sh when done (TPUs bill while up).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
SPOT="${SPOT:-0}"
RESERVED="${RESERVED:-0}"
require TPU_NAME ZONE
check_tpu_name
check_zone
check_accelerator_type
check_bool SPOT
check_bool RESERVED
if [[ "${SPOT}" == "1" && "${RESERVED}" == "1" ]]; then
  die "SPOT=1 and RESERVED=1 exclude each other; choose one."
fi
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime_version "${ACCELERATOR_TYPE}")}"
check_pattern RUNTIME_VERSION '^[a-z0-9][-a-z0-9.]*$' "use a TPU software version such as tpu-ubuntu2204-base"
gcloud_scope

command=(gcloud compute tpus tpu-vm create "${TPU_NAME}" "${SCOPE[@]}"
         --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}")
if [[ "${SPOT}" == "1" ]]; then
  command+=(--spot)
fi
if [[ "${RESERVED}" == "1" ]]; then
  command+=(--reserved)
fi

if is_multi_host "${ACCELERATOR_TYPE}"; then
  note "${ACCELERATOR_TYPE} is a multi-host pod slice: every worker runs the same command (launch/tpu_run.sh), and the workdir must be shared (gs://...)."
else
  note "${ACCELERATOR_TYPE} is a single-host TPU VM."
fi
run "${command[@]}"
