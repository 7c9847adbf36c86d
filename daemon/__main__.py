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
    return 0


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
