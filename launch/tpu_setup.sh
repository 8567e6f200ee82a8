#!/usr/bin/env bash
# Puts this repository on every worker of a TPU VM and installs it there (launch/install.sh tpu).
#
# Usage:
#   TPU_NAME=debias-v4 ZONE=us-central2-b launch/tpu_setup.sh            # copies this checkout
#   TPU_NAME=debias-pod ZONE=us-central2-b REPO_URL=https://github.com/OWNER/debias_jax.git launch/tpu_setup.sh
#
# Environment:
#   TPU_NAME, ZONE    required (as for launch/tpu_create.sh); PROJECT optional
#   REPO_URL          clone this git URL on every worker (REPO_REF: branch or tag, default main); without it, the
#                     files of this checkout (tracked and untracked, not ignored: uncommitted edits included) are
#                     copied, so every worker runs exactly the code you have here
#   REMOTE_DIR        where the repository goes on each worker, relative to its home (default debias_jax);
#                     replaced if it exists
#   VENV              the virtual environment on each worker (default ~/venvs/debias_jax)
#   DRY_RUN=1         print the commands instead of running them
# Every worker must get the same code: the training checks that all processes agree (config, code, devices)
# and stops with an error naming what differs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REMOTE_DIR="${REMOTE_DIR:-debias_jax}"
REPO_REF="${REPO_REF:-main}"
require TPU_NAME ZONE
check_tpu_name
check_zone
check_remote_dir
gcloud_scope
venv_assignment=""
if [[ -n "${VENV:-}" ]]; then
  check_pattern VENV '^[A-Za-z0-9_~/.-]+$' "use a plain path such as ~/venvs/debias_jax"
  venv_assignment="VENV=${VENV} "
fi

# The files git would commit (tracked and untracked, not ignored) that exist, as a .tar.gz.
pack_checkout() {
  (cd "${REPO_ROOT}" &&
    git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do
      if [[ -f "${path}" || -L "${path}" ]]; then printf '%s\0' "${path}"; fi
    done | tar --null -T - -czf "$1")
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${SCOPE[@]}" --worker=all --command="$1"
}

install="${venv_assignment}bash ${REMOTE_DIR}/launch/install.sh tpu"
if [[ -n "${REPO_URL:-}" ]]; then
  check_pattern REPO_URL '^(https://|git@|ssh://)[A-Za-z0-9@:/._~+-]+$' \
    "use a git URL such as https://github.com/OWNER/debias_jax.git"
  check_pattern REPO_REF '^[A-Za-z0-9][A-Za-z0-9._/-]*$' "use a branch or tag name"
  ssh_all "set -e; rm -rf ${REMOTE_DIR}; git clone --quiet --depth 1 --branch ${REPO_REF} ${REPO_URL} ${REMOTE_DIR}; ${install}"
else
  if is_dry_run; then
    archive="/tmp/debias_jax.XXXXXX/debias_jax.tar.gz"
  else
    archive="$(mktemp -d)/debias_jax.tar.gz"
  fi
  note "packing this checkout (${REPO_ROOT}) into ${archive}"
  run pack_checkout "${archive}"
  run gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:debias_jax.tar.gz" "${SCOPE[@]}" --worker=all
  ssh_all "set -e; rm -rf ${REMOTE_DIR}; mkdir -p ${REMOTE_DIR}; tar -xzf debias_jax.tar.gz -C ${REMOTE_DIR}; rm debias_jax.tar.gz; ${install}"
fi
note "set up ${TPU_NAME}: run a config with launch/tpu_run.sh"
