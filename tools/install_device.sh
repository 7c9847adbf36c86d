#!/usr/bin/env bash
# Install facegate on a door device, using the vendor's own OpenCV.
#
#   tools/install_device.sh [--dry-run] jetson [VENV]   JetPack 5/6: TensorRT, pycuda deps and a
#                                                       GStreamer-enabled cv2 come from JetPack
#   tools/install_device.sh [--dry-run] pi [VENV]       Raspberry Pi OS: picamera2 and cv2 from apt
#
# The venv (default /opt/facegate/venv) sees the system site-packages, and
# facegate is installed without pip's opencv-python-headless, so the vendor cv2
# is the only cv2 in the environment. It ends by importing cv2 in the venv and
# fails (exit 1) when that cv2 is missing or comes from pip.
#
# --dry-run changes nothing: it prints each command it would run ("would run: ...",
# shell-quoted) and the checks it would make; a failed system-module check is
# reported and the plan still printed.
# FACEGATE_SYSTEM_MODULES_CHECK=0 skips the first check (that the system python3
# imports the vendor modules), so the install can be tried on a machine without
# them (CI); the final cv2 check still runs, so there the install ends with exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=
if [ "${1:-}" = --dry-run ]; then
  dry_run=1
  shift
fi
device=${1:-}
venv=${2:-/opt/facegate/venv}

case "$device" in
  jetson) extra=jetson; system_modules="tensorrt cv2"
          vendor="JetPack's packages: sudo apt install nvidia-tensorrt python3-libnvinfer python3-opencv" ;;
  pi)     extra=pi;     system_modules="picamera2 cv2"
          vendor="Raspberry Pi OS packages: sudo apt install python3-picamera2 python3-opencv" ;;
  # The comment block at the top of this file, from line 2 to the first line of code.
  *)      sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

# Runs a command, or under --dry-run prints it, quoted so it can be pasted into a shell.
run() {
  if [ -n "$dry_run" ]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

[ -z "$dry_run" ] || echo "facegate: dry run, in $(pwd): nothing is installed or changed"
if [ "${FACEGATE_SYSTEM_MODULES_CHECK:-1}" = 0 ]; then
  echo "facegate: FACEGATE_SYSTEM_MODULES_CHECK=0: not checking that the system python3 imports $system_modules" >&2
else
  for module in $system_modules; do
    python3 -c "import $module" 2>/dev/null || {
      echo "facegate: the system python3 cannot import $module." >&2
      echo "  Install $vendor" >&2
      [ -n "$dry_run" ] || exit 1
      echo "  (dry run: an install would stop here)" >&2
    }
  done
fi

# The venv is made from this python3, so it answers for the venv's version and reads setup.cfg.
version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# The tested versions (./facegate.sh lock); a pin for a package not installed here is harmless.
grep -q "python_version == \"$version\"" constraints.txt ||
  echo "facegate: constraints.txt pins nothing for Python $version: installing the newest versions, untested (PYTHON=python$version ./facegate.sh lock on a development machine pins them)" >&2
# Every runtime requirement except pip's OpenCV, and the device's extra, read from setup.cfg
# so the lists live in one place.
setup_cfg() {
  python3 - "$1" <<'PY'
import configparser
import sys

cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
section, _, key = sys.argv[1].partition(":")
for line in cfg[section][key].split("\n"):
    line = line.split("#")[0].strip()
    if line and not line.lower().startswith("opencv"):
        print(line)
PY
}
mapfile -t requirements < <(setup_cfg options:install_requires)
mapfile -t extras < <(setup_cfg "options.extras_require:$extra")

run python3 -m venv --system-site-packages "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
run "${pip[@]}" install --quiet --upgrade pip
run "${pip[@]}" install --quiet -c constraints.txt "${requirements[@]}"
run "${pip[@]}" install --quiet --no-deps -e .
[ ${#extras[@]} = 0 ] || run "${pip[@]}" install --quiet -c constraints.txt "${extras[@]}"

if [ -n "$dry_run" ]; then
  echo "would check: no pip OpenCV in $venv, and $venv/bin/python imports the system cv2"
  exit 0
fi
if "${pip[@]}" list 2>/dev/null | grep -qi '^opencv'; then
  echo "facegate: a pip OpenCV is installed in $venv next to the system cv2; remove it: $venv/bin/pip uninstall opencv-python opencv-python-headless" >&2
  exit 1
fi
"$venv/bin/python" -c "import cv2; print('cv2', cv2.__version__, 'from', cv2.__file__)" 2>/dev/null || {
  echo "facegate: $venv/bin/python cannot import cv2: facegate is installed without pip's OpenCV, for the system's; install $vendor" >&2
  exit 1
}
echo "facegate installed in $venv for $device"
