"""python -m daemon run | check-config | demo"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from daemon import config as config_module
from daemon.door import PinFactoryError, check_pin_factory_library
from daemon.settings import ConfigError

EPILOG = """examples:
  python -m daemon run --config /etc/facegate/config.yaml
  python -m daemon run /etc/facegate/config.yaml
  python -m daemon check-config daemon/config.example.yaml
  python -m daemon demo --annotate /tmp/door.mp4
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon", description="facegate door daemon",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the door (systemd runs this)")
    check = commands.add_parser("check-config", help="validate a config file, and that its GPIO library imports here, and exit")
    for command in (run, check):  # the file either way: `run CONFIG` and `check-config --config CONFIG` too
        command.add_argument("file", type=Path, nargs="?", metavar="CONFIG",
                             help=f"the config file (default {config_module.DEFAULT_PATH})")
        command.add_argument("--config", type=Path, help="the config file, as the positional CONFIG")
    demo = commands.add_parser("demo", help="the daemon on the bundled clip, mock GPIO, temporary state")
    demo.add_argument("--annotate", type=Path, metavar="OUT.mp4", help="also write the clip with boxes, names and door state")
    demo.add_argument("--fast", action="store_true", help="process every frame as fast as possible instead of in real time")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from daemon.demo import run_demo

        return run_demo(annotate=args.annotate, fast=args.fast)
    if args.file is not None and args.config is not None and args.file != args.config:
        commands.choices[args.command].error(f"two config files given, {args.file} and --config {args.config}: "
                                             f"give one")
    path = args.file or args.config or config_module.DEFAULT_PATH
    if args.command == "check-config":
        return check_config(path)
    return serve(path)


def check_config(path: Path) -> int:
    try:
        config = config_module.load(path)
    except ConfigError as error:
        print(f"invalid: {error}", file=sys.stderr)
        return 1
    try:  # the daemon would refuse to start here without the GPIO library the config names
        check_pin_factory_library(config.door.pin_factory)
    except PinFactoryError as error:
        print(f"{path}: valid, but cannot run on this machine: {error}", file=sys.stderr)
        return 1
    from daemon.events import EventLogError
    from daemon.gallery import GalleryError
    from daemon.sqlite_files import check_state_files

    try:  # nor with a gallery or event log it cannot open
        check_state_files(config.gallery.path, config.events.path)
    except (GalleryError, EventLogError) as error:
        print(f"{path}: valid, but cannot run on this machine: {error}", file=sys.stderr)
        return 1
    print(f"{path}: valid")
    for line in threshold_report(config):
        print(line)
    return 0


def threshold_report(config: config_module.Config) -> list[str]:
    """The match threshold this door decides with, for its gallery now (where the file is there) and for
    100, 1,000 and 10,000 people of three photos, with the FPIR and TPIR the embedder card leads to expect."""
    import sqlite3

    from daemon.decision import threshold_in_force
    from daemon.gallery import Gallery, GalleryError

    sizes = []
    if config.gallery.path.exists():
        try:
            with Gallery.open(config.gallery.path) as gallery:
                count = len(gallery.snapshot(config.embedder.id, with_vectors=False).template_ids)
            sizes.append((f"the gallery now, {count} templates", count))
        except (GalleryError, OSError, sqlite3.Error) as error:
            sizes.append((f"the gallery cannot be read ({error}); 1 template", 1))
    sizes += [(f"{people:,} people x 3 photos", 3 * people) for people in (100, 1_000, 10_000)]
    lines = []
    for label, count in sizes:
        threshold = threshold_in_force(config.decision, config.embedder, count)
        fpir = "" if threshold.expected_fpir is None else f", FPIR {threshold.expected_fpir:.1e} per probe"
        tpir = "" if threshold.expected_tpir is None else f", TPIR about {threshold.expected_tpir:.1%} per image"
        lines.append(f"threshold for {label}: {threshold.value:.4f}{fpir}{tpir}")
    card = config.embedder
    if config.decision.threshold is not None or card.impostor_tail is None:
        origin = threshold.source
    else:
        origin = f"decision.max_fpir {config.decision.max_fpir:g} and the impostor tail in {card.path}"
    lines.append(f"  from {origin}" + ("" if card.tpir_source is None else f"; TPIR measured {card.tpir_source}"))
    return lines


def serve(path: Path) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # faiss logs at INFO which CPU build it loads, "Could not load library with AVX512 support" among
    # them, before the gallery is opened: an operator reads those as errors. Its warnings still show.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        config = config_module.load(path)
    except ConfigError as error:
        logging.getLogger("facegate").error("refusing to start: %s", error)
        return 1
    logging.getLogger("facegate").setLevel(config.log_level)
    from daemon.events import EventLogError
    from daemon.gallery import GalleryError
    from daemon.service import DoorService

    try:
        service = DoorService(config)
    except (GalleryError, EventLogError) as error:  # the door released, nothing changed on disk
        logging.getLogger("facegate").error("refusing to start: %s", error)
        return 1
    service.install_signal_handlers()
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
