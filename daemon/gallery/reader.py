"""The daemon's view of the gallery: a read connection and the current index, swapped whole.

Intended use: a small background thread polls changed() a few times a second
and calls refresh(); the recognition thread calls search() and never waits,
because refresh() builds the new index completely before replacing the single
reference that search() reads.

The index is built from the templates of the reader's model card only: people
enrolled with other models (see lacking()) are not found.

Who may pass is not decided here. The index holds every enrolled person,
active or not, inside their validity window or not, and search() returns
whoever matches; the access policy then denies an inactive or expired person
and records that reason. Leaving them out of the index would turn "Alice's
access has expired" into "unknown face" in the event log.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import faiss
import numpy as np

from daemon.panel.credentials import Credential
from engines.model_card import ModelCard

from .index import GalleryIndex, Match, load_or_build
from .records import Person, SyncedBundle
from .store import Gallery

log = logging.getLogger("facegate.gallery")


class GalleryReader:
    def __init__(self, gallery: Gallery, card: ModelCard, kind: str = "flat", search_threads: int | None = 1) -> None:
        """search_threads sets FAISS's process-wide OpenMP thread count (None leaves it alone).

        One thread is the measured choice (tools/bench_gallery.py, 2-core x86): one
        probe searched with two OpenMP threads took 8-30 ms instead of 0.1-4 ms, the
        hand-off between threads costing far more than the split search saves.
        """
        if search_threads is not None:
            faiss.omp_set_num_threads(search_threads)
        self._gallery = gallery
        self._card = card
        self._kind = kind
        self._lock = threading.Lock()  # guards the connection, never the index
        with self._lock:
            self._seen_data_version = gallery.data_version()
            self._index = load_or_build(gallery, card, kind)
            self._seen_generation = self._index.generation

    @classmethod
    def open(cls, path: str | Path, card: ModelCard, kind: str = "flat",
             search_threads: int | None = 1) -> GalleryReader:
        gallery = Gallery.open(path)
        try:
            return cls(gallery, card, kind, search_threads)
        except BaseException:
            gallery.close()
            raise

    @property
    def index(self) -> GalleryIndex:
        return self._index

    def changed(self) -> bool:
        """Whether the database has moved past the index; costs one PRAGMA when nothing was written."""
        with self._lock:
            version = self._gallery.data_version()
            if version != self._seen_data_version:
                self._seen_data_version = version
                self._seen_generation = self._gallery.generation()
            return self._seen_generation != self._index.generation

    def refresh(self) -> None:
        """Rebuild (or load) the index for the current database and swap it in; on error the old one stays."""
        with self._lock:
            index = load_or_build(self._gallery, self._card, self._kind)
            # A commit after the snapshot also moves data_version past the one seen, so changed() still sees it.
            self._seen_generation = index.generation
            self._index = index  # one reference: searches in flight finish on the index they started with
        log.info("gallery index at generation %d: %d templates of %d people (%s, %s)",
                 index.generation, index.count, index.people, index.kind, index.metric)

    def search(self, probes: np.ndarray) -> list[Match | None]:
        """See GalleryIndex.search; thread-safe and lock-free."""
        return self._index.search(probes)

    @property
    def card(self) -> ModelCard:
        """The embedding model searched: the index holds that model's templates only."""
        return self._card

    def lacking(self) -> list[Person]:
        """People without a template of this reader's model: searches cannot find them (galleries enrolled
        before templates were stored per installed model; enroll_local.py check and reembed)."""
        with self._lock:
            return self._gallery.people_lacking(self._card.id)

    def synced_bundle(self) -> SyncedBundle | None:
        """The gallery bundle version the database holds, when it was synced from the front desk."""
        with self._lock:
            return self._gallery.synced_bundle()

    def person(self, person_id: int) -> Person:
        """The person's current record (active flag, validity) for the access policy."""
        with self._lock:
            return self._gallery.get_person(person_id)

    def credential(self, person_id: int) -> Credential | None:
        """The person's card and PIN hash for the building's panel (daemon/panel), if enrolled."""
        with self._lock:
            return self._gallery.credentials().get(person_id)

    def close(self) -> None:
        with self._lock:
            self._gallery.close()

    def __enter__(self) -> GalleryReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
