"""Gallery bundles (daemon/bundles.py): signing, verifying, and a door mirroring the front desk all or nothing
(daemon/fleet/sync.py, Gallery.replace_everyone); the keygen and publish commands of tools/enroll_local.py.

The format is what is tested, not recognition: templates are random unit vectors of the card's dimension.
A refused bundle must leave the door's gallery as it was: contents() compares people, templates and the
generation before and after.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
import zlib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from daemon.bundles import (SIGNED_MAGIC, BundleError, BundlePerson, bundle_bytes, export_bundle, generate_keypair,
                            load_private_key, load_public_key, open_signed_bundle, read_bundle_bytes, sign_bundle)
from daemon.fleet.settings import parse_mqtt
from daemon.fleet.sync import apply_signed_bundle
from daemon.gallery import SCHEMA_VERSION, DuplicateExternalId, Gallery, SyncedBundle, Template
from engines.model_card import load_card
from tests.conftest import MODELS, REPO
from tools.enroll_local import PublishError, publish_gallery

CARD = load_card(MODELS / "dlib_resnet_v1.yaml")
TOOL = REPO / "tools" / "enroll_local.py"
PHOTO = b"\xff\xd8" + b"not really a jpeg, but it starts like one"


# --- helpers ------------------------------------------------------------------------------------------


def templates(seed: str, count: int = 2, model_id: str = CARD.id, dim: int = CARD.embedding_dim) -> list[Template]:
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Template(vector, model_id, {"label": f"{seed} {i}"}, "photo" if i else "camera", PHOTO if i else None)
            for i, vector in enumerate(vectors)]


def front_desk(path: Path) -> Path:
    """A front desk gallery: Alice (external id, validity, a note), Bob (disabled)."""
    with Gallery.open(path) as gallery:
        gallery.add_person("Alice", templates("alice"), external_id="E1", note="reception",
                           valid_from="2026-01-01", valid_until="2026-12-31T18:00:00")
        gallery.set_active(gallery.add_person("Bob", templates("bob", 3)), False)
    return path


def door(path: Path, *names: str) -> Path:
    """A door's gallery holding people of its own, which a mirrored bundle replaces."""
    with Gallery.open(path) as gallery:
        for name in names:
            gallery.add_person(name, templates(name))
    return path


def contents(path: Path) -> tuple:
    """Everything a refusal must leave alone: people, their templates, the generation, the synced bundle."""
    with Gallery.open(path) as gallery:
        people = [(p.name, p.external_id, p.note, p.active, p.valid_from, p.valid_until,
                   [(t.model_id, t.embedding.tobytes(), t.quality, t.source, t.photo_jpeg)
                    for t in gallery.templates(p.id)]) for p in gallery.list_people()]
        return gallery.generation(), people, gallery.synced_bundle()


def people_of(path: Path) -> list[tuple]:
    """The people and templates without ids, dates or generation: equal for two galleries holding the same people."""
    return contents(path)[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "front-desk.key", folder / "front-desk.key.pub")
    return load_private_key(folder / "front-desk.key"), load_public_key(folder / "front-desk.key.pub")


def signed(gallery_path: Path, keys: tuple, version: int, sender: str = "front-desk") -> bytes:
    with Gallery.open(gallery_path) as gallery:
        return sign_bundle(bundle_bytes(gallery, CARD.id, version, sender), keys[0])


def apply(payload: bytes, keys: tuple, door_path: Path):
    return apply_signed_bundle(payload, keys[1], door_path, CARD, [CARD])


# --- signing and verifying -------------------------------------------------------------------------------


def test_a_signed_bundle_opens_with_its_people_version_and_sender(tmp_path, keys):
    desk = front_desk(tmp_path / "desk.db")
    bundle = open_signed_bundle(signed(desk, keys, 7, "reception-pc"), keys[1], "test")
    assert (bundle.version, bundle.sender, bundle.embedding_model) == (7, "reception-pc", CARD.id)
    assert [(p.name, p.external_id, p.active, p.valid_until, len(p.templates)) for p in bundle.people] == [
        ("Alice", "E1", True, "2026-12-31T18:00:00", 2), ("Bob", None, False, None, 3)]
    assert bundle.people[0].templates[1].photo_jpeg == PHOTO


def test_bundle_bytes_is_the_export_format_and_a_plain_export_has_no_version_or_sender(tmp_path):
    desk = front_desk(tmp_path / "desk.db")
    with Gallery.open(desk) as gallery:
        in_memory = read_bundle_bytes(bundle_bytes(gallery, CARD.id, 3, "desk"), "memory")
        exported = export_bundle(gallery, tmp_path / "crew.fgb", CARD.id)
    assert (in_memory.version, in_memory.sender, exported.version, exported.sender) == (3, "desk", None, None)
    assert [p.name for p in in_memory.people] == [p.name for p in exported.people]
    for version, sender in ((0, "desk"), (True, "desk"), (3, " ")):
        with pytest.raises(BundleError, match="not allowed"), Gallery.open(desk) as gallery:
            bundle_bytes(gallery, CARD.id, version, sender)


def flip(payload: bytes, at: int) -> bytes:
    changed = bytearray(payload)
    changed[at] ^= 0x01
    return bytes(changed)


def test_tampered_truncated_or_foreign_bundles_do_not_verify(tmp_path, keys):
    payload = signed(front_desk(tmp_path / "desk.db"), keys, 1)
    start_of_zip = len(SIGNED_MAGIC) + 64
    generate_keypair(tmp_path / "other.key", tmp_path / "other.key.pub")
    other = load_public_key(tmp_path / "other.key.pub")
    for label, bad, key in (("a byte of the zip", flip(payload, start_of_zip + 100), keys[1]),
                            ("the last byte", flip(payload, len(payload) - 1), keys[1]),
                            ("the signature", flip(payload, len(SIGNED_MAGIC) + 5), keys[1]),
                            ("another key", payload, other),
                            ("half received", payload[:len(payload) // 2], keys[1]),
                            ("no zip", payload[:start_of_zip], keys[1]),
                            ("half a signature", payload[:len(SIGNED_MAGIC) + 30], keys[1])):
        with pytest.raises(BundleError, match="signature does not verify: tampered, truncated, or signed with "
                                              "another key"):
            open_signed_bundle(bad, key, label)


def test_unsigned_payloads_are_refused_before_anything_is_parsed(tmp_path, keys):
    with Gallery.open(front_desk(tmp_path / "desk.db")) as gallery:
        plain_zip = bundle_bytes(gallery, CARD.id, 1, "desk")
    for payload in (plain_zip, b"", SIGNED_MAGIC[:5], b"FGSIGNED2\n" + plain_zip):
        with pytest.raises(BundleError, match="not a signed facegate bundle"):
            open_signed_bundle(payload, keys[1], "mqtt facegate/gallery")


def test_a_signed_bundle_without_version_or_sender_is_refused(tmp_path, keys):
    desk = front_desk(tmp_path / "desk.db")
    with Gallery.open(desk) as gallery:
        unstamped = export_bundle(gallery, tmp_path / "plain.fgb", CARD.id)
        version_only = export_bundle(gallery, tmp_path / "version.fgb", CARD.id, version=4)
    for path, missing in ((unstamped.path, "no bundle_version and no sender"), (version_only.path, "no sender")):
        with pytest.raises(BundleError, match=f"signed, but the manifest has {missing}"):
            open_signed_bundle(sign_bundle(Path(path).read_bytes(), keys[0]), keys[1], "test")


# --- keys ------------------------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def keygen(key: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "keygen", "--key", str(key)], capture_output=True, text=True,
                          cwd=REPO, timeout=120, preexec_fn=lambda: os.umask(0))


def test_keygen_writes_an_owner_only_private_key_and_a_public_key_and_never_overwrites(tmp_path):
    key = tmp_path / "front-desk.key"
    result = keygen(key)
    assert result.returncode == 0, result.stderr
    public = tmp_path / "front-desk.key.pub"
    assert str(key) in result.stdout and str(public) in result.stdout and "mqtt.gallery_public_key" in result.stdout
    assert (mode(key), mode(public)) == (0o600, 0o644)  # whatever the umask
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = key.read_bytes(), public.read_bytes()
    again = keygen(key)
    assert again.returncode == 1 and "exists: a key is never overwritten" in again.stderr
    assert (key.read_bytes(), public.read_bytes()) == before
    # A lone public key left over still stops a new pair: it would not match.
    key.unlink()
    assert keygen(key).returncode == 1 and not key.exists()


def test_keys_that_cannot_be_used_are_named_with_the_reason(tmp_path):
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    (tmp_path / "garbage").write_text("not a key at all")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec").write_bytes(ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for load, name, message in (
            (load_private_key, "missing", "no such file: make the key pair with enroll_local.py keygen"),
            (load_private_key, "garbage", "not a PEM private key"),
            (load_private_key, "k.pub", "not a PEM private key"),
            (load_public_key, "k", "not a PEM public key"),
            (load_private_key, "ec", "not an Ed25519 one"),
            (load_public_key, "ec.pub", "not an Ed25519 one")):
        with pytest.raises(BundleError, match=message):
            load(tmp_path / name)


# --- a door mirroring the front desk -------------------------------------------------------------------------


def test_a_good_bundle_makes_two_doors_hold_the_front_desk_s_people(tmp_path, keys):
    desk = front_desk(tmp_path / "desk.db")
    payload = signed(desk, keys, 5)
    doors = [door(tmp_path / "door1.db", "Carol", "Dave"), door(tmp_path / "door2.db")]
    for path in doors:
        generation = contents(path)[0]
        outcome = apply(payload, keys, path)
        assert (outcome.applied, outcome.stale, outcome.version, outcome.sender) == (True, False, 5, "front-desk")
        assert (outcome.people, outcome.templates) == (2, 5)
        assert contents(path)[0] > generation  # the daemon's reader notices and swaps its index
        synced = contents(path)[2]
        assert (synced.version, synced.sender, len(synced.sha256)) == (5, "front-desk", 64)
    assert people_of(doors[0]) == people_of(doors[1]) == people_of(desk)


def test_the_version_a_door_runs_is_stale_and_an_older_one_is_refused_leaving_the_gallery_alone(tmp_path, keys):
    desk = front_desk(tmp_path / "desk.db")
    path = door(tmp_path / "door.db", "Carol")
    assert apply(signed(desk, keys, 5), keys, path).applied
    before = contents(path)
    again = apply(signed(desk, keys, 5), keys, path)  # the retained message, heard on every reconnection
    assert (again.applied, again.stale) == (False, True) and "already running version 5" in again.reason
    assert contents(path) == before
    with pytest.raises(BundleError, match="older than version 5 this door runs"):
        apply(signed(desk, keys, 4), keys, path)
    assert contents(path) == before


@pytest.mark.parametrize("enrolled, message", [
    (("Erin", templates("erin", model_id="another-embedder")),  # a model the door cannot compare with
     f"1 people have no template of '{CARD.id}'.*At the front desk: install"),
    (("Alice", templates("alice", dim=64)), f"are 64-d, not {CARD.embedding_dim}-d"),
], ids=["lacking the door's card", "another dimension"])
def test_templates_the_door_cannot_search_refuse_the_whole_bundle(tmp_path, keys, enrolled, message):
    desk = tmp_path / "desk.db"
    with Gallery.open(desk) as gallery:
        gallery.add_person(*enrolled)
    path = door(tmp_path / "door.db", "Carol")
    before = contents(path)
    with pytest.raises(BundleError, match=message):
        apply(signed(desk, keys, 2), keys, path)
    assert contents(path) == before


def test_a_refused_signature_leaves_the_door_gallery_alone(tmp_path, keys):
    path = door(tmp_path / "door.db", "Carol")
    before = contents(path)
    payload = signed(front_desk(tmp_path / "desk.db"), keys, 9)
    with pytest.raises(BundleError, match="signature does not verify"):
        apply(flip(payload, len(payload) - 10), keys, path)
    assert contents(path) == before


def test_replace_everyone_is_all_or_nothing(tmp_path):
    path = door(tmp_path / "door.db", "Carol", "Dave")
    before = contents(path)
    synced = SyncedBundle(3, "desk", "0" * 64, "2026-05-01T08:00:00+00:00")
    good = BundlePerson("Alice", "E1", None, True, None, None, templates("alice"))
    failing = (
        # Fails midway, inside the transaction: Alice is already written when her external id comes again.
        ([good, BundlePerson("Alias", "E1", None, True, None, None, templates("alias"))], DuplicateExternalId,
         "external id 'E1' already belongs to 'Alice'"),
        # Also midway: the second person's templates of one model have another dimension than the first's.
        ([good, BundlePerson("Wide", None, None, True, None, None, templates("wide", dim=64))], ValueError,
         "are 128-d, not 64-d"),
        # Refused before the transaction: an invalid template in the last person.
        ([good, BundlePerson("Broken", None, None, True, None, None,
                             [Template(np.full(CARD.embedding_dim, np.nan), CARD.id)])], ValueError,
         r"person 1 \('Broken'\): template 0: embedding has NaN"))
    with Gallery.open(path) as gallery:
        for people, error, message in failing:
            with pytest.raises(error, match=message):
                gallery.replace_everyone(people, synced)
    assert contents(path) == before
    with Gallery.open(path) as gallery:
        gallery.replace_everyone([good], synced)
        assert [p.name for p in gallery.list_people()] == ["Alice"] and gallery.synced_bundle() == synced


def test_people_removed_by_a_mirror_leave_no_trace_on_disk(tmp_path):
    path = tmp_path / "door.db"
    with Gallery.open(path) as gallery:
        secret = gallery.templates(gallery.add_person("Carol", templates("carol")))[0].embedding.tobytes()
        gallery.replace_everyone([BundlePerson("Alice", None, None, True, None, None, templates("alice"))],
                                 SyncedBundle(1, "desk", "0" * 64, "2026-05-01T08:00:00+00:00"))
    for file in tmp_path.iterdir():
        if file.is_file():
            assert secret not in file.read_bytes(), file


def test_migration_2_keeps_the_people_of_a_schema_1_gallery(tmp_path):
    path = door(tmp_path / "door.db", "Carol", "Dave")
    expected = people_of(path)
    with closing(sqlite3.connect(path)) as raw:  # back to what a facegate of schema 1 left
        raw.execute("DROP TABLE credentials")  # migration 3's
        raw.execute("DROP TABLE synced_bundle")
        raw.execute("PRAGMA user_version = 1")
        raw.commit()
    with Gallery.open(path) as gallery:
        assert gallery.synced_bundle() is None
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert people_of(path) == expected


# --- publish -----------------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once the socket is closed


def test_publish_says_so_when_the_broker_cannot_be_reached(tmp_path, keys):
    port = closed_port()
    settings = parse_mqtt({"host": "127.0.0.1", "port": port}, door_name="front-desk")
    with Gallery.open(front_desk(tmp_path / "desk.db")) as gallery:
        with pytest.raises(PublishError, match=f"cannot reach the broker at 127.0.0.1:{port}.*nothing was published"):
            publish_gallery(gallery, CARD.id, keys[0], settings, timeout_s=5)


def test_the_publish_command_exits_1_when_the_broker_cannot_be_reached(tmp_path):
    desk = front_desk(tmp_path / "desk.db")
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1", "port": closed_port()}}))
    command = [sys.executable, str(TOOL), "publish", "--key", str(tmp_path / "k"), "--mqtt", str(config),
               "--db", str(desk), "--timeout", "5"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1 and "enroll_local publish: cannot reach the broker" in result.stderr, result.stderr
    config.write_text(yaml.safe_dump({"door": {"name": "x"}}))
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1 and "no mqtt.host" in result.stderr, result.stderr


def test_a_published_bundle_is_retained_and_a_door_applies_it(tmp_path, keys, broker_factory):
    from tests.broker import Subscriber

    broker = broker_factory(password=True)
    settings = parse_mqtt(broker.mqtt_section(client_id="desk"), door_name="front-desk")
    desk = front_desk(tmp_path / "desk.db")
    with Gallery.open(desk) as gallery:
        published = publish_gallery(gallery, CARD.id, keys[0], settings, timeout_s=10)
        assert published.version == gallery.generation() and published.sender == "desk"
    assert (published.people, published.templates, published.topic) == (2, 5, "facegate/gallery")
    with Subscriber(broker, settings.gallery_topic) as subscriber:  # subscribed after: the retained copy arrives
        message = subscriber.wait_for(lambda messages: len(messages) == 1)[0]
    assert message.retain and len(message.payload) == published.bytes
    path = door(tmp_path / "door.db", "Carol")
    assert apply(message.payload, keys, path).applied and people_of(path) == people_of(desk)

    (tmp_path / "wrong").write_text("not-the-password\n")
    wrong = parse_mqtt(broker.mqtt_section(password_file=str(tmp_path / "wrong")), door_name="front-desk")
    with Gallery.open(desk) as gallery:
        with pytest.raises(PublishError, match="refused the connection.*mqtt.username"):
            publish_gallery(gallery, CARD.id, keys[0], wrong, timeout_s=10)
