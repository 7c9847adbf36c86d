"""The gallery: people and face templates in SQLite (source of truth) and a FAISS index derived from it.

A person holds templates of every embedding model installed when they were enrolled (each
template names its model card's id); each model has its own index, built from that
model's templates only, so the daemon searches with whichever card it is configured with.

    gallery = Gallery.open("/var/lib/facegate/gallery.db")
    person_id = gallery.add_person("Alice", [Template(embedding, card.id, quality, "camera")])
    reader = GalleryReader(gallery_for_daemon, card)   # in the daemon
    matches = reader.search(probes)                    # Match(person_id, name, distance, runner_up_distance)
"""
from .errors import (AmbiguousName, CorruptGallery, DuplicateExternalId, GalleryError, PersonNotFound,
                     SchemaTooNew)
from .index import KINDS, GalleryIndex, Match, load_or_build
from .names import MAX_NAME_LENGTH, checked_name, escaped
from .reader import GalleryReader
from .records import ModelTemplates, NewPerson, Person, Snapshot, StoredTemplate, SyncedBundle, Template, listed
from .schema import SCHEMA_VERSION
from .store import Gallery, check_gallery_file

__all__ = [
    "AmbiguousName", "CorruptGallery", "DuplicateExternalId", "Gallery", "GalleryError", "GalleryIndex",
    "GalleryReader", "KINDS", "MAX_NAME_LENGTH", "Match", "ModelTemplates", "NewPerson", "Person", "PersonNotFound",
    "SCHEMA_VERSION", "SchemaTooNew", "Snapshot", "StoredTemplate", "SyncedBundle", "Template", "check_gallery_file",
    "checked_name", "escaped", "listed", "load_or_build",
]
