"""The FAISS index over the templates of one embedding model, derived from the gallery database.

The database is the source of truth. A saved index (index file plus a JSON
sidecar recording generation, model, metric, kind, count and checksum) is
used only when it matches the database exactly; a missing, stale or
unreadable one is rebuilt with one log line, never an exception.

FAISS ids are template ids. A person may have several templates, so a search
asks for enough neighbours to be sure of reaching a second person: the best
person is the owner of the nearest template, and the runner-up distance is the
nearest template of anyone else.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from engines.atomic_file import write_atomic
from engines.model_card import ModelCard

from .errors import GalleryError
from .files import ensure_private_dir
from .records import Snapshot
from .store import Gallery

log = logging.getLogger("facegate.gallery")

KINDS = ("flat", "hnsw")  # flat: exact; hnsw: approximate, for very large galleries
SIDECAR_FORMAT = 1
# HNSW settings from tools/bench_gallery.py on random 128-d unit vectors (a worst case: real
# embeddings cluster): at 1M templates efSearch 64/128/256/512 gave recall@1 0.67/0.83/0.94/0.99
# at 0.6/1.1/2.2/4.7 ms against 36 ms exact. efConstruction 40 keeps a 1M build near 6 minutes
# on 2 cores; every gallery change rebuilds, so build time is refresh latency.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 256


@dataclass(frozen=True)
class Match:
    """The nearest person to a probe, and how far the nearest other person is (inf if none)."""

    person_id: int
    name: str
    distance: float  # euclidean: L2 distance; cosine: 1 - cosine similarity
    runner_up_distance: float


class _Unusable(Exception):
    """Why a saved index cannot be used; logged, then the index is rebuilt."""

    def __init__(self, reason: str, level: int = logging.INFO) -> None:
        super().__init__(reason)
        self.level = level


class GalleryIndex:
    """An immutable search structure for one snapshot: safe to search from several threads."""

    def __init__(self, index: faiss.Index, snapshot: Snapshot, metric: str, kind: str, dim: int) -> None:
        self._index = index
        self._template_ids = snapshot.template_ids  # ascending, so searchsorted maps ids to rows
        self._person_ids = snapshot.person_ids
        self._names = snapshot.names
        self.generation = snapshot.generation
        self.model_id = snapshot.model_id
        self.metric = metric
        self.kind = kind
        self.dim = dim
        self.count = len(snapshot.template_ids)
        self._k = _neighbours_needed(snapshot.person_ids)
        if kind == "hnsw":  # set here, not only at build: a saved index carries the efSearch it was built with
            faiss.downcast_index(index.index).hnsw.efSearch = HNSW_EF_SEARCH

    @classmethod
    def build(cls, snapshot: Snapshot, card: ModelCard, kind: str = "flat") -> GalleryIndex:
        """Index the snapshot's vectors for the card's metric."""
        metric, dim = _checked_card(card, kind)
        if snapshot.vectors is None:
            raise ValueError("building an index needs a snapshot with vectors")
        if snapshot.vectors.size and snapshot.vectors.shape[1] != dim:
            raise GalleryError(f"templates of model {card.id!r} are {snapshot.vectors.shape[1]}-d but "
                               f"the model card {card.path} says {dim}-d")
        index = _new_faiss_index(metric, kind, dim)
        if snapshot.vectors.size:
            index.add_with_ids(_prepared(snapshot.vectors, metric), snapshot.template_ids)
        return cls(index, snapshot, metric, kind, dim)

    @classmethod
    def load(cls, directory: Path, card: ModelCard, kind: str, snapshot: Snapshot) -> GalleryIndex:
        """The saved index, if it matches the snapshot (ids only); raises _Unusable otherwise."""
        metric, dim = _checked_card(card, kind)
        index_path, sidecar_path = index_paths(directory, card.id, kind)
        expected = {"format": SIDECAR_FORMAT, "generation": snapshot.generation, "model_id": card.id,
                    "metric": metric, "kind": kind, "dim": dim, "count": len(snapshot.template_ids)}
        sidecar = _read_sidecar(sidecar_path)
        differences = [f"{key} {sidecar.get(key)!r} != {value!r}" for key, value in expected.items()
                       if sidecar.get(key) != value]
        if differences:
            raise _Unusable("is stale (" + ", ".join(differences) + ")")
        index = _read_index(index_path, sidecar)
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim:
            raise _Unusable(f"holds a {type(index).__name__} of dimension {index.d}", logging.WARNING)
        if not np.array_equal(np.sort(faiss.vector_to_array(index.id_map)), snapshot.template_ids):
            raise _Unusable("holds other template ids than the database", logging.WARNING)
        return cls(index, snapshot, metric, kind, dim)

    def save(self, directory: Path) -> None:
        """Write index then sidecar atomically; the sidecar's checksum ties the pair together."""
        ensure_private_dir(directory)
        index_path, sidecar_path = index_paths(directory, self.model_id, self.kind)
        data = faiss.serialize_index(self._index)
        write_atomic(index_path, memoryview(data))
        sidecar = {"format": SIDECAR_FORMAT, "generation": self.generation, "model_id": self.model_id,
                   "metric": self.metric, "kind": self.kind, "dim": self.dim, "count": self.count,
                   "bytes": int(data.size), "sha256": hashlib.sha256(memoryview(data)).hexdigest()}
        write_atomic(sidecar_path, json.dumps(sidecar, indent=1).encode())

    @property
    def people(self) -> int:
        """How many people have at least one template in this index."""
        return len(np.unique(self._person_ids))

    def search(self, probes: np.ndarray) -> list[Match | None]:
        """The best match for each probe row (N x dim); None for an empty gallery or a non-finite probe."""
        probes = self._checked_probes(probes)
        finite = np.isfinite(probes).all(axis=1)
        if self.count == 0 or not finite.any():
            return [None] * len(probes)
        raw, labels = self._index.search(_prepared(np.where(finite[:, None], probes, 0), self.metric), self._k)
        return self._matches(self._distances(raw), labels, finite)

    def _checked_probes(self, probes: np.ndarray) -> np.ndarray:
        probes = np.asarray(probes, dtype=np.float32)
        if probes.ndim != 2 or probes.shape[1] != self.dim:
            raise ValueError(f"probes must be an N x {self.dim} array, got shape {probes.shape} "
                             "(one probe is probes[None, :])")
        return probes

    def _distances(self, raw: np.ndarray) -> np.ndarray:
        if self.metric == "euclidean":
            return np.sqrt(np.maximum(raw, 0))  # FAISS returns squared L2
        return np.clip(1 - raw, 0, 2)  # inner product of unit vectors is the cosine

    def _matches(self, distances: np.ndarray, labels: np.ndarray, finite: np.ndarray) -> list[Match | None]:
        found = labels >= 0  # approximate search may return fewer than k (label -1)
        rows = np.searchsorted(self._template_ids, np.maximum(labels, 0)).clip(max=self.count - 1)
        persons = np.where(found, self._person_ids[rows], -1)
        others = found & (persons != persons[:, :1])
        runner_up = np.where(others.any(axis=1),
                             distances[np.arange(len(labels)), others.argmax(axis=1)], np.inf)
        return [Match(int(persons[i, 0]), self._names.get(int(persons[i, 0]), ""), float(distances[i, 0]),
                      float(runner_up[i])) if finite[i] and found[i, 0] else None
                for i in range(len(labels))]


def load_or_build(gallery: Gallery, card: ModelCard, kind: str = "flat") -> GalleryIndex:
    """The saved index when it is current, else one rebuilt from the database (and saved)."""
    directory = gallery.index_dir
    try:
        return GalleryIndex.load(directory, card, kind, gallery.snapshot(card.id, with_vectors=False))
    except _Unusable as problem:
        log.log(problem.level, "gallery index %s %s; rebuilding it from %s",
                index_paths(directory, card.id, kind)[0], problem, gallery.path)
    index = GalleryIndex.build(gallery.snapshot(card.id), card, kind)
    try:
        index.save(directory)
    except OSError as error:  # a full or read-only disk costs a rebuild at the next start, nothing more
        log.warning("cannot save the gallery index in %s: %s; searching the in-memory index", directory, error)
    return index


def index_paths(directory: Path, model_id: str, kind: str) -> tuple[Path, Path]:
    """Index file and sidecar for one model and kind, named so several models can coexist."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    return directory / f"{stem}.{kind}.faiss", directory / f"{stem}.{kind}.json"


def _checked_card(card: ModelCard, kind: str) -> tuple[str, int]:
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {list(KINDS)}")
    if card.role != "embedder" or card.metric is None or not card.embedding_dim:
        raise ValueError(f"model card {card.path} is not an embedder card with a metric and a dimension")
    return card.metric, card.embedding_dim


def _new_faiss_index(metric: str, kind: str, dim: int) -> faiss.Index:
    faiss_metric = faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        inner = faiss.IndexFlatL2(dim) if metric == "euclidean" else faiss.IndexFlatIP(dim)
    else:
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss_metric)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return faiss.IndexIDMap2(inner)


def _prepared(vectors: np.ndarray, metric: str) -> np.ndarray:
    """A C-contiguous float32 copy, L2-normalised for cosine so inner product is the cosine."""
    vectors = np.array(vectors, dtype=np.float32, order="C")
    if metric == "cosine":
        faiss.normalize_L2(vectors)
    return vectors


def _neighbours_needed(person_ids: np.ndarray) -> int:
    """One more than the most templates any person has: then a second person is always among them."""
    if len(person_ids) == 0:
        return 1
    most = np.unique(person_ids, return_counts=True)[1].max()
    return int(min(len(person_ids), most + 1))


def _read_sidecar(path: Path) -> dict:
    try:
        sidecar = json.loads(path.read_text())
    except FileNotFoundError:
        raise _Unusable("is missing") from None
    except (OSError, ValueError) as error:
        raise _Unusable(f"has an unreadable sidecar ({error})", logging.WARNING) from None
    if not isinstance(sidecar, dict):
        raise _Unusable("has a sidecar that is not a JSON object", logging.WARNING)
    return sidecar


def _read_index(path: Path, sidecar: dict) -> faiss.Index:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise _Unusable("is missing (its sidecar is there)") from None
    except OSError as error:
        raise _Unusable(f"is unreadable ({error})", logging.WARNING) from None
    if data.size != sidecar.get("bytes") or hashlib.sha256(memoryview(data)).hexdigest() != sidecar.get("sha256"):
        raise _Unusable("does not match its sidecar's size and checksum", logging.WARNING)
    try:
        return faiss.deserialize_index(data)
    except RuntimeError as error:
        raise _Unusable(f"cannot be read by FAISS ({error})", logging.WARNING) from None
