#!/usr/bin/env bash
# Deletes a Cloud TPU VM (the workdir on gs:// stays; anything on the workers' disks is lost).
#
# Usage:
#   TPU_NAME=debias-v4 ZONE=us-central2-b launch/tpu_delete.sh
#
# Environment:
#   TPU_NAME, ZONE    required; PROJECT optional
#   DRY_RUN=1         print the gcloud command instead of running it
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require TPU_NAME ZONE
check_tpu_name
check_zone
gcloud_scope
run gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${SCOPE[@]}" --quiet
