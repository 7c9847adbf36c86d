#!/usr/bin/env bash
# One command for each job on a fresh Linux machine: it creates the virtual
# environment (.venv) if missing, installs facegate into it with the versions
# pinned in constraints.txt, then runs the job.
#
#   ./facegate.sh demo [ARGS...]   run the main job on its embedded default
#   ./facegate.sh test [ARGS...]   install the test tools and run the test suite; as root with
#                                  apt-get, it also installs Mosquitto for the broker tests and
#                                  chromium for the desk's browser test (without them those skip)
#   ./facegate.sh lock [ARGS...]   install the newest versions in build/lock-venv, run the
#                                  test suite there (ARGS go to pytest) and, only if it
#                                  passes, pin them in constraints.txt
#
# PYTHON=python3.12 ./facegate.sh test   picks the interpreter (3.10 to 3.13).
set -euo pipefail
cd "$(dirname "$0")"
job=${1:-}
[ $# -gt 0 ] && shift

python=${PYTHON:-python3}
venv=.venv
constraints=constraints.txt

usage() {
  # The comment block at the top of this file, from line 2 to the first line of code.
  sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
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

# The broker tests start their own mosquitto; the system service is never started.
ensure_mosquitto() {
  if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing mosquitto for the broker tests"
    # A policy-rc.d that exits 101 keeps the package scripts from starting the system service.
    local policy=/usr/sbin/policy-rc.d ours=
    if [ ! -e "$policy" ] && printf '#!/bin/sh\nexit 101\n' > "$policy" 2>/dev/null && chmod +x "$policy"; then
      ours=1
    fi
    local installed=
    if apt-get install -y -qq mosquitto >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq mosquitto >/dev/null 2>&1; }; then
      installed=1
    fi
    [ -z "$ours" ] || rm -f "$policy"
    [ -z "$installed" ] || return 0
  fi
  echo "facegate: mosquitto is not installed (sudo apt-get install mosquitto): the broker tests will skip" >&2
}

# The desk's browser test (tests/test_desk_browser.py) drives Debian's chromium through Playwright;
# Playwright's own browser download is never used.
ensure_chromium() {
  if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing chromium for the desk's browser test"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; then
      return
    fi
  fi
  echo "facegate: chromium is not installed (sudo apt-get install chromium): the desk's browser test will skip" >&2
}

venv_python_version() {
  "$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

# Reinstall only when the package metadata or the pins changed since the last install.
# The pins are pip constraints: pip moves each package the install needs, up or down,
# to its pinned version (it replaces an installed version that a constraint rejects),
# so the venv ends at exactly the tested set.
ensure_installed() {
  local extras=$1
  local stamp="$venv/.facegate-installed$extras"
  local want pins=() inputs=(setup.cfg pyproject.toml)
  [ ! -f "$constraints" ] || inputs+=("$constraints")
  want=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== installing facegate$extras into $venv"
    local version
    version=$(venv_python_version)
    if [ ! -f "$constraints" ]; then
      echo "facegate: $constraints is missing: installing the newest versions, untested (./facegate.sh lock writes it)" >&2
    else
      pins=(-c "$constraints")
      grep -q "python_version == \"$version\"" "$constraints" ||
        echo "facegate: $constraints pins nothing for Python $version: installing the newest versions, untested (PYTHON=python$version ./facegate.sh lock pins them)" >&2
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" -e ".$extras"
    echo "$want" > "$stamp"
  fi
}

# The head of constraints.txt; each Python version's section follows it.
constraints_header() {
  cat <<'HEADER'
# The exact versions facegate's test suite passed with: the runtime requirements
# and the dev extra (pytest, scikit-image), with everything they pull in.
# ./facegate.sh (demo and test), .ci/run and tools/install_device.sh install with
# `pip install -c constraints.txt`; setup.cfg keeps the version ranges facegate
# is compatible with, this file the tested set to deploy.
#
# Written by `./facegate.sh lock`, not by hand: it installs the newest versions
# (`pip install .[dev]`, no constraints) into a scratch venv, build/lock-venv,
# runs the test suite with that venv's python, and only when the suite passes
# replaces its Python version's section below with `pip freeze --exclude-editable`
# of that venv. The other versions' sections are kept. The markers make pip use
# only the section of the Python it runs on; on a Python with no section the
# install is unpinned (and says so): `PYTHON=python3.X ./facegate.sh lock` adds one.
# Each section was tested on the platform its first line names.
#
# Not pinned: pip, setuptools and wheel; the jetson and pi extras (pycuda, lgpio),
# which need the device (pycuda cannot be installed on the CI machine, and the
# suite installs neither); the export extra (model conversion only), which pins
# its own versions in setup.cfg.
HEADER
}

lock_failed() {
  echo "facegate: lock failed: $1; $constraints is unchanged" >&2
  exit 1
}

lock() {
  venv=build/lock-venv
  local log=build/lock-pytest.log freeze=build/lock-freeze.txt tmp="$constraints.tmp"
  rm -rf "$venv"
  mkdir -p build
  ensure_venv
  local pip="$venv/bin/python -m pip --disable-pip-version-check"
  echo "== installing the newest versions of facegate[dev] into $venv"
  $pip install --quiet --upgrade pip || lock_failed "pip could not upgrade itself in $venv"
  $pip install --quiet ".[dev]" || lock_failed "pip could not install .[dev] into $venv"
  echo "== running the test suite with them: $venv/bin/python -m pytest $*"
  local status=0
  "$venv/bin/python" -m pytest "$@" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || lock_failed "the test suite did not pass with the newest versions (pytest exit $status, output in $log)"
  local summary
  summary=$(grep -E ' in [0-9.]+s' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true)
  $pip freeze --exclude-editable > "$freeze" || lock_failed "pip freeze failed"
  trap "rm -f '$tmp'" EXIT
  constraints_header > "$tmp"
  "$venv/bin/python" - "$freeze" "$tmp" "${*:-}" "$summary" <<'PY' || lock_failed "could not write $tmp"
import datetime, platform, re, sys

freeze, out, args, summary = sys.argv[1:5]
version = "%d.%d" % sys.version_info[:2]
SECTION = re.compile(r"^# == Python (\d+)\.(\d+)\b")

# Keep the other Python versions' sections of the current file.
sections, current = {}, None
try:
    with open("constraints.txt") as f:
        for line in f.read().splitlines():
            m = SECTION.match(line)
            if m:
                current = (int(m[1]), int(m[2]))
                sections[current] = []
            if current is not None and line.strip():
                sections[current].append(line)
except FileNotFoundError:
    pass

pins = []
with open(freeze) as f:
    for line in f:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[\s=<>!~@;\[]", line, maxsplit=1)[0]
        if re.sub(r"[-_.]+", "-", name).lower() in {"facegate", "pip", "setuptools", "wheel"}:
            continue
        if not re.fullmatch(r"[A-Za-z0-9._-]+==\S+", line):
            sys.exit(f"facegate: cannot pin {line!r}: not name==version")
        pins.append(f'{line} ; python_version == "{version}"')
if not pins:
    sys.exit("facegate: pip freeze listed no packages")

today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
command = "./facegate.sh lock" + (" " + args if args else "")
sections[sys.version_info[:2]] = [
    f"# == Python {version}: {platform.python_implementation()} {platform.python_version()}"
    f" on {platform.platform()}, {today}",
    f"# `{command}`: {summary or 'the test suite passed'}",
    *pins,
]
with open(out, "a") as f:
    for key in sorted(sections):
        f.write("\n" + "\n".join(sections[key]) + "\n")
print(f"== {len(pins)} pins for Python {version}")
PY
  mv -f "$tmp" "$constraints"
  trap - EXIT
  echo "== $constraints now pins the versions tested above for Python $(venv_python_version) (git diff $constraints shows the changes)"
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
    ensure_mosquitto
    ensure_chromium
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  lock)
    lock "$@"
    ;;
  *)
    usage
    ;;
esac
