"""The MANIFEST of committed model files: `sha256sum` format, one file per line.

Keeping the format identical to sha256sum's lets an operator verify a device with
`sha256sum -c MANIFEST` and no Python at all.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"


class ManifestError(ValueError):
    """A model file is missing, unlisted or does not match its recorded sha256."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(models_dir: Path = MODELS_DIR) -> dict[str, str]:
    """File name -> sha256 as recorded in models_dir/MANIFEST."""
    entries = {}
    for number, line in enumerate((models_dir / "MANIFEST").read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ManifestError(f"MANIFEST line {number} is not '<sha256>  <file>': {line!r}")
        entries[name] = digest
    return entries


def write_manifest(models_dir: Path, names: list[str]) -> None:
    lines = [f"{sha256_of(models_dir / name)}  {name}\n" for name in sorted(names)]
    (models_dir / "MANIFEST").write_text("".join(lines))


def verify(models_dir: Path = MODELS_DIR) -> list[str]:
    """Check every listed file and that no .onnx file is unlisted; returns the names checked."""
    entries = read_manifest(models_dir)
    problems = [f"{p.name} is not listed in MANIFEST" for p in sorted(models_dir.glob("*.onnx"))
                if p.name not in entries]
    for name, digest in entries.items():
        path = models_dir / name
        if not path.exists():
            problems.append(f"{name} is listed in MANIFEST but missing")
        elif sha256_of(path) != digest:
            problems.append(f"{name}: sha256 {sha256_of(path)} does not match MANIFEST {digest}")
    if problems:
        raise ManifestError("; ".join(problems))
    return sorted(entries)
