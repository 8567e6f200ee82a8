# Shared helpers of the launch scripts (sourced, not run).
#
# DRY_RUN=1 makes `run` print each command (shell-quoted, prefixed with "+ ") instead of running it, so every
# script can be checked without gcloud, a TPU or a GPU.
# shellcheck shell=bash

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${LAUNCH_DIR}/.." && pwd)"
export LAUNCH_DIR REPO_ROOT

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "[$(basename "$0")] $*" >&2
}

is_dry_run() {
  [[ "${DRY_RUN:-0}" == "1" ]]
}

# run CMD ARG...: runs the command, or prints it under DRY_RUN=1.
run() {
  if is_dry_run; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "+ ${quoted% }"
  else
    "$@"
  fi
}

# require NAME...: each variable must be set and non-empty.
require() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "${name} is not set; e.g. ${name}=$(example_of "${name}") $0 (see the usage at the top of $0)."
  done
}

example_of() {
  case "$1" in
    TPU_NAME) echo "debias-v4" ;;
    ZONE) echo "us-central2-b" ;;
    WORKDIR) echo "gs://my-bucket/debias/run1" ;;
    ACCELERATOR_TYPE) echo "v4-8" ;;
    *) echo "..." ;;
  esac
}

# check_pattern NAME REGEX HINT: the variable's value must match the (extended) regex.
check_pattern() {
  local name="$1" pattern="$2" hint="$3"
  [[ "${!name}" =~ ${pattern} ]] || die "${name}='${!name}' is not valid: ${hint}."
}

check_bool() {
  local name="$1"
  [[ "${!name}" == "0" || "${!name}" == "1" ]] || die "${name}='${!name}' must be 0 or 1."
}

# TPU resource names: lower-case letters, digits and hyphens, starting with a letter (GCE naming rules).
check_tpu_name() {
  check_pattern TPU_NAME '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$' \
    "use lower-case letters, digits and hyphens, starting with a letter (at most 63 characters)"
}

check_zone() {
  check_pattern ZONE '^[a-z]+-[a-z]+[0-9]+-[a-z]$' "a zone looks like us-central2-b or europe-west4-a"
}

# The gcloud flags every TPU command shares: --zone and, if PROJECT is set, --project.
gcloud_scope() {
  SCOPE=(--zone="${ZONE}")
  if [[ -n "${PROJECT:-}" ]]; then
    check_pattern PROJECT '^[a-z][-a-z0-9:.]{4,61}[a-z0-9]$' "a Google Cloud project id such as my-project-123"
    SCOPE+=(--project="${PROJECT}")
  fi
}

# Accelerator types: v4-8, v4-32, v5litepod-8 (v5e), v5p-8, v6e-8, v2-8, v3-8, ...
check_accelerator_type() {
  check_pattern ACCELERATOR_TYPE '^(v2|v3|v4|v5p|v5litepod|v6e)-[0-9]+$' \
    "use a Cloud TPU accelerator type such as v4-8, v4-32, v5litepod-8 (v5e), v5p-8 or v6e-8"
}

# The TPU software version for an accelerator type (https://cloud.google.com/tpu/docs/runtimes).
default_runtime_version() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# One host serves up to 8 chips/cores: a larger slice is a multi-host pod slice.
is_multi_host() {
  local size="${1##*-}"
  ((size > 8))
}

# The directory of the repository on each worker, relative to the worker's home directory.
check_remote_dir() {
  check_pattern REMOTE_DIR '^[A-Za-z0-9_][A-Za-z0-9_./-]*$' \
    "use a path relative to the worker's home directory, such as debias_jax"
  [[ "${REMOTE_DIR}" != *..* ]] || die "REMOTE_DIR='${REMOTE_DIR}' must not contain '..'."
}
