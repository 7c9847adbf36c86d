"""What the gallery stores and hands out: people, face templates and index snapshots."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SOURCES = ("camera", "photo")


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields have no single truth value
class Template:
    """One face embedding to enrol, with how it was captured.

    quality holds the capture figures (detection score, inter-eye distance,
    sharpness, yaw/pitch estimates); photo_jpeg is kept only when the operator
    asks for it (the enrol tool's --keep-photo).
    """

    embedding: np.ndarray
    model_id: str
    quality: dict[str, Any] = field(default_factory=dict)
    source: str = "camera"
    photo_jpeg: bytes | None = None


@dataclass(frozen=True, eq=False)
class StoredTemplate:
    id: int
    person_id: int
    embedding: np.ndarray  # float32, shape (dim,)
    model_id: str
    quality: dict[str, Any]
    source: str
    photo_jpeg: bytes | None
    created_at: str


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    external_id: str | None
    note: str | None
    active: bool
    valid_from: str | None  # ISO date or datetime; the access policy interprets it
    valid_until: str | None
    created_at: str
    updated_at: str
    template_count: int


@dataclass(frozen=True, eq=False)
class NewPerson:
    """A person to enrol whole, with their details and templates (Gallery.replace_everyone)."""

    name: str
    external_id: str | None
    note: str | None
    active: bool
    valid_from: str | None
    valid_until: str | None
    templates: list[Template]


@dataclass(frozen=True)
class SyncedBundle:
    """The gallery bundle a door mirrors (daemon/fleet/sync.py): which one, and when it was applied."""

    version: int
    sender: str
    sha256: str  # of the signed payload as received
    applied_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class ModelTemplates:
    """The templates of one embedding model in a gallery (Gallery.models)."""

    model_id: str
    dim: int
    templates: int
    people: int  # people with at least one template of this model


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The templates of one embedding model as of one generation, read in one transaction.

    vectors is None when only the id mapping was asked for (loading a saved index).
    """

    generation: int
    model_id: str
    template_ids: np.ndarray  # int64, ascending
    person_ids: np.ndarray  # int64, person of each template id
    names: dict[int, str]
    vectors: np.ndarray | None  # float32, (count, dim)


def listed(people: list[Person], most: int = 10) -> str:
    """People for a message: "#1 'Alice', #4 'Bob' and 3 more"."""
    named = ", ".join(f"#{person.id} {person.name!r}" for person in people[:most])
    return named + (f" and {len(people) - most} more" if len(people) > most else "")
