"""The gallery: people and face templates in SQLite (source of truth) and a FAISS index derived from it.

    gallery = Gallery.open("/var/lib/facegate/gallery.db")
    person_id = gallery.add_person("Alice", [Template(embedding, card.id, quality, "camera")])
    reader = GalleryReader(gallery_for_daemon, card)   # in the daemon
    matches = reader.search(probes)                    # Match(person_id, name, distance, runner_up_distance)
"""
from .errors import (AmbiguousName, CorruptGallery, DuplicateExternalId, GalleryError, PersonNotFound,
                     SchemaTooNew)
from .index import KINDS, GalleryIndex, Match, load_or_build
from .reader import GalleryReader
from .records import Person, Snapshot, StoredTemplate, Template
from .schema import SCHEMA_VERSION
from .store import Gallery

__all__ = [
    "AmbiguousName", "CorruptGallery", "DuplicateExternalId", "Gallery", "GalleryError", "GalleryIndex",
    "GalleryReader", "KINDS", "Match", "Person", "PersonNotFound", "SCHEMA_VERSION", "SchemaTooNew",
    "Snapshot", "StoredTemplate", "Template", "load_or_build",
]
