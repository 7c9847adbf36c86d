#!/usr/bin/env python3
"""List and export the door's event log (grants, denials, unknown faces, alarms, relay).

Reads the log read-only, so it is safe while the service runs. Times given without a zone
are local time; --since/--until also take a relative age such as 30m, 12h or 7d.

examples:
  python tools/events.py --db /var/lib/facegate/events.db list --since 24h
  python tools/events.py list --kind deny --kind unknown_face --limit 50
  python tools/events.py list --person E1001 --since 2026-11-01 --json
  python tools/events.py export --format csv -o november.csv --since 2026-11-01 --until 2026-12-01
  python tools/events.py export --format json --kind alarm_forced_open,alarm_held_open

The filters and --db go before or after the command; kinds given in both places add up.

exit status: 0 ok, 1 the log could not be read or written out, 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.cli_options import common_options, default  # noqa: E402
from daemon.events import Event, EventLogError, EventReader  # noqa: E402
from daemon.gallery import escaped  # noqa: E402

DEFAULT_DB = "/var/lib/facegate/events.db"
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def when(text: str) -> datetime:
    """An ISO date/datetime (local time unless it names a zone) or an age like 12h."""
    age = _AGE.match(text)
    if age:
        return datetime.now().astimezone() - timedelta(**{_UNITS[age[2]]: float(age[1])})
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: expected YYYY-MM-DD[THH:MM[:SS]][+zone] "
                                         f"or an age such as 30m, 12h, 7d") from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected a positive whole number")
    return int(text)


def filters(parser: argparse.ArgumentParser, before: bool) -> None:
    parser.add_argument("--db", default=default(DEFAULT_DB, before), help=f"the event log (default {DEFAULT_DB})")
    parser.add_argument("--since", type=when, default=default(None, before), help="from this time on (inclusive)")
    parser.add_argument("--until", type=when, default=default(None, before), help="before this time")
    # Its own dest after the command, so that kinds given before and after it add up.
    parser.add_argument("--kind", action="append", dest="kind" if before else "kind_after_command",
                        default=default([], before),
                        help="only these kinds (repeat or comma-separate): grant, deny, unknown_face, "
                             "exit_request, alarm_held_open, alarm_forced_open, relay_on, relay_off, fault, ...")
    parser.add_argument("--person", default=default(None, before), help="a person's name, external id or gallery id")
    parser.add_argument("--limit", type=positive, default=default(None, before), help="only the newest N events")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="events.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parent = common_options(top, filters)
    commands = top.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[parent], help="print events as a table")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    export = commands.add_parser("export", parents=[parent], help="write events as CSV or JSON")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    return top


def _cell(text: str, width: int) -> str:
    """One line of at most width characters, escaped: a table row must stay one row, and a name or reason
    may not move the cursor or recolour the terminal."""
    text = escaped(" ".join(text.split()))
    return text if len(text) <= width else text[:width - 1] + "…"


def table(events: list[Event]) -> str:
    columns = ("id", "time", "door", "kind", "person", "score", "track", "reason")
    rows = [(str(e.id), e.time, e.door or "", e.kind,
             _cell(e.person_name or e.external_id or ("" if e.person_id is None else f"#{e.person_id}"), 60),
             "" if e.score is None else f"{e.score:.3f}", "" if e.track_id is None else str(e.track_id),
             _cell(e.reason or "", 80)) for e in events]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    kinds = args.kind + getattr(args, "kind_after_command", [])
    query = {"since": args.since, "until": args.until, "person": args.person, "limit": args.limit,
             "kinds": [k.strip() for item in kinds for k in item.split(",") if k.strip()] or None}
    try:
        with EventReader(args.db) as reader:
            if args.command == "list":
                events = reader.query(**query)
                if args.json:
                    for event in events:
                        print(json.dumps(asdict(event), ensure_ascii=False))
                else:
                    print(table(events))
                    print(f"{len(events)} events", file=sys.stderr)
            else:
                out = args.output if args.output else sys.stdout
                export = reader.export_csv if args.format == "csv" else reader.export_json
                count = export(out, **query)
                print(f"{count} events exported{' to ' + args.output if args.output else ''}", file=sys.stderr)
    except (EventLogError, OSError) as error:
        print(f"events: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
