"""Typed errors of the gallery; each message names the file or the person concerned."""
from __future__ import annotations


class GalleryError(Exception):
    """Base class for every error raised by daemon.gallery."""


class PersonNotFound(GalleryError, LookupError):
    """No person with the given id or name."""


class AmbiguousName(GalleryError, LookupError):
    """Several people share the name asked for; ask by id or external id instead."""


class DuplicateExternalId(GalleryError, ValueError):
    """Another person already has this external id."""


class SchemaTooNew(GalleryError):
    """The database was written by a newer facegate; this one refuses to touch it."""


class CorruptGallery(GalleryError):
    """The database file is not a SQLite database or is damaged."""
