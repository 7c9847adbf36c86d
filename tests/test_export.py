"""Rerunning the converter reproduces the committed models byte for byte."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from engines import manifest
from tests.conftest import MODELS, REPO

CONVERTER_MODULES = ("torch", "onnx", "dlib", "facenet_pytorch", "face_recognition_models", "skimage")
missing = [m for m in CONVERTER_MODULES if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(missing), reason=f"the export extra is not installed (missing {', '.join(missing)}): "
                    "pip install -e '.[export]' && pip install --no-deps facenet-pytorch==2.6.0")
def test_conversion_reproduces_the_committed_hashes(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "export_models.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert manifest.read_manifest(tmp_path) == manifest.read_manifest(MODELS)
    for line in result.stdout.splitlines()[-4:]:
        error = float(line.split()[2])
        assert error < 1e-4, line
