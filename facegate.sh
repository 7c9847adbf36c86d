#!/usr/bin/env bash
# One command for each job on a fresh Linux machine: it creates the virtual
# environment (.venv) if missing, installs facegate into it, then runs the job.
#
#   ./facegate.sh demo [ARGS...]   run the main job on its embedded default
#   ./facegate.sh test [ARGS...]   install the test tools and run the test suite
#
# PYTHON=python3.12 ./facegate.sh test   picks the interpreter (3.10 to 3.13).
set -euo pipefail
cd "$(dirname "$0")"
job=${1:-}
[ $# -gt 0 ] && shift

python=${PYTHON:-python3}
venv=.venv

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

ensure_venv() {
  if ! command -v "$python" >/dev/null; then
    echo "facegate: $python not found; install Python 3.10 to 3.13 first" >&2
    exit 1
  fi
  "$python" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' || {
    echo "facegate: $("$python" --version 2>&1) is not supported: use Python 3.10 to 3.13 (PYTHON=...)" >&2
    exit 1
  }
  if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv with $("$python" --version 2>&1)"
    if ! "$python" -m venv "$venv" 2>/dev/null; then
      # Debian and Ubuntu split venv (ensurepip) out of the interpreter package.
      rm -rf "$venv"
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv "$venv"
      else
        echo "facegate: '$python -m venv' failed; install your distribution's venv package (e.g. sudo apt install python3-venv)" >&2
        exit 1
      fi
    fi
  fi
}

# Reinstall only when the package metadata changed since the last install.
ensure_installed() {
  local extras=$1
  local stamp="$venv/.facegate-installed$extras"
  local want
  want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing facegate$extras into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$extras"
    echo "$want" > "$stamp"
  fi
}

case "$job" in
  demo)
    ensure_venv
    ensure_installed ""
    exec "$venv/bin/python" -m daemon demo "$@"
    ;;
  test)
    ensure_venv
    ensure_installed "[dev]"
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  *)
    usage
    ;;
esac
