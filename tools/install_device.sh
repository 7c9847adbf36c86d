#!/usr/bin/env bash
# Install facegate on a door device, using the vendor's own OpenCV.
#
#   tools/install_device.sh jetson [VENV]   JetPack 5/6: TensorRT, pycuda deps and a
#                                           GStreamer-enabled cv2 come from JetPack
#   tools/install_device.sh pi [VENV]       Raspberry Pi OS: picamera2 and cv2 from apt
#
# The venv (default /opt/facegate/venv) sees the system site-packages, and
# facegate is installed without pip's opencv-python-headless, so the vendor cv2
# is the only cv2 in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-}
venv=${2:-/opt/facegate/venv}

case "$device" in
  jetson) extra=jetson; system_modules="tensorrt cv2" ;;
  pi)     extra=pi;     system_modules="picamera2 cv2" ;;
  *)      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

for module in $system_modules; do
  python3 -c "import $module" 2>/dev/null || {
    echo "facegate: the system python3 cannot import $module." >&2
    [ "$device" = jetson ] && echo "  Install JetPack's packages: sudo apt install nvidia-tensorrt python3-libnvinfer python3-opencv" >&2
    [ "$device" = pi ] && echo "  Install Raspberry Pi OS packages: sudo apt install python3-picamera2 python3-opencv" >&2
    exit 1
  }
done

python3 -m venv --system-site-packages "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check"
$pip install --quiet --upgrade pip
# The tested versions (./facegate.sh lock); a pin for a package not installed here is harmless.
pins="-c constraints.txt"
version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
grep -q "python_version == \"$version\"" constraints.txt ||
  echo "facegate: constraints.txt pins nothing for Python $version: installing the newest versions, untested (PYTHON=python$version ./facegate.sh lock on a development machine pins them)" >&2
# Every runtime requirement except pip's OpenCV, read from setup.cfg so the list lives in one place.
requirements=$("$venv/bin/python" - <<'PY'
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options"]["install_requires"].split("\n"):
    line = line.split("#")[0].strip()
    if line and not line.startswith("opencv"):
        print(line)
PY
)
# shellcheck disable=SC2086
$pip install --quiet $pins $requirements
$pip install --quiet --no-deps -e .
extras=$("$venv/bin/python" -c "import configparser; c=configparser.ConfigParser(); c.read('setup.cfg'); print(' '.join(c['options.extras_require']['$extra'].split()))")
# shellcheck disable=SC2086
[ -z "$extras" ] || $pip install --quiet $pins $extras

if $pip list 2>/dev/null | grep -qi '^opencv'; then
  echo "facegate: a pip OpenCV is installed in $venv next to the system cv2; remove it: $venv/bin/pip uninstall opencv-python opencv-python-headless" >&2
  exit 1
fi
"$venv/bin/python" -c "import cv2; print('cv2', cv2.__version__, 'from', cv2.__file__)"
echo "facegate installed in $venv for $device"
