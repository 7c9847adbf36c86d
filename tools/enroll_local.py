#!/usr/bin/env python3
"""Enrol people into the door's gallery from photos or a camera; list, change, remove, export, import and publish them.

PERSON is a name, an external id or an id (#12 asks by id only). DATE is ISO 8601:
2026-05-01 or 2026-05-01T08:00:00+02:00. A photo is refused unless it shows exactly one
sharp, large enough, frontal face; a new person whose face matches someone already enrolled
(closer than the model card's threshold) is refused unless --force. A refused or failed
command changes nothing.

Presentation attacks: a face captured with --camera must also be judged live by the
liveness nets (the liveness cards in --models, else engines/models, and their threshold,
as at the door): a printed photo or a phone screen held up to the camera is refused.
Enrolment from photo files (--photo, add-template, add-folder) skips that check: an ID
photo is a photo, and whoever enrols from files vouches for them.

Every face is stored as one template per embedder card installed in --models, so the
door's embedder.card can be switched without enrolling anyone again. --card names the
model the door is configured with (default: the one --models/DEFAULTS names): the quality
gate, the duplicate guard and check use it. People enrolled before a card was installed
lack its templates: check names them, reembed embeds their kept photos (--keep-photo) again.

A fleet of doors mirrors the front desk's gallery over MQTT: keygen makes the front desk's
Ed25519 key pair once (copy the .pub file to each door, mqtt.gallery_public_key); publish
sends the whole gallery, signed, retained on mqtt.gallery_topic of the --mqtt config file.
Each door applies a bundle whose version is higher than the one it runs, all or nothing.

examples:
  enroll_local.py --db /var/lib/facegate/gallery.db add "Alice Martin" --photo alice1.jpg alice2.jpg --external-id E1001
  enroll_local.py add "Bob Stone" --camera --shots 3            # camera 0, guidance on screen
  enroll_local.py add "Bob Stone" --camera rtsp://10.0.0.7/live --shots 5 --keep-photo
  enroll_local.py add-folder /media/usb/staff                   # staff/<person name>/<photos>
  enroll_local.py add-template E1001 --photo alice3.jpg
  enroll_local.py credential E1001 --card-number 31337 --facility 42 --card-format H10301 --pin
  enroll_local.py list --json
  enroll_local.py show "Alice Martin"
  enroll_local.py set-validity E1001 --from 2026-01-01 --until none
  enroll_local.py disable '#12'
  enroll_local.py remove "Bob Stone" --yes
  enroll_local.py export /media/usb/gallery.fgb
  enroll_local.py import /media/usb/gallery.fgb --merge
  enroll_local.py check && enroll_local.py rebuild-index
  enroll_local.py --card NEW-CARD-ID check || enroll_local.py reembed   # before switching embedder.card
  enroll_local.py keygen --key /etc/facegate/gallery-signing.key        # once, at the front desk
  enroll_local.py publish --key /etc/facegate/gallery-signing.key --mqtt /etc/facegate/config.yaml
  enroll_local.py operator add "Dana Reyes" --role admin                # once: who may log in to the desk
  enroll_local.py serve                                                 # the desk's web page on 127.0.0.1:8080

--db, --models and --card go before or after the command.

exit status: 0 ok, 1 refused or failed (the gallery is unchanged), 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from tools.cli_options import common_options, default  # noqa: E402
from daemon.bundles import (COLLISION_POLICIES, bundle_bytes, export_bundle, generate_keypair,  # noqa: E402
                            import_bundle, load_private_key, read_bundle, read_bundle_bytes, sign_bundle)
from daemon.config import read_yaml  # noqa: E402
from daemon.enrolment import (CameraError, Enroller, EnrolmentError, PersonDetails, PersonOutcome,  # noqa: E402
                              PhotosRefused, Progress, Refusal, Shot, add_shots, capture, embedder_cards, enrol,
                              enrol_judged, find_person, judge_files, judge_folder, person_folders, Reembedded,
                              reembed_person, refuse_taken_name)
from daemon.fleet.settings import MqttSettings, make_client, parse_mqtt  # noqa: E402
from daemon.gallery import (KINDS, Gallery, GalleryError, GalleryIndex, Person, check_gallery_file,  # noqa: E402
                            checked_name, escaped, listed)
from daemon.panel.credentials import Credential, checked_card, hash_pin  # noqa: E402
from daemon.panel.formats import Card  # noqa: E402
from daemon.settings import ConfigError  # noqa: E402
from desk.operators import ROLES  # noqa: E402  (stdlib only: the CLI works without the desk extra)
from desk.settings import DEFAULT_LISTEN  # noqa: E402
from daemon.sources import FrameSource, SourceConfigError, SourceError, make_source  # noqa: E402
from engines.manifest import MODELS_DIR  # noqa: E402
from engines.model_card import ModelCard, cards_of, find_card, load_card  # noqa: E402

DEFAULT_DB = "/var/lib/facegate/gallery.db"
PUBLISH_DOOR_NAME = "front-desk"  # the mqtt section's defaults (client id, topic prefix) as for a door of this name


class UsageError(Exception):
    """Arguments argparse cannot check alone; exit status 2."""


class PublishError(Exception):
    """The broker could not be reached, refused the connection, or did not confirm the bundle in time."""


FAILURES = (EnrolmentError, GalleryError, SourceError, PublishError, OSError, ValueError)


# --- argument types ---------------------------------------------------------------------------


def date_text(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: expected YYYY-MM-DD or "
                                         "YYYY-MM-DDTHH:MM[:SS][+HH:MM]") from None
    return text


def bound(text: str) -> str:
    """A date, or '' for 'none' (clear the bound); None stays 'not given'."""
    return "" if text.lower() == "none" else date_text(text)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected a positive whole number")
    return int(text)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected seconds between 0 and 600")
    return value


# --- the parser -------------------------------------------------------------------------------


def common(parser: argparse.ArgumentParser, before: bool) -> None:
    parser.add_argument("--db", default=default(DEFAULT_DB, before), help=f"the gallery database (default {DEFAULT_DB})")
    parser.add_argument("--models", type=Path, default=default(MODELS_DIR, before),
                        help="folder of model cards and models (default: engines/models)")
    parser.add_argument("--card", default=default(None, before), metavar="CARD",
                        help="the embedder the door is configured with (its embedder.card): a card file, or the id "
                             "of an embedder card in --models (default: the one --models/DEFAULTS names)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="enroll_local.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parent = common_options(top, common)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[parent], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    add = command("add", cmd_add, "enrol a new person from photos or a camera")
    add.add_argument("name", metavar="NAME")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--photo", nargs="+", type=Path, metavar="FILE",
                        help="photos of the person (no liveness check: an ID photo is a photo)")
    source.add_argument("--camera", nargs="?", const="0", metavar="SOURCE",
                        help="capture live: a camera index (default 0), device path, stream URL, "
                             "or a video file or folder of images standing in for one; a face judged a "
                             "presentation attack (a photo or a screen held up) is refused")
    add.add_argument("--shots", type=positive, help="camera: templates to keep, the best by quality (default 3)")
    add.add_argument("--duration", type=seconds, help="camera: seconds to look for good frames (default 20)")
    add.add_argument("--external-id", help="an id from another system (badge, HR number); unique")
    _card_options(add)
    add.add_argument("--note", help="free text kept with the person")
    add.add_argument("--valid-from", type=date_text, metavar="DATE", help="access starts (the policy decides)")
    add.add_argument("--valid-until", type=date_text, metavar="DATE", help="access ends (the policy decides)")
    _photo_options(add)
    add.add_argument("--force", action="store_true",
                     help="enrol even when the name is taken or the face matches someone enrolled")

    more = command("add-template", cmd_add_template, "add photos to an enrolled person")
    more.add_argument("person", metavar="PERSON")
    more.add_argument("--photo", nargs="+", type=Path, required=True, metavar="FILE")
    _photo_options(more)
    more.add_argument("--force", action="store_true", help="add photos even when they do not look like the person")

    folder = command("add-folder", cmd_add_folder,
                     "enrol one person per sub-folder (the folder's name), all in one transaction: a "
                     "refused photo or person and nobody is enrolled (people already enrolled under the "
                     "folder's name are left alone)")
    folder.add_argument("folder", type=Path, metavar="DIR")
    _photo_options(folder)
    folder.add_argument("--force", action="store_true", help="enrol faces that match someone enrolled")
    folder.add_argument("--json", action="store_true", help="print the outcome per person as JSON")

    credential = command("credential", cmd_credential, "set or clear a person's card and PIN for the building's "
                         "access panel (output modes wiegand and osdp, card + face)")
    credential.add_argument("person", metavar="PERSON")
    _card_options(credential)
    credential.add_argument("--clear", action="store_true", help="remove the person's card and PIN")
    credential.add_argument("--no-pin", action="store_true", help="remove the PIN, keep the card")

    listing = command("list", cmd_list, "list the enrolled people")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    show = command("show", cmd_show, "show a person and their templates' quality figures")
    show.add_argument("person", metavar="PERSON")
    show.add_argument("--json", action="store_true")
    rename = command("rename", cmd_rename, "rename a person")
    rename.add_argument("person", metavar="PERSON")
    rename.add_argument("new_name", metavar="NEW")
    for name, active in (("disable", False), ("enable", True)):
        toggle = command(name, cmd_set_active, f"{name} a person's access (they stay enrolled)")
        toggle.add_argument("person", metavar="PERSON")
        toggle.set_defaults(active=active)
    validity = command("set-validity", cmd_set_validity,
                       "set when a person's access starts and ends ('none' clears a bound; "
                       "a bound not given stays)")
    validity.add_argument("person", metavar="PERSON")
    validity.add_argument("--from", dest="valid_from", type=bound, metavar="DATE")
    validity.add_argument("--until", dest="valid_until", type=bound, metavar="DATE")
    remove = command("remove", cmd_remove, "remove a person and erase their templates and photos for good")
    remove.add_argument("person", metavar="PERSON")
    remove.add_argument("--yes", action="store_true", help="do not ask (needed when not on a terminal)")

    export = command("export", cmd_export, "write every person to a new owner-only bundle file")
    export.add_argument("file", type=Path, metavar="FILE")
    load = command("import", cmd_import, "bring a bundle's people into the gallery")
    load.add_argument("file", type=Path, metavar="FILE")
    collide = load.add_mutually_exclusive_group()
    collide.add_argument("--merge", dest="collisions", action="store_const", const="merge",
                         help="a person already enrolled gets the bundle's templates added (details kept)")
    collide.add_argument("--replace", dest="collisions", action="store_const", const="replace",
                         help="a person already enrolled is erased and enrolled as the bundle has them")
    load.set_defaults(collisions=COLLISION_POLICIES[0])
    load.add_argument("--reembed", action="store_true",
                      help="embed templates of another model again from their kept photos")
    load.add_argument("--force", action="store_true", help="import faces that match someone enrolled")

    check = command("check", cmd_check, "check the gallery's integrity and that everyone has a template of the "
                    "configured model (exit 1 on problems)")
    check.add_argument("--json", action="store_true")
    again = command("reembed", cmd_reembed, "give people the templates they lack of each installed model, "
                    "embedded from their kept photos (exit 1 if someone still lacks one)")
    again.add_argument("people", nargs="*", metavar="PERSON", help="only these people (default: everyone)")
    index = command("rebuild-index", cmd_rebuild_index, "rebuild each installed model's search index from the "
                    "database")
    index.add_argument("--kind", choices=KINDS, default=KINDS[0], help="flat: exact (default); hnsw: approximate")

    keygen = command("keygen", cmd_keygen, "make the front desk's Ed25519 key pair for signing published galleries: "
                     "KEY (owner-only, stays here) and KEY.pub (for the doors)")
    keygen.add_argument("--key", type=Path, required=True, metavar="KEY", help="the private key file to write")
    publish = command("publish", cmd_publish, "send the whole gallery, signed, to the doors: retained, QoS 1, on "
                      "the gallery topic of the broker in --mqtt")
    publish.add_argument("--key", type=Path, required=True, metavar="KEY", help="the private key keygen wrote")
    publish.add_argument("--mqtt", type=Path, required=True, metavar="CONFIG",
                         help="a facegate YAML config whose mqtt: section names the broker, credentials and "
                              "gallery_topic")
    publish.add_argument("--version", type=positive, metavar="N",
                         help="the bundle version; doors apply only a version higher than the one they run "
                              "(default: the gallery's generation, which grows with every change here; give a "
                              "higher one when the doors run more than that, e.g. after restoring this gallery "
                              "from a backup)")
    publish.add_argument("--sender", metavar="NAME", help="who publishes, shown on the doors (default: the mqtt "
                                                          "client id)")
    publish.add_argument("--timeout", type=seconds, default=30.0, metavar="S",
                         help="seconds to wait for the broker to connect and confirm (default 30)")
    publish.add_argument("--allow-empty", action="store_true",
                         help="publish a gallery of nobody: every door then erases everyone")
    publish.add_argument("--json", action="store_true", help="print what was published as JSON")

    serve = command("serve", cmd_serve, f"start the front desk's web page (docs/desk.md) on {DEFAULT_LISTEN} unless "
                    "--listen; it needs the desk extra (pip install 'facegate[desk]') and an operator (operator add)")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                       help="the address to listen on; one beyond this machine needs --tls-cert and --tls-key "
                            "(or --insecure-http)")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="the TLS certificate (PEM) for https")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    serve.add_argument("--insecure-http", action="store_true",
                       help="allow plain http on a non-loopback address (passwords cross the network in clear)")
    serve.add_argument("--events", type=Path, metavar="FILE", help="the event log (default: events.db beside --db)")
    _desk_db_option(serve)
    serve.add_argument("--mqtt", type=Path, metavar="CONFIG", help="a facegate config whose mqtt: section names the "
                       "fleet's broker: the Doors page shows each door and can publish the gallery")
    serve.add_argument("--key", type=Path, metavar="KEY", help="the front desk's signing key (keygen), to publish")
    operator = command("operator", cmd_operator, "add a front-desk operator (asks for the password twice; read "
                       "from two lines of stdin when not on a terminal)")
    operator.add_argument("action", choices=("add",), metavar="add")
    operator.add_argument("operator_name", metavar="NAME")
    operator.add_argument("--role", choices=ROLES, default="enroller",
                          help="viewer: reads; enroller: also enrols and edits; admin: also deletes and publishes "
                               "(default enroller)")
    _desk_db_option(operator)
    return top


def _desk_db_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--desk-db", type=Path, metavar="FILE",
                     help="the desk's operators and sessions (default: desk.db beside --db)")


def _card_options(sub: argparse.ArgumentParser) -> None:
    # --card already names the embedder's model card (a common option): the badge is --card-number.
    sub.add_argument("--card-number", type=int, metavar="N", help="the person's access card number")
    sub.add_argument("--facility", type=int, metavar="F", help="the card's facility (site) code")
    sub.add_argument("--card-format", default="H10301", metavar="FORMAT",
                     help="the card's Wiegand format: H10301 (26, default), H10306 (34), C1000-35 (35), H10304 (37)")
    sub.add_argument("--pin", action="store_true", help="ask for a PIN (4-12 digits; read from stdin when not on a "
                                                        "terminal), kept hashed")


def _photo_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--largest", action="store_true", help="take the largest face of a photo with several")
    sub.add_argument("--keep-photo", action="store_true",
                     help="keep a JPEG of each face (and its surroundings) with the template, for re-embedding")


# --- commands ---------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    if args.photo and (args.shots or args.duration):
        raise UsageError("--shots and --duration go with --camera, not --photo")
    checked_name(args.name)  # the name and --db refused before the models load, not after the photos
    check_gallery_file(args.db)
    details = PersonDetails(args.external_id, args.note, args.valid_from, args.valid_until)
    credential = credential_of(args)  # bad numbers refused before anything is asked or loaded
    if Path(args.db).exists():
        with open_gallery(args.db) as gallery:
            if not args.force:
                refuse_taken_name(gallery, args.name)  # a quick answer, before the models load
            refuse_taken_card(gallery, credential)
    with Enroller.from_models(args.models, card=configured_card(args)) as enroller:
        shots = photo_shots(enroller, args) if args.photo else camera_shots(enroller, args)
        with open_gallery(args.db, create=True) as gallery:  # only now: a refused add leaves no empty gallery
            person_id = enrol(gallery, enroller.card, args.name, shots, details, force=args.force)
            if credential is not None:
                try:
                    gallery.set_credential(person_id, credential)
                except GalleryError:  # the card was given to someone else meanwhile: all or nothing
                    gallery.remove_person(person_id)
                    raise
    print(f"enrolled {args.name!r} as #{person_id} with {len(shots)} template(s) of each model "
          f"({', '.join(card.id for card in enroller.cards)}){credential_text(credential)}")
    return 0


def credential_of(args: argparse.Namespace) -> Credential | None:
    """The card and PIN the options give; None when they give neither."""
    if (args.card_number is None) != (args.facility is None):
        raise UsageError("--card-number and --facility go together")
    card = None if args.card_number is None else checked_card(args.card_format, args.facility, args.card_number)
    pin = hash_pin(read_pin()) if args.pin else None
    return None if card is None and pin is None else Credential(card, pin)


def read_pin() -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("PIN: ")
    return sys.stdin.readline().strip()


def refuse_taken_card(gallery: Gallery, credential: Credential | None) -> None:
    """A quick answer before the models load; Gallery.set_credential checks again when it writes."""
    if credential is None or credential.card is None:
        return
    for holder, held in gallery.credentials().items():
        if held.card == credential.card:
            person = gallery.get_person(holder)
            raise GalleryError(f"card {card_text(credential.card)} already belongs to #{person.id} {person.name!r}")


def card_text(card: Card | None) -> str:
    return "" if card is None else f"{card.format} {card.facility}:{card.number}"


def credential_text(credential: Credential | None) -> str:
    if credential is None:
        return ""
    parts = ([f"card {card_text(credential.card)}"] if credential.card else []) + (["a PIN"] if credential.pin_hash
                                                                                   else [])
    return ", with " + " and ".join(parts)


def cmd_credential(args: argparse.Namespace) -> int:
    if args.clear and (args.card_number is not None or args.pin or args.no_pin):
        raise UsageError("--clear takes no card, --pin or --no-pin")
    given = credential_of(args)
    with open_gallery(args.db) as gallery:
        person = find_person(gallery, args.person)
        held = gallery.credentials().get(person.id, Credential(None, None))
        if args.clear:
            fresh = Credential(None, None)
        elif given is None and not args.no_pin:
            raise UsageError("give --card-number and --facility, --pin, --no-pin or --clear")
        else:
            fresh = Credential(given.card if given and given.card else held.card,
                               None if args.no_pin else given.pin_hash if given and given.pin_hash else held.pin_hash)
        gallery.set_credential(person.id, fresh)  # refuses a card someone else holds
    print(f"{person.name!r} (#{person.id}): " + (credential_text(fresh).removeprefix(", with ") or "no card, no PIN"))
    return 0


def photo_shots(enroller: Enroller, args: argparse.Namespace) -> list[Shot]:
    shots, refusals = judge_files(enroller, args.photo, largest=args.largest, keep_photo=args.keep_photo)
    if refusals:
        raise PhotosRefused(refusals)
    return shots


def camera_shots(enroller: Enroller, args: argparse.Namespace) -> list[Shot]:
    shots, duration = args.shots or 3, args.duration or 20.0
    guide = Guide(sys.stderr)
    with camera_source(args.camera) as source:
        print(f"look at the camera: collecting {shots} good shot(s) for up to {duration:.0f} s", file=sys.stderr)
        try:
            return capture(source, enroller, shots, duration_s=duration, largest=args.largest,
                           keep_photo=args.keep_photo, on_frame=guide)
        finally:
            guide.close()


def camera_source(text: str) -> FrameSource:
    """A camera by index, device path or URL; an existing file or folder stands in for a camera."""
    path = Path(text)
    if not text.isdigit() and not text.startswith("/dev/") and (path.is_file() or path.is_dir()):
        return make_source({"type": "file", "path": text, "pace": "fast"})
    device: int | str = int(text) if text.isdigit() else text
    node = Path(f"/dev/video{device}") if isinstance(device, int) else Path(text) if text.startswith("/") else None
    if node is not None and sys.platform.startswith("linux") and not node.exists():
        raise CameraError(f"camera {text}: {node} does not exist: is the camera plugged in? "
                          "(ls /dev/video* lists the cameras)")
    try:
        return make_source({"type": "opencv", "device": device})
    except SourceConfigError as error:
        raise UsageError(f"--camera {text!r}: {error}") from None


def cmd_add_template(args: argparse.Namespace) -> int:
    with open_gallery(args.db) as gallery:
        person = find_person(gallery, args.person)
        with Enroller.from_models(args.models, card=configured_card(args)) as enroller:
            shots = photo_shots(enroller, args)
            ids = add_shots(gallery, enroller.card, person, shots, force=args.force)
    print(f"added {len(shots)} photo(s) to {person.name!r} (#{person.id}): {len(ids)} template(s), one per photo "
          "and installed model")
    return 0


def cmd_add_folder(args: argparse.Namespace) -> int:
    folders = person_folders(args.folder)
    check_gallery_file(args.db)  # a --db that cannot work is said before the photos are judged
    with Enroller.from_models(args.models, card=configured_card(args)) as enroller:
        print(f"enrolling {len(folders)} people ({sum(map(len, folders.values()))} photos) from {args.folder}",
              file=sys.stderr, flush=True)
        with open_gallery(args.db) if Path(args.db).exists() else nullcontext() as gallery:
            outcomes = judge_folder(gallery, enroller, folders, largest=args.largest, keep_photo=args.keep_photo,
                                    force=args.force, progress=FolderProgress(sys.stderr))
    failed = any(o.failed for o in outcomes)
    if not failed and any(o.shots for o in outcomes):
        with open_gallery(args.db, create=True) as gallery:  # only now: a refused batch leaves no empty gallery
            enrol_judged(gallery, outcomes)
    if args.json:
        print(json.dumps([outcome_json(o) for o in outcomes], indent=1, ensure_ascii=False))
    else:
        print(folder_summary(outcomes))
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_gallery(args.db) as gallery:
        people = gallery.list_people()
        credentials = gallery.credentials()
    nothing = Credential(None, None)
    if args.json:
        print(json.dumps([{**asdict(p), "card": asdict(credentials.get(p.id, nothing)).get("card"),
                           "pin": credentials.get(p.id, nothing).pin_hash is not None} for p in people],
                         indent=1, ensure_ascii=False))
        return 0
    print(table(("id", "name", "external id", "active", "valid from", "valid until", "templates", "card", "pin"),
                [(f"#{p.id}", p.name, p.external_id or "", "yes" if p.active else "no", p.valid_from or "",
                  p.valid_until or "", str(p.template_count), card_text(credentials.get(p.id, nothing).card),
                  "yes" if credentials.get(p.id, nothing).pin_hash else "") for p in people]))
    print(f"{len(people)} people", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_gallery(args.db) as gallery:
        person = find_person(gallery, args.person)
        templates = gallery.templates(person.id)
    rows = [{"id": t.id, "source": t.source, "model_id": t.model_id, "created_at": t.created_at,
             "photo_bytes": len(t.photo_jpeg) if t.photo_jpeg else 0, "quality": t.quality} for t in templates]
    if args.json:
        print(json.dumps({**asdict(person), "templates": rows}, indent=1, ensure_ascii=False))
        return 0
    print(person_text(asdict(person)))
    print(table(("template", "source", "model", "eyes px", "sharpness", "yaw", "pitch", "roll", "rank", "photo",
                 "from"),
                [(f"{r['id']}", r["source"], r["model_id"], figure(r["quality"], "eye_distance", 0),
                  figure(r["quality"], "sharpness", 0), figure(r["quality"], "yaw", 2),
                  figure(r["quality"], "pitch", 2), figure(r["quality"], "roll_degrees", 0),
                  figure(r["quality"], "rank", 2), f"{r['photo_bytes']} B" if r["photo_bytes"] else "",
                  str(r["quality"].get("label", ""))) for r in rows]))
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    with open_gallery(args.db) as gallery:
        person = find_person(gallery, args.person)
        gallery.rename(person.id, args.new_name)
    print(f"renamed #{person.id} {person.name!r} to {args.new_name.strip()!r}")
    return 0


def cmd_set_active(args: argparse.Namespace) -> int:
    with open_gallery(args.db) as gallery:
        person = find_person(gallery, args.person)
        gallery.set_active(person.id, args.active)
    print(f"{'enabled' if args.active else 'disabled'} {person.name!r} (#{person.id})")
    return 0


def cmd_set_validity(args: argparse.Namespace) -> int:
    if args.valid_from is None and args.valid_until is None:
        raise UsageError("give --from DATE and/or --until DATE ('none' clears a bound)")
    with open_gallery(args.db) as gallery:
        person = find_person(gallery, args.person)
        start = person.valid_from if args.valid_from is None else args.valid_from or None
        end = person.valid_until if args.valid_until is None else args.valid_until or None
        gallery.set_validity(person.id, start, end)
    print(f"{person.name!r} (#{person.id}) valid from {start or 'always'} until {end or 'further notice'}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_gallery(args.db) as gallery:
        person = find_person(gallery, args.person)
        if not args.yes and not confirmed(person):
            print("nothing removed", file=sys.stderr)
            return 1
        gallery.remove_person(person.id)
    print(f"removed {person.name!r} (#{person.id}); their {person.template_count} template(s) and photos are erased")
    return 0


def confirmed(person: Person) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("not on a terminal, so nobody can be asked: add --yes to confirm the removal")
    answer = input(f"remove {person.name!r} (#{person.id}) and erase their {person.template_count} template(s) "
                   "and photos for good? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_export(args: argparse.Namespace) -> int:
    model_id = configured_card(args).id
    with open_gallery(args.db) as gallery:
        bundle = export_bundle(gallery, args.file, model_id)
    photos = sum(1 for p in bundle.people for t in p.templates if t.photo_jpeg)
    models = Counter(t.model_id for p in bundle.people for t in p.templates)
    print(f"exported {len(bundle.people)} people ({bundle.template_count} templates, {photos} photos) to {args.file}; "
          "templates by model: " + (", ".join(f"{model} {count}" for model, count in sorted(models.items())) or "none"))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    bundle = read_bundle(args.file)
    card = configured_card(args)
    installed = embedder_cards(args.models, card)
    with open_gallery(args.db, create=True) as gallery:
        if args.reembed:
            with Enroller.from_models(args.models, card=card) as enroller:
                report = import_bundle(gallery, card, bundle, collisions=args.collisions, force=args.force,
                                       reembed=enroller)
        else:
            report = import_bundle(gallery, card, bundle, collisions=args.collisions, force=args.force,
                                   installed=installed)
    print(f"imported {args.file}: {report.added} added, {report.merged} merged, {report.replaced} replaced, "
          f"{report.templates} templates written" +
          (f", {report.skipped_templates} identical ones skipped" if report.skipped_templates else ""))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cards = embedder_cards(args.models, configured_card(args))
    with open_gallery(args.db) as gallery:
        problems = gallery.integrity_report()
        people = gallery.list_people() if not problems else []
        lacking = {card.id: gallery.people_lacking(card.id) for card in cards} if not problems else {}
        photos = gallery.kept_photos() if not problems else {}
    configured = cards[0].id
    missing = lacking.get(configured, [])
    if missing:
        problems.append(f"{len(missing)} of {len(people)} people have no template of {configured!r}, the model the "
                        f"door is configured with, and cannot be recognised: {listed(missing)}")
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, "model": configured,
                          "lacking": {model: [{"id": p.id, "name": p.name, "kept_photos": photos.get(p.id, 0)}
                                              for p in found] for model, found in lacking.items()}},
                         indent=1, ensure_ascii=False))
    elif problems:
        print("\n".join(problems))
    else:
        print(f"ok: {len(people)} people, {sum(p.template_count for p in people)} templates")
    if not args.json:
        for model, found in lacking.items():
            if found and model != configured:
                print(f"note: {len(found)} people have no template of {model!r} (installed, not configured): "
                      f"switching the door to it needs them re-embedded first: {listed(found)}")
        if any(lacking.values()):
            print(reembed_hint([p for found in lacking.values() for p in found], photos))
    return 1 if problems else 0


def reembed_hint(people: list[Person], photos: dict[int, int]) -> str:
    with_photo = len({p.id for p in people if photos.get(p.id)})
    without = len({p.id for p in people}) - with_photo
    return (f"hint: {with_photo} of them have kept photos: `enroll_local.py reembed` embeds those again"
            + (f"; {without} have none and need new photos: enroll_local.py add-template PERSON --photo FILE"
               if without else ""))


def cmd_reembed(args: argparse.Namespace) -> int:
    cards = embedder_cards(args.models, configured_card(args))
    outcomes: list[Reembedded] = []
    with open_gallery(args.db) as gallery:
        people = [find_person(gallery, text) for text in args.people] if args.people else gallery.list_people()
        lacking = {p.id for card in cards for p in gallery.people_lacking(card.id)}
        todo = [p for p in people if p.id in lacking]
        print(f"{len(todo)} of {len(people)} people lack a template of an installed model "
              f"({', '.join(card.id for card in cards)})", file=sys.stderr, flush=True)
        if todo:
            with Enroller.from_models(args.models, card=cards[0]) as enroller:
                for number, person in enumerate(todo, 1):
                    outcomes.append(reembed_person(gallery, enroller, person))
                    print(f"[{number}/{len(todo)}] {reembed_line(outcomes[-1])}", flush=True)
    left = [o for o in outcomes if o.missing]
    print(f"done: {sum(o.added for o in outcomes)} templates added for {len(todo) - len(left)} people"
          + (f"; {len(left)} still lack one: {listed([o.person for o in left])}" if left else ""))
    return 1 if left else 0


def reembed_line(outcome: Reembedded) -> str:
    person = f"{outcome.person.name!r} (#{outcome.person.id})"
    line = f"{person}: {outcome.added} template(s) added from {outcome.photos} kept photo(s)"
    if outcome.refused:
        line += "; refused: " + "; ".join(f"{r.label}: {', '.join(r.reasons)}" for r in outcome.refused)
    if outcome.missing:
        line += (f"; still no template of {', '.join(outcome.missing)}: add photos with "
                 f"add-template '#{outcome.person.id}' --photo FILE")
    return line


def cmd_rebuild_index(args: argparse.Namespace) -> int:
    with open_gallery(args.db) as gallery:
        for card in embedder_cards(args.models, configured_card(args)):
            index = GalleryIndex.build(gallery.snapshot(card.id), card, args.kind)
            index.save(gallery.index_dir)
            print(f"indexed {index.count} templates of {index.people} people with {card.id} ({args.kind}, "
                  f"generation {index.generation}) in {gallery.index_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from daemon.events import check_event_log
    from desk.settings import DeskSettings, DeskSettingsError, check_listen, parse_listen

    try:
        host, port = parse_listen(args.listen)
        check_listen(host, args.tls_cert, args.tls_key, args.insecure_http)
    except DeskSettingsError as error:
        raise UsageError(str(error)) from None
    try:
        from desk.server import serve
    except ImportError as error:
        raise EnrolmentError(f"the desk needs its extra: pip install 'facegate[desk]' ({error})") from None
    events = args.events or Path(args.db).with_name("events.db")
    check_gallery_file(args.db)
    check_event_log(events)
    if args.mqtt is not None:
        mqtt_settings(args.mqtt)  # a bad broker config is said now, not on the Doors page
    desk_db = args.desk_db or Path(args.db).with_name("desk.db")
    serve(DeskSettings(gallery=Path(args.db), events=events, desk_db=desk_db, models=args.models,
                       card=configured_card(args), host=host, port=port, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, mqtt_config=args.mqtt, signing_key=args.key,
                       publish=publish_gallery))
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from desk.operators import OperatorStore, checked_password

    desk_db = args.desk_db or Path(args.db).with_name("desk.db")
    store = OperatorStore(desk_db)
    try:
        if store.exists(args.operator_name):
            raise EnrolmentError(f"an operator named {args.operator_name.strip()!r} already exists in {desk_db}")
        password = checked_password(read_secret("password: "), read_secret("again: "))
        operator = store.add(args.operator_name, args.role, password)
    finally:
        store.close()
    print(f"operator {escaped(operator.name)!r} ({operator.role}) added to {desk_db}")
    return 0


def read_secret(prompt: str) -> str:
    """A password from the terminal without echo, or one line of stdin when not on a terminal."""
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


def cmd_keygen(args: argparse.Namespace) -> int:
    public = public_key_path(args.key)
    generate_keypair(args.key, public)
    print(f"private key: {args.key} (owner-only: it stays at the front desk; whoever holds it can change every "
          "door's gallery)")
    print(f"public key:  {public} (copy it to each door and set mqtt.gallery_public_key to its path there)")
    return 0


def public_key_path(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def cmd_publish(args: argparse.Namespace) -> int:
    settings = mqtt_settings(args.mqtt)
    key = load_private_key(args.key)
    model_id = configured_card(args).id
    with open_gallery(args.db) as gallery:
        if not args.allow_empty and not gallery.list_people():
            raise EnrolmentError(f"{args.db} holds nobody: publishing it would erase everyone at every door; check "
                                 "--db, or add --allow-empty if that is what you want")
        published = publish_gallery(gallery, model_id, key, settings, args.version, args.sender, args.timeout)
    if args.json:
        print(json.dumps(asdict(published), indent=1, ensure_ascii=False))
    else:
        print(f"published gallery version {published.version} from {published.sender!r}: {published.people} people, "
              f"{published.templates} templates, {published.bytes} bytes, retained on {published.topic}")
    return 0


@dataclass(frozen=True)
class Published:
    version: int
    sender: str
    people: int
    templates: int
    bytes: int  # the signed payload
    topic: str


def publish_gallery(gallery: Gallery, model_id: str, key: Ed25519PrivateKey, settings: MqttSettings,
                    version: int | None = None, sender: str | None = None, timeout_s: float = 30.0) -> Published:
    """Sign the whole gallery as a bundle and publish it retained, QoS 1, on settings.gallery_topic.

    version defaults to the gallery's generation (1 for a gallery never written), sender to the
    mqtt client id. Returns once the broker has confirmed it; PublishError otherwise.
    """
    version = version or max(gallery.generation(), 1)
    sender = sender or settings.client_id
    zip_bytes = bundle_bytes(gallery, model_id, version, sender)
    bundle = read_bundle_bytes(zip_bytes, "the bundle to publish")  # what the doors will read, checked before it leaves
    payload = sign_bundle(zip_bytes, key)
    send_retained(settings, settings.gallery_topic, payload, timeout_s)
    return Published(version, sender, len(bundle.people), bundle.template_count, len(payload), settings.gallery_topic)


def send_retained(settings: MqttSettings, topic: str, payload: bytes, timeout_s: float) -> None:
    """Connect, publish retained with QoS 1, wait for the broker's PUBACK, disconnect: all within timeout_s."""
    import paho.mqtt.client as mqtt

    broker = f"the broker at {settings.host}:{settings.port}"
    deadline = time.monotonic() + timeout_s
    client = make_client(settings, client_id=f"{settings.client_id}-publish")
    client.connect_timeout = timeout_s
    answers: list[Any] = []
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answers.append(reason_code)
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, settings.keepalive)
    except (OSError, ValueError) as error:  # refused, unreachable, no such host, TLS handshake
        raise PublishError(f"cannot reach {broker}: {error}: check mqtt.host, mqtt.port and mqtt.tls, and that the "
                           "broker runs; nothing was published") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise PublishError(f"{broker} did not answer the connection within {timeout_s:g} s; nothing was published")
        if answers[0].is_failure:
            raise PublishError(f"{broker} refused the connection: {answers[0]}: check mqtt.username and "
                               "mqtt.password_file (and the broker's ACL for the gallery topic); nothing was published")
        info = client.publish(topic, payload, qos=1, retain=True)
        try:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.1))
        except (ValueError, RuntimeError) as error:
            raise PublishError(f"cannot publish to {broker}: {error}") from None
        if not info.is_published():
            raise PublishError(f"{broker} did not confirm the bundle ({len(payload)} bytes) on {topic} within "
                               f"{timeout_s:g} s: is it over the broker's message_size_limit? The doors keep their "
                               "gallery")
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_settings(path: Path) -> MqttSettings:
    """The mqtt section of a facegate config file, its defaults as for a door named front-desk."""
    try:
        raw = read_yaml(path)
    except ConfigError as error:
        raise ConfigError(f"--mqtt: {error}") from None
    try:
        settings = parse_mqtt(raw.get("mqtt") if isinstance(raw, dict) else None, door_name=PUBLISH_DOOR_NAME)
    except ConfigError as error:
        raise ConfigError(f"--mqtt {path}: {error}") from None
    if settings is None:
        raise ConfigError(f"--mqtt {path}: no mqtt.host: expected an mqtt: section naming the broker to publish to")
    return settings


def configured_card(args: argparse.Namespace) -> ModelCard:
    """The embedder card the door uses: --card (a card file or an id in --models), else --models' default."""
    if args.card is None:
        return find_card(args.models, "embedder")
    path = Path(args.card)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        card = load_card(path)
        if card.role != "embedder":
            raise UsageError(f"--card {args.card}: a card of role {card.role!r}, not an embedder card")
        return card
    installed = cards_of(args.models, "embedder")
    for card in installed:
        if card.id == args.card:
            return card
    raise UsageError(f"--card {args.card!r}: no embedder card of that id in {args.models} (installed: "
                     f"{', '.join(c.id for c in installed) or 'none'}); give a card id or a card file")


def open_gallery(path: str, create: bool = False) -> Gallery:
    """The gallery; only enrolling commands create a missing one, so a mistyped --db is not a new empty gallery."""
    if not create and not Path(path).exists():
        folder = Path(path).parent
        missing = "" if folder.is_dir() else f" (the folder {folder} does not exist)"
        raise EnrolmentError(f"no gallery at {path}{missing}: check --db, or enrol someone first")
    return Gallery.open(path)


# --- console output ------------------------------------------------------------------------------


class Guide:
    """Live camera guidance: one updating line on a terminal, a line per change of advice otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def __call__(self, verdict: Shot | Refusal, good: int) -> None:
        advice = "good, hold it" if isinstance(verdict, Shot) else verdict.hint
        if self.tty:
            self.stream.write(f"\r\x1b[K[{good} good frames] {advice}")
            self.stream.flush()
        elif advice != self.last:
            print(f"[{good} good frames] {advice}", file=self.stream, flush=True)
        self.last = advice

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


class FolderProgress:
    """Count, current person and ETA: an updating line on a terminal, a line per person otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.shown = -1  # off a terminal: the person whose line was printed last

    def __call__(self, progress: Progress) -> None:
        if progress.people_done == progress.people:
            if self.tty:
                self.stream.write("\r\x1b[K")
            print(f"done: {progress.photos} photos in {duration(time.monotonic() - self.started)}",
                  file=self.stream, flush=True)
            return
        line = (f"[{progress.people_done + 1}/{progress.people}] {escaped(progress.person)}: "
                f"{progress.photos_done}/{progress.photos} photos done, ETA {self.eta(progress)}")
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
        elif progress.people_done != self.shown:
            print(line, file=self.stream, flush=True)
        self.shown = progress.people_done

    def eta(self, progress: Progress) -> str:
        if not progress.photos_done:
            return "--:--"
        elapsed = time.monotonic() - self.started
        return duration(elapsed / progress.photos_done * (progress.photos - progress.photos_done))


def duration(secs: float) -> str:
    minutes, secs = divmod(int(round(secs)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def folder_summary(outcomes: list[PersonOutcome]) -> str:
    already = sum(o.already for o in outcomes)
    refused = [r for o in outcomes for r in o.refused]
    problems = [o for o in outcomes if o.problem]
    if not refused and not problems:
        enrolled = [o for o in outcomes if o.person_id is not None]
        return (f"enrolled {len(enrolled)} people ({sum(o.enrolled for o in enrolled)} photos); {already} already "
                "enrolled, left alone")
    lines = [f"nobody was enrolled, the gallery is unchanged: {len(refused)} photo(s) refused and {len(problems)} "
             "people who cannot be enrolled; fix or remove them and run again (a folder is enrolled all or nothing)"]
    if refused:
        lines.append(f"refused photos ({len(refused)}):")
        lines += [f"  {escaped(refusal.label)}: {'; '.join(refusal.reasons)}" for refusal in refused]
    if problems:
        lines.append("cannot be enrolled:")
        lines += [f"  {escaped(o.name)}: {o.problem}" for o in problems]
    return "\n".join(lines)


def outcome_json(outcome: PersonOutcome) -> dict[str, Any]:
    return {"name": outcome.name, "person_id": outcome.person_id, "photos": outcome.photos,
            "enrolled": outcome.enrolled, "already": outcome.already, "problem": outcome.problem,
            "refused": [{"photo": r.label, "reasons": r.reasons} for r in outcome.refused]}


def person_text(person: dict[str, Any]) -> str:
    validity = f"{person['valid_from'] or 'always'} .. {person['valid_until'] or 'further notice'}"
    fields = (("id", f"#{person['id']}"), ("name", person["name"]), ("external id", person["external_id"] or ""),
              ("active", "yes" if person["active"] else "no"), ("valid", validity), ("note", person["note"] or ""),
              ("created", person["created_at"]), ("updated", person["updated_at"]),
              ("templates", str(person["template_count"])))
    return "\n".join(f"{key:<12} {escaped(value)}" for key, value in fields)


def figure(quality: dict[str, Any], key: str, decimals: int) -> str:
    value = quality.get(key)
    return f"{value:.{decimals}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    cells = [[escaped(" ".join(str(value).split())) for value in row] for row in rows]  # a row stays one line
    widths = [max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)]
    lines = [columns] + cells
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="enroll_local: %(message)s")
    try:
        return args.handler(args)
    except UsageError as error:
        print(f"enroll_local {args.command}: {error}", file=sys.stderr)
        return 2
    except FAILURES as error:
        print(f"enroll_local {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"enroll_local {args.command}: interrupted; whatever was confirmed is stored whole, nothing is "
              "half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
