#!/usr/bin/env bash
# Installs this checkout into a virtual environment on the machine that trains (a TPU VM worker, a GPU host).
#
# Usage (from anywhere; it installs the checkout it belongs to):
#   launch/install.sh tpu        # the package's tpu extra, jax[tpu]: libtpu from PyPI
#   launch/install.sh cuda12     # its cuda12 extra, jax[cuda12]: CUDA 12 wheels from PyPI (NVIDIA driver >= 525)
#   launch/install.sh cuda13     # its cuda13 extra, jax[cuda13]: CUDA 13 wheels (driver >= 580)
#   launch/install.sh cpu        # no extra: JAX on the CPU
#
# Environment:
#   VENV            default ~/venvs/debias_jax; created if missing, reused otherwise
#   PYTHON          a Python >= 3.11 to build the venv with; default: the first of python3.13, python3.12,
#                   python3.11, python3 that is new enough; if there is none (TPU VM images ship Python 3.10),
#                   uv (pip install --user uv) installs Python ${PYTHON_VERSION:-3.11} for the venv
#   PYTHON_VERSION  the Python uv installs when none is found (default 3.11, what constraints.txt was made with)
#   DRY_RUN=1       print the commands instead of running them
# The packages are pinned by constraints.txt (jax==0.10.2 and everything else the tests ran with); the extra
# (pyproject.toml) adds the accelerator plugin that matches that JAX (libtpu, or the CUDA plugin and its NVIDIA
# wheels).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BACKEND="${1:-${BACKEND:-}}"
[[ -n "${BACKEND}" ]] || die "name the backend: $0 tpu | cuda12 | cuda13 | cpu."
case "${BACKEND}" in
  tpu | cuda12 | cuda13) PACKAGE=".[${BACKEND}]" ;;
  cpu) PACKAGE="." ;;
  *) die "unknown backend '${BACKEND}'; use tpu, cuda12, cuda13 or cpu." ;;
esac
VENV="${VENV:-${HOME}/venvs/debias_jax}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
check_pattern PYTHON_VERSION '^3\.(1[1-9]|[2-9][0-9])$' "use a Python version of at least 3.11, such as 3.11"

python_is_new_enough() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

find_python() {
  local candidate
  if [[ -n "${PYTHON:-}" ]]; then
    python_is_new_enough "${PYTHON}" || die "PYTHON=${PYTHON} is not a Python >= 3.11 (jax 0.10 needs 3.11)."
    echo "${PYTHON}"
    return
  fi
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "${candidate}" >/dev/null && python_is_new_enough "${candidate}"; then
      command -v "${candidate}"
      return
    fi
  done
}

create_venv() {
  local python
  python="$(find_python)"
  if [[ -n "${python}" ]] && "${python}" -c 'import ensurepip, venv' 2>/dev/null; then
    note "creating ${VENV} with ${python}"
    run "${python}" -m venv "${VENV}"
    return
  fi
  # No usable Python >= 3.11 (Ubuntu 22.04 has 3.10): uv installs a standalone one.
  local uv
  uv="$(command -v uv || true)"
  if [[ -z "${uv}" ]]; then
    note "no Python >= 3.11 with venv here; installing uv to get Python ${PYTHON_VERSION}"
    python3 -m pip --version >/dev/null 2>&1 ||
      die "no Python >= 3.11 and no pip to install uv with: sudo apt-get install -y python3-pip (or python3.11-venv), or set PYTHON."
    if ! run python3 -m pip install --user --quiet uv; then
      run python3 -m pip install --user --quiet --break-system-packages uv  # PEP 668 systems
    fi
    uv="$(python3 -m site --user-base)/bin/uv"
  fi
  run "${uv}" venv --seed --python "${PYTHON_VERSION}" "${VENV}"
}

if [[ -x "${VENV}/bin/python" ]]; then
  python_is_new_enough "${VENV}/bin/python" || die "${VENV} holds a Python older than 3.11; remove it or set VENV."
  note "reusing ${VENV}"
else
  create_venv
fi

cd "${REPO_ROOT}"
run "${VENV}/bin/python" -m pip install --quiet --upgrade pip
run "${VENV}/bin/python" -m pip install --quiet -c constraints.txt -e "${PACKAGE}"
# A check that touches no accelerator (on a pod slice the TPU starts only when every worker runs JAX together).
run "${VENV}/bin/python" -c "import jax, jaxlib, debias_jax; print('debias_jax installed: jax', jax.__version__, 'jaxlib', jaxlib.__version__)"
note "done: run with ${VENV}/bin/python -m debias_jax.main ..."
