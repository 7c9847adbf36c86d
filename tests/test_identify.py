"""`tools/evaluate.py identify`: open-set 1:N figures measured as the door decides, on a few development photos;
`tools/make_splits.py`; the open-set curve's arithmetic on hand-made distances."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines import evaluation as ev
from tests.conftest import REPO

OPENSET = Path("sets") / "openset_dev"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_open_set_curve_counts_votes_below_each_threshold():
    # Genuine: three vote right (one of them only above 0.5), one's best match is someone else; strangers: two
    # clear the margin (at 0.3 and 0.6), one does not (it never votes, however loose the threshold).
    curve = ev.open_set_curve(np.array([0.2, 0.4, 0.55, 0.3]), np.array([True, True, True, False]),
                              np.array([0.3, 0.6, 0.1]), np.array([True, True, False]))
    assert ev.tpir_at_fpir(curve, 0.0) == pytest.approx(0.25)  # only 0.2 lies under the first stranger, 0.3
    assert ev.threshold_at_fpir(curve, 0.0) == pytest.approx(0.3)
    assert ev.tpir_at_fpir(curve, 0.4) == pytest.approx(0.75)  # up to 0.6: 0.2, 0.4, 0.55
    assert curve.fpir[-1] == pytest.approx(2 / 3) and curve.tpir[-1] == pytest.approx(0.75)
    assert np.all(np.diff(curve.fpir) >= 0) and np.all(np.diff(curve.tpir) >= 0)


def write_split(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    path.write_text("path\tidentity\trole\ttrack\n" + "".join("\t".join(row) + "\n" for row in rows))


@pytest.fixture
def tiny_split(shared_data, tmp_path) -> tuple[Path, Path]:
    """Three CelebA people enrolled with three photos each and probed with five (one track each), two strangers
    with five photos each, a photo without a face and a file that is no image."""
    root = shared_data / OPENSET
    people = sorted(p for p in (root / "images" / "celeba_align").iterdir() if p.is_dir())[:5]
    rows = []
    for number, person in enumerate(people):
        photos = sorted(person.iterdir())
        identity = f"celeba:{person.name}"
        if number < 3:
            rows += [(str(p.relative_to(root)), identity, "enrol", "") for p in photos[:3]]
            rows += [(str(p.relative_to(root)), identity, "genuine", identity) for p in photos[3:8]]
        else:
            rows += [(str(p.relative_to(root)), identity, "stranger", identity) for p in photos[:5]]
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 127, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    rows += [(str(blank), "nobody", "stranger", ""), (str(broken), "nobody-else", "genuine", "")]
    write_split(tmp_path / "split.tsv", rows)
    return tmp_path / "split.tsv", root


def test_identify_enrols_probes_and_reports_as_the_door_decides(tiny_split, tmp_path):
    split, root = tiny_split
    det = tmp_path / "det.png"
    result = run_tool("tools/evaluate.py", "identify", str(split), "--root", str(root), "--json",
                      "--det", str(det), "--cache", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gallery_size"] == 3 and report["templates"] >= 7
    assert report["genuine_probes"] == 16 and report["stranger_probes"] == 11
    # The door's threshold for three people's templates; the photos are separable at it.
    assert report["threshold"] < 0.7 and "max_fpir 0.001" in report["threshold_source"]
    assert report["tpir"] >= 0.75 and report["fpir"] == 0.0
    assert report["tpir"] + report["misidentification_rate"] <= 1.0
    assert set(report["tpir_at_fpir"]) == {"0.01", "0.001"}
    tracks = report["tracks"]
    assert (tracks["genuine_tracks"], tracks["stranger_tracks"]) == (3, 2) and tracks["fpir"] == 0.0
    assert cv2.imread(str(det)) is not None
    # The photo without a face and the file that is no image are named on stderr and skipped.
    assert "blank.png: no face found" in result.stderr and "broken.jpg: unreadable" in result.stderr
    # A second run reads every embedding from the cache and gives the same figures.
    again = run_tool("tools/evaluate.py", "identify", str(split), "--root", str(root), "--json",
                     "--cache", str(tmp_path / "cache"))
    assert json.loads(again.stdout)["tpir"] == report["tpir"]


@pytest.mark.parametrize("header, row, message", [
    ("path\tidentity\n", "a.jpg\tann\n", "expected a header with columns path, identity, role"),
    ("path\tidentity\trole\n", "a.jpg\tann\tprobe\n", "line 2: role 'probe' is not one of enrol, genuine, stranger"),
    ("path\tidentity\trole\n", "a.jpg\tann\tenrol\n", "identify needs enrol rows and probe rows"),
])
def test_a_bad_split_is_a_one_line_usage_error(tmp_path, header, row, message):
    split = tmp_path / "split.tsv"
    split.write_text(header + row)
    result = run_tool("tools/evaluate.py", "identify", str(split), "--no-cache")
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_make_splits_writes_every_size_outside_the_repository(shared_data, tmp_path):
    result = run_tool("tools/make_splits.py", "--data", str(shared_data), "--out", str(tmp_path), "--sizes", "160", "400")
    assert result.returncode == 0, result.stderr
    for name in ("openset_n160_e1", "openset_n160_e3", "openset_n400_e1", "openset_n400_e3"):
        lines = (tmp_path / f"{name}.tsv").read_text().splitlines()
        roles = [line.split("\t")[2] for line in lines[1:]]
        people = {line.split("\t")[1] for line in lines[1:] if line.split("\t")[2] == "enrol"}
        assert lines[0] == "path\tidentity\trole\ttrack" and len(people) == int(name.split("_n")[1].split("_")[0])
        # The held-out CelebA people are the strangers (UTKFace's only with --utk-strangers: label noise).
        assert roles.count("genuine") == 4319 and roles.count("stranger") == 1200
        # The three-photo splits enrol each CelebA person three times, the distractors once.
        assert roles.count("enrol") == len(people) + (320 if name.endswith("e3") else 0)
        # UTKFace crops are named by their padded copies, outside the repository.
        assert all(line.split("\t")[0].startswith(str(tmp_path)) for line in lines[1:] if "utkface" in line)
        stranger_ids = {line.split("\t")[1] for line in lines[1:] if line.split("\t")[2] == "stranger"}
        assert not stranger_ids & people, "a stranger is never enrolled"


def test_make_splits_refuses_to_write_into_the_repository(tmp_path):
    result = run_tool("tools/make_splits.py", "--out", str(REPO / "splits"))
    assert result.returncode == 2 and "inside the repository" in result.stderr
    assert not (REPO / "splits").exists()


def test_tpir_at_any_threshold_counts_the_genuine_votes_strictly_below_it():
    curve = ev.open_set_curve(np.array([0.2, 0.4, 0.6]), np.array([True, True, True]),
                              np.array([0.5]), np.array([True]))
    assert [ev.tpir_at_threshold(curve, t) for t in (0.1, 0.2, 0.3, 0.4, 0.45, 0.9)] == \
        pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
