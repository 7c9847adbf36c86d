"""The door's threshold follows its gallery's size (decision.max_fpir): the demo clip's hiker is still granted
in a gallery of a few hundred people, the threshold is recomputed and logged when the gallery grows, unknown
faces are recorded with the closest enrolled person, and check-config prints the threshold in force."""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import yaml
from gpiozero.pins.mock import MockFactory

from daemon.decision import threshold_in_force
from daemon.demo import DEMO_CLIP, ENROL_FRAME, enrol_from_clip
from daemon.events import EventReader
from daemon.gallery import Gallery, Template
from tests.conftest import REPO
from tests.test_service import make_config, run_service, short_clip  # noqa: F401 (short_clip is a fixture)

DECOYS = 300


def add_decoys(config, count: int) -> None:
    """People whose one template is a random direction: they match no face, but count toward the gallery's size."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((count, config.embedder.embedding_dim)).astype(np.float32)
    with Gallery.open(config.gallery.path) as gallery:
        for number, vector in enumerate(vectors):
            gallery.add_person(f"decoy {number}", [Template(vector / np.linalg.norm(vector), config.embedder.id)])


def test_the_hiker_is_granted_in_a_gallery_of_hundreds_at_its_stricter_threshold(tmp_path, short_clip):  # noqa: F811
    config = make_config(tmp_path, camera={"path": str(short_clip)}, liveness={"enabled": False})
    assert config.decision.threshold is None and config.decision.max_fpir == 1e-3, "max_fpir is the default"
    enrol_from_clip(config, DEMO_CLIP, ENROL_FRAME, "Lead Hiker")
    alone = threshold_in_force(config.decision, config.embedder, 1).value
    add_decoys(config, DECOYS)
    service, watch, code = run_service(config, MockFactory())
    assert code == 0
    assert service.threshold.comparisons == DECOYS + 1 and service.threshold.value < alone
    [granted] = [o for o in service.stats.decided if o.kind == "grant"]
    assert granted.name == "Lead Hiker" and granted.distance < service.threshold.value
    assert watch.high_at, "the relay never went high for the enrolled hiker"
    assert service.metrics.registry.get_sample_value("facegate_decision_threshold") == service.threshold.value
    assert service.metrics.registry.get_sample_value("facegate_gallery_templates") == DECOYS + 1


def test_a_growing_gallery_tightens_the_threshold_and_an_unknown_face_names_its_closest_person(
        tmp_path, short_clip, caplog):  # noqa: F811
    config = make_config(tmp_path, camera={"path": str(short_clip)}, liveness={"enabled": False},
                         events={"unknown_log_interval": 0})
    add_decoys(config, 1)
    grown = []

    def grow(frame, seen, unlocked):  # at the first frame, the front desk enrols many more people
        if not grown:
            grown.append(frame.video_time)
            with Gallery.open(config.gallery.path) as gallery:
                rng = np.random.default_rng(5)
                for number in range(DECOYS):
                    vector = rng.standard_normal(config.embedder.embedding_dim).astype(np.float32)
                    gallery.add_person(f"new {number}", [Template(vector / np.linalg.norm(vector), config.embedder.id)])

    caplog.set_level(logging.INFO, logger="facegate")
    from daemon.service import DoorService

    service = DoorService(config, pin_factory=MockFactory(), on_frame=grow)
    first = service.threshold.value
    assert service.run() == 0
    assert service.threshold.comparisons == DECOYS + 1 and service.threshold.value < first
    logged = [r.getMessage() for r in caplog.records if "match threshold in force" in r.getMessage()]
    assert len(logged) == 2 and f"{first:.4f}" in logged[0] and f"{service.threshold.value:.4f}" in logged[1]
    # Nobody real is enrolled: the hiker is an unknown face, recorded with the decoy her frames came closest to.
    unknown = EventReader(config.events.path).query(kinds=["unknown_face"])
    assert unknown, "the hiker's track was never reported unknown"
    assert unknown[0].person_id is None and unknown[0].score is not None
    assert "closest " in unknown[0].reason and f"at distance {unknown[0].score:.4f}" in unknown[0].reason
    assert "threshold in force 0." in unknown[0].reason


def test_check_config_prints_the_threshold_in_force_with_the_tpir_to_expect(tmp_path):
    raw = yaml.safe_load((REPO / "daemon" / "config.example.yaml").read_text())
    raw["gallery"]["path"] = str(tmp_path / "gallery.db")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "daemon", "check-config", str(config_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    values = [float(line.split(": ")[1].split(",")[0]) for line in lines if line.startswith("threshold for ")]
    assert len(values) == 3 and values[0] > values[1] > values[2], result.stdout  # 100, 1,000, 10,000 people
    assert "FPIR 1.0e-03 per probe" in lines[1] and "TPIR about " in lines[1]
    assert "decision.max_fpir 0.001 and the impostor tail in" in result.stdout
