"""The access policy: may this recognised person open this door now?

Built from the config's `policy` section. A person is let in when they are active, inside
their validity dates, and at least one rule that applies to them lets them through the door
at this local time. Rules come from the groups that list the person (by external id or name),
from a personal entry under `people`, and — for people in no group — from the default group.
A rule names its doors ('*' for all), its weekly schedule ('always' or time windows) and
whether it holds on holidays. Every denial says why, so the event log answers "why was I
not let in".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from daemon.settings import ConfigError, Section

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
ALL_DOORS = "*"
_CLOCK = re.compile(r"^(\d{1,2}):([0-5]\d)$")


class PolicyConfigError(ConfigError):
    """A policy config value outside what is allowed; the message names its key path."""


class PersonView(Protocol):
    """What the policy reads from a person (the gallery's Person fits)."""

    @property
    def name(self) -> str: ...
    @property
    def external_id(self) -> str | None: ...
    @property
    def active(self) -> bool | int: ...
    @property
    def valid_from(self) -> date | datetime | str | None: ...
    @property
    def valid_until(self) -> date | datetime | str | None: ...


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class Window:
    """A weekly time window. end <= start crosses midnight: the window opens on one of
    `days` and runs on into the next day (fri 22:00-02:00 covers Saturday 01:00)."""

    days: frozenset[int]  # datetime.weekday() numbers
    start: int  # seconds since local midnight
    end: int  # 1 .. 86400

    def contains(self, local: datetime) -> bool:
        t = local.hour * 3600 + local.minute * 60 + local.second
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= t < self.end
        return (day in self.days and t >= self.start) or ((day - 1) % 7 in self.days and t < self.end)


@dataclass(frozen=True)
class Rule:
    label: str  # 'group staff' or 'person E1001', as deny reasons name it
    doors: frozenset[str]
    windows: tuple[Window, ...] | None  # None: always
    holidays: bool

    def permits_door(self, door: str) -> bool:
        return ALL_DOORS in self.doors or door in self.doors

    def open_at(self, local: datetime) -> bool:
        return self.windows is None or any(w.contains(local) for w in self.windows)


class Policy:
    def __init__(self, timezone: tzinfo, groups: dict[str, Rule], members: dict[str, tuple[str, ...]],
                 people: dict[str, Rule], default_group: str | None, holidays: frozenset[date]) -> None:
        """Prefer from_config(); members maps an external id or name to its group names."""
        self.timezone = timezone
        self.groups = groups
        self.members = members
        self.people = people
        self.default_group = default_group
        self.holidays = holidays

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, path: str = "policy") -> Policy:
        try:
            return _build(section, path)
        except PolicyConfigError:
            raise
        except ConfigError as error:
            raise PolicyConfigError(str(error)) from None

    def rules_for(self, person: PersonView) -> list[Rule]:
        keys = [person.name] + ([str(person.external_id)] if person.external_id not in (None, "") else [])
        names: list[str] = []
        for key in keys:
            names += [g for g in self.members.get(key, ()) if g not in names]
        if not names and self.default_group is not None:
            names = [self.default_group]
        return [self.groups[g] for g in names] + [self.people[k] for k in keys if k in self.people]

    def allows(self, person: PersonView, door: str, now: datetime) -> Verdict:
        """now must be timezone-aware; schedules and holidays are read in the policy's time zone."""
        if now.tzinfo is None:
            raise ValueError("Policy.allows needs a timezone-aware now (e.g. datetime.now(timezone.utc))")
        if not person.active:
            return Verdict(False, "inactive")
        for field in ("valid_from", "valid_until"):
            raw = getattr(person, field)
            try:
                moment = _moment(raw, self.timezone, end_of_day=field == "valid_until")
            except ValueError:  # a bad date in the gallery locks that person out, never everyone
                return Verdict(False, f"invalid {field} {raw!r}")
            if moment is None:
                continue
            if field == "valid_from" and now < moment:
                return Verdict(False, f"not yet valid until {_show(raw)}")
            if field == "valid_until" and now >= moment:
                return Verdict(False, f"expired on {_show(raw)}")
        rules = self.rules_for(person)
        if not rules:
            return Verdict(False, "no access rule: in no group and no default group")
        rules = [r for r in rules if r.permits_door(door)]
        if not rules:
            return Verdict(False, f"no permission for door {door}")
        local = now.astimezone(self.timezone)
        if local.date() in self.holidays:
            rules = [r for r in rules if r.holidays]
            if not rules:
                return Verdict(False, f"holiday {local.date().isoformat()}")
        for rule in rules:
            if rule.open_at(local):
                return Verdict(True, f"allowed by {rule.label}")
        return Verdict(False, "outside schedule of " + ", ".join(r.label for r in rules))


def _moment(value: date | datetime | str | None, tz: tzinfo, end_of_day: bool) -> datetime | None:
    """A validity bound as an aware datetime; a bare date means the whole local day (a
    valid_until date is still valid on that day)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=tz)
    if isinstance(value, date):
        day = value + timedelta(days=1) if end_of_day else value
        return datetime.combine(day, time(0), tz)
    raise ValueError(f"not a date: {value!r}")


def _show(value: date | datetime | str) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


# -- config ---------------------------------------------------------------------------

def _build(section: dict[str, Any] | None, path: str) -> Policy:
    top = Section(section, path, {"timezone", "holidays", "default_group", "groups", "people"})
    zone = top.get("timezone", str)
    try:
        timezone = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        top.fail("timezone", zone, "an IANA time zone name such as 'Europe/Berlin' or 'UTC'")
    holidays = frozenset(_holiday(top, i, d) for i, d in enumerate(_list(top, "holidays")))

    groups: dict[str, Rule] = {}
    members: dict[str, tuple[str, ...]] = {}
    raw_groups = top.get("groups", dict, None) or {}  # an empty YAML mapping reads as null
    for name, raw in raw_groups.items():
        group = Section(raw, f"{top.key('groups')}.{name}", {"members", "doors", "schedule", "holidays"})
        groups[str(name)] = _rule(group, f"group {name}")
        for i, member in enumerate(_list(group, "members")):
            if isinstance(member, bool) or not isinstance(member, (str, int)) or member == "":
                raise PolicyConfigError(f"{group.key('members')}[{i}] = {member!r} is not allowed: "
                                        f"expected a person's external id or name")
            members[str(member)] = members.get(str(member), ()) + (str(name),)

    default_group = top.get("default_group", str, None)
    if default_group is not None and default_group not in groups:
        top.fail("default_group", default_group, f"one of the groups {sorted(groups)} or null for no access")

    people: dict[str, Rule] = {}
    raw_people = top.get("people", dict, None) or {}
    for key, raw in raw_people.items():
        person = Section(raw, f"{top.key('people')}.{key}", {"doors", "schedule", "holidays"})
        people[str(key)] = _rule(person, f"person {key}")
    return Policy(timezone, groups, members, people, default_group, holidays)


def _list(section: Section, name: str) -> list[Any]:
    return section.get(name, list, None) or []


def _holiday(section: Section, index: int, value: Any) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    elif isinstance(value, date) and not isinstance(value, datetime):
        return value
    raise PolicyConfigError(f"{section.key('holidays')}[{index}] = {value!r} is not allowed: expected a date YYYY-MM-DD")


def _rule(section: Section, label: str) -> Rule:
    doors = section.get("doors", (list, str))
    if doors == ALL_DOORS:
        doors = [ALL_DOORS]
    elif isinstance(doors, str) or not doors or not all(isinstance(d, str) and d for d in doors):
        section.fail("doors", doors, f"a non-empty list of door names, or '{ALL_DOORS}' for every door")
    schedule = section.get("schedule", (list, str))
    if schedule == "always":
        windows = None
    elif isinstance(schedule, str) or not schedule:
        section.fail("schedule", schedule, "'always' or a non-empty list of {days, start, end} windows")
    else:
        windows = tuple(_window(Section(w, f"{section.key('schedule')}[{i}]", {"days", "start", "end"}))
                        for i, w in enumerate(schedule))
    return Rule(label, frozenset(doors), windows, section.get("holidays", bool, False))


def _window(section: Section) -> Window:
    days = section.get("days", (list, str))
    names = [d.lower() if isinstance(d, str) else d for d in days] if isinstance(days, list) else None
    if not names or not all(d in DAYS for d in names):
        section.fail("days", days, f"a list of day names from {', '.join(DAYS)}, e.g. [mon, tue, wed, thu, fri]")
    start = _clock(section, "start")
    end = _clock(section, "end")
    if start == 86400:
        section.fail("start", section.raw["start"], "a time from 00:00 to 23:59 (24:00 is only an end)")
    if start == end:
        section.fail("end", section.raw["end"], "a time other than the start (use start 00:00, end 24:00 for all day)")
    return Window(frozenset(DAYS.index(d) for d in names), start, end)


def _clock(section: Section, name: str) -> int:
    """'HH:MM' as seconds since midnight; 24:00 ends a window at midnight."""
    value = section.get(name, (str, int, time))
    if isinstance(value, time):
        return value.hour * 3600 + value.minute * 60 + value.second
    if isinstance(value, int):
        # YAML 1.1 (PyYAML) reads an unquoted 07:30 as the base-60 integer 450.
        section.fail(name, value, f"a quoted 'HH:MM' time (unquoted, YAML reads 'HH:MM' as a number: "
                                  f"write '{value // 60:02d}:{value % 60:02d}' in quotes)")
    match = _CLOCK.match(value)
    seconds = int(match[1]) * 3600 + int(match[2]) * 60 if match else -1
    if not 0 <= seconds <= 86400:
        section.fail(name, value, "a time 'HH:MM' from 00:00 to 24:00")
    return seconds
