"""Gallery bundles: every person and template in one zip, to export, import, sign and mirror.

A bundle is a zip archive:
  manifest.json   format and versions, the embedding model, the people and their templates
                  (embeddings as base64 of little-endian float32); bundle_version and sender
                  when the front desk publishes it to the fleet
  photos/N.jpg    the kept face photos, named from the templates that hold them
  SHA256SUMS      sha256sum lines for every other member: `sha256sum -c SHA256SUMS` checks an unpacked bundle

Exported to a file (export_bundle) it travels on a USB stick and is imported person by person
(import_bundle: refuse, merge or replace on collisions). Published to the fleet it is signed with
the front desk's Ed25519 key (sign_bundle), and each door verifies it (open_signed_bundle) and
mirrors it whole (daemon/fleet/sync.py). A signed bundle is
  b"FGSIGNED1\\n" + the 64-byte Ed25519 signature of (that magic + the zip) + the zip,
so the signature covers the magic too: a payload cannot be re-labelled as another format.

    zip_bytes = bundle_bytes(gallery, card.id, version=gallery.generation(), sender="front-desk")
    payload = sign_bundle(zip_bytes, load_private_key(key_path))
    bundle = open_signed_bundle(payload, load_public_key(public_path), "mqtt facegate/gallery")
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.enrolment import Enroller, EnrolmentError, PhotosRefused, embed_again, refuse_duplicate
from daemon.gallery import SCHEMA_VERSION, Gallery, NewPerson, Person, PersonNotFound, Template, checked_name
from engines.atomic_file import atomic_file, fsync_dir
from engines.model_card import ModelCard


class BundleError(EnrolmentError):
    """A bundle that cannot be written, read, verified or imported as it is; nothing was changed."""


# --- the format ---------------------------------------------------------------------------------------

BUNDLE_FORMAT = "facegate-gallery-bundle"
FORMAT_VERSION = 1  # bundle_version and sender are optional fields: readers of format 1 skip them
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
BLOB_DTYPE = np.dtype("<f4")
SOURCES = ("camera", "photo")

BundlePerson = NewPerson  # a bundle's person is a person to enrol, details and templates, as the gallery takes them


@dataclass(frozen=True)
class Bundle:
    path: Path | str  # where it came from, for messages: a file, or a label such as the MQTT topic
    format_version: int
    schema_version: int
    created_at: str
    embedding_model: str
    people: list[BundlePerson]
    version: int | None = None  # the front desk's bundle version; None in a plain export
    sender: str | None = None  # who published it

    @property
    def template_count(self) -> int:
        return sum(len(person.templates) for person in self.people)


# --- export -------------------------------------------------------------------------------------------


def export_bundle(gallery: Gallery, path: Path, model_id: str, version: int | None = None,
                  sender: str | None = None) -> Bundle:
    """Write every person and template to a new owner-only bundle at path (an existing file is refused)."""
    path = Path(path)
    _check_stamp(version, sender)
    if path.exists():
        raise BundleError(f"{path} exists: remove it or choose another name; a bundle is never overwritten")
    if not path.parent.is_dir():
        raise BundleError(f"{path.parent} is not a folder: create it first, or choose another place")
    with atomic_file(path) as file:  # owner-only; the rename is fsynced before the stick is pulled
        return _write_bundle(file, gallery, path, model_id, version, sender)


def bundle_bytes(gallery: Gallery, model_id: str, version: int, sender: str) -> bytes:
    """The same bundle as export_bundle writes, in memory, stamped with its version and sender (both required)."""
    if version is None or sender is None:
        raise BundleError(f"a bundle for the fleet needs a version and a sender, got {version!r} and {sender!r}")
    _check_stamp(version, sender)
    buffer = io.BytesIO()
    _write_bundle(buffer, gallery, "bundle", model_id, version, sender)
    return buffer.getvalue()


def _check_stamp(version: int | None, sender: str | None) -> None:
    """A bundle's version and sender: each None (a plain export) or usable by the doors."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise BundleError(f"bundle version {version!r} is not allowed: expected a whole number from 1")
    if sender is not None and (not isinstance(sender, str) or not sender.strip()):
        raise BundleError(f"bundle sender {sender!r} is not allowed: expected a non-empty name")


def _write_bundle(file: IO[bytes], gallery: Gallery, path: Path | str, model_id: str, version: int | None,
                  sender: str | None) -> Bundle:
    sums: dict[str, str] = {}
    people_json: list[dict[str, Any]] = []
    people: list[BundlePerson] = []
    with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
        def put(name: str, data: bytes) -> None:
            archive.writestr(name, data)
            sums[name] = hashlib.sha256(data).hexdigest()

        for person in sorted(gallery.list_people(), key=lambda p: p.id):  # ids keep their order in a fresh gallery
            try:
                stored = gallery.templates(person.id)
            except PersonNotFound:  # removed while we were exporting
                continue
            templates = [Template(t.embedding, t.model_id, t.quality, t.source, t.photo_jpeg) for t in stored]
            entries = []
            for template, row in zip(templates, stored):
                photo = f"photos/{row.id}.jpg" if template.photo_jpeg else None
                if photo:
                    put(photo, template.photo_jpeg)
                entries.append(_template_json(template, photo, row.created_at))
            people_json.append(_person_json(person, entries))
            people.append(BundlePerson(person.name, person.external_id, person.note, person.active,
                                       person.valid_from, person.valid_until, templates))
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "schema_version": SCHEMA_VERSION,
                    "created_at": created, "embedding_model": model_id, "bundle_version": version,
                    "sender": sender, "people": people_json}
        put(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
        archive.writestr(CHECKSUMS, "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))
    return Bundle(path, FORMAT_VERSION, SCHEMA_VERSION, created, model_id, people, version, sender)


def _person_json(person: Person, templates: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": person.name, "external_id": person.external_id, "note": person.note, "active": person.active,
            "valid_from": person.valid_from, "valid_until": person.valid_until, "created_at": person.created_at,
            "templates": templates}


def _template_json(template: Template, photo: str | None, created_at: str) -> dict[str, Any]:
    blob = np.asarray(template.embedding, dtype=BLOB_DTYPE).tobytes()
    return {"model_id": template.model_id, "embedding": base64.b64encode(blob).decode(), "quality": template.quality,
            "source": template.source, "photo": photo, "created_at": created_at}


# --- reading ------------------------------------------------------------------------------


def read_bundle(path: Path) -> Bundle:
    """A bundle file checked whole: a newer format is refused first (it may checksum differently), then every
    member against SHA256SUMS, then every field of the manifest."""
    path = Path(path)
    try:
        return _read(path, path)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None


def read_bundle_bytes(data: bytes, label: str) -> Bundle:
    """A bundle in memory, checked as read_bundle checks a file; label names it in messages."""
    return _read(io.BytesIO(data), label)


def _read(file: Path | IO[bytes], label: Path | str) -> Bundle:
    try:
        with zipfile.ZipFile(file) as archive:
            manifest = _member(archive, label, MANIFEST)
            _refuse_newer(_claimed_versions(manifest), label)
            _verify_checksums(archive, label)
            return _parse_manifest(_json(manifest, label), archive, label)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise BundleError(f"{label}: damaged or not a facegate bundle ({error}); nothing was imported") from None


def _member(archive: zipfile.ZipFile, path: Path | str, name: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise BundleError(f"{path}: has no {name}: not a facegate bundle, or a damaged one") from None


def _claimed_versions(manifest: bytes) -> tuple[Any, Any]:
    """What a manifest says about its format and schema versions, if it reads as JSON at all."""
    try:
        claims = json.loads(manifest)
    except ValueError:
        return None, None  # the checksum check names the damage
    return (claims.get("format_version"), claims.get("schema_version")) if isinstance(claims, dict) else (None, None)


def _refuse_newer(versions: tuple[Any, Any], path: Path | str) -> None:
    format_version, schema_version = versions
    if isinstance(format_version, int) and format_version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {format_version} is newer than this facegate reads "
                          f"({FORMAT_VERSION}): upgrade facegate on this device; nothing was imported")
    if isinstance(schema_version, int) and schema_version > SCHEMA_VERSION:
        raise BundleError(f"{path}: written from gallery schema {schema_version}, newer than this facegate's "
                          f"({SCHEMA_VERSION}): upgrade facegate on this device; nothing was imported")


def _verify_checksums(archive: zipfile.ZipFile, path: Path | str) -> None:
    listed: dict[str, str] = {}
    for line in _member(archive, path, CHECKSUMS).decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise BundleError(f"{path}: {CHECKSUMS} line {line!r} is not '<sha256>  <member>': damaged bundle")
        listed[name] = digest
    members = set(archive.namelist()) - {CHECKSUMS}
    for name in sorted(members ^ set(listed)):
        where = "is not listed in" if name in members else "is listed in but missing from the bundle, see"
        raise BundleError(f"{path}: {name} {where} {CHECKSUMS}: the bundle was altered; nothing was imported")
    for name in sorted(members):
        if hashlib.sha256(archive.read(name)).hexdigest() != listed[name]:
            raise BundleError(f"{path}: {name} does not match its SHA-256 checksum: the bundle is damaged or was "
                              "altered; nothing was imported")


def _json(data: bytes, path: Path | str) -> dict[str, Any]:
    try:
        manifest = json.loads(data, parse_constant=_refuse_constant)
    except ValueError as error:
        raise BundleError(f"{path}: {MANIFEST} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: {MANIFEST} does not describe a {BUNDLE_FORMAT}")
    return manifest


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a gallery can store")


class _Fields:
    """Typed reads from one JSON object; every error names the bundle and the field's path."""

    def __init__(self, raw: Any, where: str, path: Path | str) -> None:
        self.where, self.path = where, path
        if not isinstance(raw, dict):
            self.fail("", raw, "an object")
        self.raw = raw

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise BundleError(f"{self.path}: {self.where}{key} = {str(value)[:60]!r} is not allowed: expected {expected}")

    def get(self, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        value = self.raw.get(key)
        if (value is None and not optional) or (value is not None and not isinstance(value, kind)) \
                or (isinstance(value, bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(f".{key}", value, f"a {names}" + (" or null" if optional else ""))
        return value

    def date(self, key: str) -> str | None:
        value = self.get(key, str, optional=True)
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                self.fail(f".{key}", value, "an ISO 8601 date or datetime")
        return value

    def validity(self) -> tuple[str | None, str | None]:
        start, end = self.date("valid_from"), self.date("valid_until")
        if start is not None and end is not None:
            try:
                backwards = datetime.fromisoformat(end) < datetime.fromisoformat(start)
            except TypeError:  # one with a UTC offset, one without
                backwards = True
            if backwards:
                self.fail(".valid_until", end, f"a time after valid_from {start!r}, both with or both without "
                                               "a UTC offset")
        return start, end


def _parse_manifest(manifest: dict[str, Any], archive: zipfile.ZipFile, path: Path | str) -> Bundle:
    top = _Fields(manifest, "manifest", path)
    people = [_parse_person(_Fields(raw, f"people[{i}]", path), archive)
              for i, raw in enumerate(top.get("people", list))]
    return Bundle(path, top.get("format_version", int), top.get("schema_version", int), top.get("created_at", str),
                  top.get("embedding_model", str), people, *_stamp(top))


def _stamp(top: _Fields) -> tuple[int | None, str | None]:
    """The bundle version and sender; a plain export has neither."""
    version, sender = top.get("bundle_version", int, optional=True), top.get("sender", str, optional=True)
    if version is not None and version < 1:
        top.fail(".bundle_version", version, "a whole number from 1")
    if sender is not None and not sender.strip():
        top.fail(".sender", sender, "a non-empty name")
    return version, sender


def _parse_person(fields: _Fields, archive: zipfile.ZipFile) -> BundlePerson:
    name = fields.get("name", str)
    try:
        checked_name(name)  # the gallery's rule, checked for every person before anything is imported
    except ValueError as error:
        fields.fail(".name", name, f"a person's name: {error}")
    raw_templates = fields.get("templates", list)
    if not raw_templates:
        fields.fail(".templates", raw_templates, "at least one template")
    templates = [_parse_template(_Fields(raw, f"{fields.where}.templates[{i}]", fields.path), archive)
                 for i, raw in enumerate(raw_templates)]
    return BundlePerson(name, fields.get("external_id", str, optional=True), fields.get("note", str, optional=True),
                        fields.get("active", bool), *fields.validity(), templates)


def _parse_template(fields: _Fields, archive: zipfile.ZipFile) -> Template:
    encoded = fields.get("embedding", str)
    try:
        blob = base64.b64decode(encoded, validate=True)
    except ValueError:
        blob = b""
    vector = np.frombuffer(blob, dtype=BLOB_DTYPE).astype(np.float32) if len(blob) % 4 == 0 else np.empty(0)
    if not vector.size or not np.isfinite(vector).all():
        fields.fail(".embedding", encoded, "base64 of finite little-endian float32 values")
    source = fields.get("source", str)
    if source not in SOURCES:
        fields.fail(".source", source, f"one of {list(SOURCES)}")
    photo_name = fields.get("photo", str, optional=True)
    photo = _member(archive, fields.path, photo_name) if photo_name else None
    if photo is not None and not photo.startswith(b"\xff\xd8"):
        fields.fail(".photo", photo_name, "a JPEG file")
    return Template(vector, fields.get("model_id", str), fields.get("quality", dict), source, photo)


# --- signing ----------------------------------------------------------------------------------------
#
# The front desk holds the private key; each door holds only the public key (mqtt.gallery_public_key),
# so a door, or whoever reaches the broker, cannot forge a gallery for the others.

SIGNED_MAGIC = b"FGSIGNED1\n"
SIGNATURE_SIZE = 64  # Ed25519
PUBLIC_MODE = 0o644  # the public key is no secret: the door's service user must read it


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 key pair: private_path (PEM PKCS8, owner-only) and public_path (PEM SubjectPublicKeyInfo).

    An existing file at either path is refused: overwriting the private key would orphan every door.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists():
            raise BundleError(f"{path} exists: a key is never overwritten; choose another --key, or remove the old "
                              "pair on purpose (doors with its public key then refuse every new bundle)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _create(private_path, private_pem, 0o600)
    try:
        _create(public_path, public_pem, PUBLIC_MODE)
    except BaseException:
        private_path.unlink(missing_ok=True)  # half a pair is no use: leave none
        raise


def _create(path: Path, data: bytes, mode: int) -> None:
    """A new file (O_EXCL: never one that appeared meanwhile) of exactly mode, written and fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # os.open's mode is filtered by the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The front desk's signing key, as generate_keypair wrote it."""
    key = _load_key(Path(path), "private", lambda data: serialization.load_pem_private_key(data, password=None))
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: a {type(key).__name__.removeprefix('_')} private key, not an Ed25519 one: "
                          "make the pair with enroll_local.py keygen")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A door's key to verify bundles with (mqtt.gallery_public_key): the .pub file keygen wrote."""
    key = _load_key(Path(path), "public", serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: a {type(key).__name__.removeprefix('_')} public key, not an Ed25519 one: "
                          "copy the .pub file enroll_local.py keygen wrote at the front desk")
    return key


def _load_key(path: Path, kind: str, load: Callable[[bytes], Any]) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file: make the key pair with enroll_local.py keygen") from None
    except OSError as error:
        raise BundleError(f"{path}: cannot read the {kind} key: {error.strerror}") from None
    try:
        return load(data)
    except TypeError:  # a private key protected by a passphrase
        raise BundleError(f"{path}: the {kind} key is encrypted: use an unencrypted key as keygen writes it, "
                          "kept owner-only") from None
    except (ValueError, UnsupportedAlgorithm):
        raise BundleError(f"{path}: not a PEM {kind} key: expected the file enroll_local.py keygen wrote "
                          f"({'the .pub file' if kind == 'public' else 'not the .pub file'})") from None


def sign_bundle(zip_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The payload to publish: magic, the signature of magic + zip, the zip."""
    return SIGNED_MAGIC + private_key.sign(SIGNED_MAGIC + zip_bytes) + zip_bytes


def open_signed_bundle(payload: bytes, public_key: Ed25519PublicKey, label: str) -> Bundle:
    """The bundle of a signed payload, refused (BundleError) unless it is signed by public_key's pair, reads
    whole, and carries the version and sender a door orders bundles by. The signature is checked before
    the zip is opened: nothing of an unsigned payload is parsed."""
    if not payload.startswith(SIGNED_MAGIC):
        raise BundleError(f"{label}: not a signed facegate bundle (it does not start with {SIGNED_MAGIC!r}): "
                          "publish with enroll_local.py publish; nothing was imported")
    signature = payload[len(SIGNED_MAGIC):len(SIGNED_MAGIC) + SIGNATURE_SIZE]
    zip_bytes = payload[len(SIGNED_MAGIC) + SIGNATURE_SIZE:]
    try:
        public_key.verify(signature, SIGNED_MAGIC + zip_bytes)
    except InvalidSignature:
        raise BundleError(f"{label}: signature does not verify: tampered, truncated, or signed with another key "
                          "than the pair of this door's mqtt.gallery_public_key; nothing was imported") from None
    bundle = read_bundle_bytes(zip_bytes, label)
    missing = [field for field, value in (("bundle_version", bundle.version), ("sender", bundle.sender))
               if value is None]
    if missing:
        raise BundleError(f"{label}: signed, but the manifest has no {' and no '.join(missing)}: a door needs them "
                          "to refuse older bundles; publish with enroll_local.py publish; nothing was imported")
    return bundle


# --- importing ----------------------------------------------------------------------------

COLLISION_POLICIES = ("refuse", "merge", "replace")


@dataclass(frozen=True)
class ImportReport:
    added: int
    merged: int
    replaced: int
    templates: int
    skipped_templates: int  # identical to a template the person already had (merge)


@dataclass(frozen=True, eq=False)
class _Step:
    action: str  # add, merge or replace
    person: BundlePerson
    existing: Person | None


def import_bundle(gallery: Gallery, card: ModelCard, bundle: Bundle, *, collisions: str = "refuse",
                  force: bool = False, reembed: Enroller | None = None,
                  installed: Sequence[ModelCard] = ()) -> ImportReport:
    """Bring a read bundle's people into the gallery, with their templates of every model.

    A bundle person is the same as an enrolled one when their external ids are equal or, for a bundle
    person without an external id, when their names are. collisions says what then happens: refuse
    (the whole import), merge (add the bundle's templates to the enrolled person, skipping identical
    ones, keeping their details) or replace (erase the enrolled person, enrol the bundle's).

    card is this device's configured model; installed (or reembed's cards) the other embedder cards
    here, whose templates must have their card's dimension. Templates of models not installed here
    are kept as they are, for when that model is installed. A person without a template of card is
    refused unless reembed, an Enroller of this device's models, embeds their kept photos again: it
    gives every person the templates they lack of each installed model. Everything is checked before
    the first write.
    """
    if collisions not in COLLISION_POLICIES:
        raise ValueError(f"collisions = {collisions!r}: expected one of {COLLISION_POLICIES}")
    cards = [card] + [c for c in (reembed.cards if reembed is not None else installed) if c.id != card.id]
    people = _reembedded(bundle, reembed) if reembed is not None else bundle.people
    refuse_unusable_templates(bundle, people, cards, gallery)
    steps = _plan(gallery, people, collisions, bundle.path)
    if not force:
        for step in steps:
            if step.action != "merge":
                exclude = [step.existing.id] if step.existing else []
                embeddings = [t.embedding for t in step.person.templates if t.model_id == card.id]
                refuse_duplicate(gallery, card, step.person.name, embeddings, exclude)
    return _apply(gallery, steps)


def _reembedded(bundle: Bundle, enroller: Enroller) -> list[BundlePerson]:
    """The people with the templates they lack of each of enroller's models, from their kept photos."""
    people = []
    refusals = []
    for person in bundle.people:
        missing = {c.id for c in enroller.cards} - {t.model_id for t in person.templates}
        added, refused = embed_again(enroller, person.name, person.templates, missing)
        refusals += refused
        people.append(replace(person, templates=[*person.templates, *added]))
    if refusals:
        raise PhotosRefused(refusals)
    return people


def refuse_unusable_templates(bundle: Bundle, people: Sequence[BundlePerson], cards: Sequence[ModelCard],
                              gallery: Gallery, remedy: str | None = None) -> None:
    """Refuse templates the gallery could not store or search: a dimension other than the card's (or the
    gallery's, for a model held there), and people with no template of the configured model, cards[0].

    remedy says what to do about such people; None: the import's advice (--reembed, or enrol again)."""
    expected = {m.model_id: m.dim for m in gallery.models()} | {c.id: c.embedding_dim for c in cards}
    sizes: dict[str, set[int]] = {}
    for person in people:
        for template in person.templates:
            sizes.setdefault(template.model_id, set()).add(template.embedding.size)
    for model, found in sorted(sizes.items()):
        if len(found) > 1 or model in expected and found != {expected[model]}:
            want = f"{expected[model]}-d" if model in expected else "of one dimension"
            dims = "/".join(map(str, sorted(found)))
            raise BundleError(f"{bundle.path}: templates of model {model!r} are {dims}-d, not {want} as this gallery "
                              "and its model cards have them: damaged bundle; nothing was imported")
    card = cards[0]
    lacking = [person for person in people if not any(t.model_id == card.id for t in person.templates)]
    if not lacking:
        return
    photos = sum(1 for person in lacking if any(t.photo_jpeg for t in person.templates))
    models = ", ".join(f"{count} of model {model!r}" for model, count in
                       Counter(t.model_id for person in lacking for t in person.templates).items())
    remedy = remedy or (f"{photos} of them have a kept photo: import with --reembed to embed those again (people "
                        "without a photo need to be enrolled again)")
    raise BundleError(f"{bundle.path}: {len(lacking)} people have no template of {card.id!r}, the model this device "
                      f"embeds with (their templates: {models}); templates cannot be compared across models. "
                      + remedy)


def _plan(gallery: Gallery, people: list[BundlePerson], collisions: str, path: Path | str) -> list[_Step]:
    """What to do with each bundle person; every problem found is reported at once, before any write."""
    enrolled = gallery.list_people()
    steps: list[_Step] = []
    collided: list[str] = []
    twice = [key for key, count in Counter(p.external_id for p in people if p.external_id).items() if count > 1]
    problems_found = [f"external id {key!r} appears more than once in the bundle" for key in twice]
    for person in people:
        if person.external_id is not None:
            same = [p for p in enrolled if p.external_id == person.external_id]
        else:
            same = [p for p in enrolled if p.name == person.name.strip()]
        if not same:
            steps.append(_Step("add", person, None))
        elif len(same) > 1:
            problems_found.append(f"{person.name!r} fits {len(same)} enrolled people (ids "
                                  f"{', '.join(str(p.id) for p in same)}); rename all but one of them first")
        elif collisions == "refuse":
            collided.append(f"{person.name!r} (id {same[0].id})")
        elif any(step.existing == same[0] for step in steps):
            problems_found.append(f"{person.name!r} appears more than once in the bundle")
        else:
            steps.append(_Step(collisions, person, same[0]))
    if collided:
        problems_found.append(f"already enrolled: {', '.join(collided)}; import with --merge to add the bundle's "
                              "templates to them, or with --replace to replace them")
    if problems_found:
        raise BundleError(f"{path}: nothing was imported: " + "; ".join(problems_found))
    return steps


def _apply(gallery: Gallery, steps: list[_Step]) -> ImportReport:
    """The writes of an import, one gallery transaction per person.

    One transaction for the whole import needs a batch transaction in daemon.gallery; until
    then an interrupted import leaves whole people, and running it again with --merge finishes
    it (identical templates are skipped).
    """
    counts = Counter()
    for step in steps:
        templates = list(step.person.templates)
        if step.action == "merge":
            held = {_key(t.model_id, t.embedding) for t in gallery.templates(step.existing.id)}
            new = [t for t in templates if _key(t.model_id, t.embedding) not in held]
            counts["skipped"] += len(templates) - len(new)
            if new:
                gallery.add_templates(step.existing.id, new)
            templates = new
        else:
            if step.action == "replace":
                gallery.remove_person(step.existing.id)
            _add(gallery, step.person)
        counts[step.action] += 1
        counts["templates"] += len(templates)
    return ImportReport(counts["add"], counts["merge"], counts["replace"], counts["templates"], counts["skipped"])


def _add(gallery: Gallery, person: BundlePerson) -> None:
    person_id = gallery.add_person(person.name, person.templates, external_id=person.external_id, note=person.note,
                                   valid_from=person.valid_from, valid_until=person.valid_until)
    if not person.active:
        gallery.set_active(person_id, False)


def _key(model_id: str, embedding: np.ndarray) -> tuple[str, bytes]:
    return model_id, np.asarray(embedding, dtype=BLOB_DTYPE).tobytes()
