"""Signed gallery bundles from the front desk, verified and mirrored by a door all or nothing.

The front desk publishes its whole gallery, signed, to a retained topic (tools/enroll_local.py
publish); the door's link hands every payload it receives to apply_signed_bundle. A retained
message reaches a door whenever it (re)connects, so a door that was off for a week catches up
with the latest bundle, and one that already runs it hears the same version again: that is an
outcome (stale), not an error.

The door mirrors the front desk: everyone the bundle lacks is erased, in the same transaction
that enrols the bundle's people (Gallery.replace_everyone). The running daemon's GalleryReader
sees the generation change and swaps its index whole, as after any enrolment.

No MQTT here: the link owns the connection, this module only decides about bytes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.bundles import Bundle, BundleError, open_signed_bundle, refuse_unusable_templates
from daemon.gallery import Gallery, SyncedBundle
from engines.model_card import ModelCard


@dataclass(frozen=True)
class SyncOutcome:
    """What a door did with a bundle it was sent, for its log and its events."""

    applied: bool
    version: int
    sender: str
    people: int
    templates: int
    reason: str
    stale: bool = False  # the version this door already runs: nothing to do


def apply_signed_bundle(payload: bytes, public_key: Ed25519PublicKey, gallery_path: Path, card: ModelCard,
                        installed: Sequence[ModelCard]) -> SyncOutcome:
    """Verify a signed bundle and make the gallery at gallery_path hold exactly its people.

    card is the door's embedder.card, installed its other embedder cards (their templates must
    have their card's dimension). Refusals raise BundleError saying why, database trouble
    GalleryError; either way the gallery is unchanged.
    """
    bundle = open_signed_bundle(payload, public_key, f"gallery bundle ({len(payload)} bytes)")
    label = f"gallery bundle version {bundle.version} from {bundle.sender!r}"
    sha256 = hashlib.sha256(payload).hexdigest()
    with Gallery.open(gallery_path) as gallery:
        running = gallery.synced_bundle()
        if running is not None and bundle.version <= running.version:
            return _stale(bundle, label, sha256, running)
        cards = [card] + [c for c in installed if c.id != card.id]
        refuse_unusable_templates(bundle, bundle.people, cards, gallery, remedy=(
            f"At the front desk: install the card {card.id!r}, run `enroll_local.py reembed` (or enrol them again), "
            "then publish again; this door keeps its gallery"))
        applied_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        gallery.replace_everyone(bundle.people, SyncedBundle(bundle.version, bundle.sender, sha256, applied_at))
    previous = f"version {running.version}" if running is not None else "an unsynced gallery"
    return _outcome(bundle, True, f"applied, replacing {previous}")


def _stale(bundle: Bundle, label: str, sha256: str, running: SyncedBundle) -> SyncOutcome:
    """The version this door runs, heard again (a retained message on every reconnection); an older one is refused."""
    if bundle.version < running.version:
        raise BundleError(f"{label} is older than version {running.version} this door runs (from "
                          f"{running.sender!r}, applied {running.applied_at}): refused; a restored front desk "
                          f"publishes with --version above {running.version}; this door keeps its gallery")
    reason = f"already running version {running.version}"
    if sha256 != running.sha256:  # e.g. published twice from an unchanged gallery: only created_at differs
        reason += " (this copy differs from the one applied; to replace it, publish with a higher --version)"
    return _outcome(bundle, False, reason, stale=True)


def _outcome(bundle: Bundle, applied: bool, reason: str, stale: bool = False) -> SyncOutcome:
    return SyncOutcome(applied, bundle.version, bundle.sender, len(bundle.people), bundle.template_count, reason,
                       stale)
