"""The documentation's shell commands run as printed, so README.md and docs/ cannot drift from the tools.

Every command line of the ```sh blocks of README.md and of each page under docs/ (in the order
the README's map lists them, as a newcomer reads them) either runs here, in order, with temporary
paths and the bundled demo data substituted, and must exit 0, or is listed in NOT_HERE with the
reason it cannot run on a development machine. A new documented line that is in neither place
fails the test, and so does a page under docs/ that the README's map leaves out, or a link
between the pages to a missing file or heading.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data

from daemon.config import EXAMPLE_PATH
from daemon.events import EventLog
from tests.conftest import DEMO_CLIP, REPO

README = REPO / "README.md"
DOCS = REPO / "docs"

# The start of each line that cannot run here, and why.
NOT_HERE = {
    "./facegate.sh test": "it is the command running this suite",
    "./facegate.sh lock": "resolves the newest versions from PyPI and reruns this whole suite in a scratch venv",
    "sudo ": "needs root on a door device: apt packages, /opt/facegate, /etc/facegate, systemd",
    "sudoedit ": "edits the config under /etc on a door device (check-config on it runs above)",
    "python tools/enroll_local.py --db /var/lib/facegate/gallery.db add \"Bob Stone\" --camera": "needs a camera",
    "python tools/build_engine.py": "needs TensorRT and an NVIDIA GPU",
    ".venv/bin/pip install": "installs the export extra (torch, dlib): tests/test_export.py reruns the conversion "
                            "where it is installed",
    ".venv/bin/python tools/export_models.py": "needs the export extra (torch, dlib), as above",
    "diff /tmp/models/MANIFEST": "compares the output of the export above",
    "curl -s http://127.0.0.1:9108/healthz": "needs a running door with metrics.listen set "
                                             "(tests/test_fleet_service.py scrapes a running door's endpoint)",
    "mosquitto_sub ": "watches a broker until interrupted",
    "python tools/enroll_local.py --db /var/lib/facegate/gallery.db serve": "serves the desk until interrupted "
                                                                          "(tests/test_desk_browser.py runs it)",
}
# The start of each line that needs a broker: run against the tests' Mosquitto, skipped without one.
NEEDS_BROKER = ("python tools/enroll_local.py --db /var/lib/facegate/gallery.db publish",)


def shell_lines(markdown: str) -> list[str]:
    """The command lines of every ```sh block, continuation lines joined, blank and comment lines left out."""
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", markdown, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def pages() -> list[Path]:
    """README.md, then each page of docs/ in the order the README first links it."""
    linked = re.findall(r"\]\((docs/[^)#\s]+\.md)", README.read_text())
    return [README, *(REPO / path for path in dict.fromkeys(linked))]


def documented_lines() -> list[tuple[str, str]]:
    """(page, command line) for every command line of every page, in reading order."""
    return [(str(page.relative_to(REPO)), line) for page in pages() for line in shell_lines(page.read_text())]


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings (headings inside code blocks are not headings)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#{1,6} (.+)$", prose, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of a page whose file, or whose #heading in that file, does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:, file: point outside the repository
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.is_file():
            broken.append(target)
        elif anchor and anchor not in heading_anchors(linked.read_text()):
            broken.append(target)
    return broken


def reason_not_here(line: str) -> str | None:
    return next((reason for start, reason in NOT_HERE.items() if line.startswith(start)), None)


@pytest.fixture
def door_machine(tmp_path, request) -> dict[str, str]:
    """What the documented paths stand for here: a state directory with the event log a running door
    keeps, the example config as /etc/facegate/config.yaml, two photos of one person, the demo clip,
    the front desk's key and broker config (the tests' Mosquitto, when it is installed)."""
    state = tmp_path / "var-lib-facegate"
    state.mkdir()
    with EventLog(state / "events.db") as events:
        events.record("start", door="front-door", reason="the door as the README finds it")
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE_PATH.read_text().replace("/var/lib/facegate/", f"{state}/"))
    astronaut = data.astronaut()
    photos = []
    for name, image in (("alice1.jpg", astronaut), ("alice2.jpg", astronaut[:, ::-1])):
        Image.fromarray(np.ascontiguousarray(image)).save(tmp_path / name)
        photos.append(str(tmp_path / name))
    try:
        broker = request.getfixturevalue("mosquitto")
    except pytest.skip.Exception:
        broker = None
    frontdesk = tmp_path / "frontdesk.yaml"
    if broker is not None:
        frontdesk.write_text(yaml.safe_dump({"mqtt": broker.mqtt_section(client_id="front-desk")}))
    return {
        "/etc/facegate/fleet.key": str(tmp_path / "fleet.key"),
        "/etc/facegate/frontdesk.yaml": str(frontdesk),
        "/var/lib/facegate/": f"{state}/",
        "/etc/facegate/config.yaml": str(config),
        "alice1.jpg alice2.jpg": " ".join(photos),
        "door-recording.mp4": str(DEMO_CLIP),
        " build/": f" {tmp_path}/build/",
    }


def here(line: str, substitutions: dict[str, str]) -> str:
    for printed, local in substitutions.items():
        line = line.replace(printed, local)
    # `python` is the interpreter running the suite (the project's venv), whatever PATH says.
    return re.sub(r"^(\.venv/bin/)?python ", f"{shlex.quote(sys.executable)} ", line)


def test_every_runnable_documented_command_exits_0(door_machine):
    runnable = [(page, line) for page, line in documented_lines() if reason_not_here(line) is None]
    if not Path(door_machine["/etc/facegate/frontdesk.yaml"]).exists():
        runnable = [(page, line) for page, line in runnable
                    if not line.startswith(NEEDS_BROKER)]  # Mosquitto is not installed
    assert {page for page, _ in runnable} >= {"README.md", "docs/operating.md", "docs/fleet.md"}, \
        "the README, or a page of its map, lost its runnable commands"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for page, line in runnable:
        result = subprocess.run(["bash", "-c", here(line, door_machine)], cwd=REPO, env=env, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=600)
        assert result.returncode == 0, f"{page} line {line!r} exited {result.returncode}:\n" \
                                       f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_every_documented_command_that_cannot_run_here_is_still_documented():
    lines = [line for _, line in documented_lines()]
    stale = [start for start in NOT_HERE if not any(line.startswith(start) for line in lines)]
    assert not stale, f"NOT_HERE lists lines the README and docs/ no longer have: {stale}"


def test_the_readme_map_lists_every_page_under_docs():
    assert set(pages()[1:]) == set(DOCS.rglob("*.md")), "a page under docs/ is missing from README.md's map " \
                                                        "(its commands would not run here), or a link is dead"


def test_every_link_between_the_pages_resolves():
    broken = {str(page.relative_to(REPO)): broken_links(page) for page in pages()}
    assert not any(broken.values()), f"links to a missing file or heading: {broken}"


def test_broken_links_finds_a_missing_page_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Raspberry Pi 4 / 5 (Bookworm)\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md) [ok](other.md#raspberry-pi-4--5-bookworm) [web](https://example.org/x) "
                    "[gone](missing.md) [no heading](other.md#not-a-heading) [here](#page)\n# Page\n")
    assert broken_links(page) == ["missing.md", "other.md#not-a-heading"]


def test_shell_lines_joins_continuations_and_drops_comments():
    markdown = "text\n```sh\n# a comment\npython a.py \\\n  --flag  # why\n\nls\n```\n```python\nx = 1\n```\n"
    assert shell_lines(markdown) == ["python a.py    --flag  # why", "ls"]


def test_a_failing_readme_line_would_be_caught(door_machine):
    result = subprocess.run(["bash", "-c", here("python tools/events.py --db /var/lib/facegate/missing.db list",
                                                door_machine)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "no event log" in result.stderr
