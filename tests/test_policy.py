"""The access policy: schedules, time zones, holidays, doors, validity, and config errors."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest
import yaml

from daemon.policy import Policy, PolicyConfigError, Verdict

BERLIN = ZoneInfo("Europe/Berlin")

# As it appears in config.yaml; read with PyYAML like the daemon does (dates become date objects).
CONFIG = """
timezone: Europe/Berlin
holidays: [2026-12-25, '2026-12-26']
default_group: visitors
groups:
  staff:
    members: [E1001, Bob]
    doors: '*'
    schedule:
      - {days: [mon, tue, wed, thu, fri], start: '07:00', end: '19:00'}
      - {days: [Sat], start: '09:00', end: '13:00'}
  cleaners:
    members: [1002]
    doors: [front-door]
    schedule:
      - {days: [fri], start: '22:00', end: '02:00'}
  security:
    members: [E3003]
    doors: '*'
    schedule: always
    holidays: true
  visitors:
    doors: [front-door]
    schedule:
      - {days: [mon, tue, wed, thu, fri], start: '09:00', end: '17:00'}
people:
  E1001: {doors: [server-room], schedule: always}
"""


@dataclass
class Person:
    name: str
    external_id: str | None = None
    active: bool | int = True
    valid_from: object = None
    valid_until: object = None


@pytest.fixture
def policy() -> Policy:
    return Policy.from_config(yaml.safe_load(CONFIG))


def berlin(*args) -> datetime:
    """A moment given in Berlin wall-clock time, handed to the policy in UTC like the daemon does."""
    return datetime(*args, tzinfo=BERLIN).astimezone(timezone.utc)


ALICE = Person("Alice", "E1001")
BOB = Person("Bob")  # listed by name
CLEANER = Person("Carla", "1002")  # listed as an unquoted YAML number
GUARD = Person("Dan", "E3003")
STRANGER = Person("Eve", "E9999")  # in no group: the default group applies

# 2026-11-23 is a Monday, 2026-11-27 a Friday.


def test_allowed_inside_the_weekly_window(policy):
    assert policy.allows(ALICE, "front-door", berlin(2026, 11, 23, 8, 0)) == Verdict(True, "allowed by group staff")
    assert policy.allows(BOB, "back-door", berlin(2026, 11, 28, 10, 0)).allowed  # Saturday window


@pytest.mark.parametrize("moment", [
    (2026, 11, 23, 6, 59),  # before the start
    (2026, 11, 23, 19, 0),  # the end is exclusive
    (2026, 11, 29, 10, 0),  # Sunday
    (2026, 11, 28, 13, 30),  # Saturday afternoon
])
def test_outside_schedule_names_the_group(policy, moment):
    assert policy.allows(BOB, "front-door", berlin(*moment)) == Verdict(False, "outside schedule of group staff")


@pytest.mark.parametrize("moment, allowed", [
    ((2026, 11, 27, 21, 59), False),  # Friday before the window
    ((2026, 11, 27, 22, 0), True),  # Friday night
    ((2026, 11, 27, 23, 59), True),
    ((2026, 11, 28, 0, 0), True),  # after midnight, still Friday's window
    ((2026, 11, 28, 1, 59), True),
    ((2026, 11, 28, 2, 0), False),  # the window ends
    ((2026, 11, 28, 22, 30), False),  # Saturday is not a start day
    ((2026, 11, 27, 1, 0), False),  # Friday early morning belongs to Thursday, not listed
])
def test_window_crossing_midnight(policy, moment, allowed):
    verdict = policy.allows(CLEANER, "front-door", berlin(*moment))
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.reason == "outside schedule of group cleaners"


def test_schedule_is_read_in_the_configured_time_zone_across_daylight_saving(policy):
    # 05:30 UTC is 07:30 in Berlin in summer (CEST) but 06:30 in winter (CET)
    assert policy.allows(BOB, "front-door", datetime(2026, 7, 1, 5, 30, tzinfo=timezone.utc)).allowed
    assert not policy.allows(BOB, "front-door", datetime(2026, 1, 14, 5, 30, tzinfo=timezone.utc)).allowed
    new_york = Policy.from_config({**yaml.safe_load(CONFIG), "timezone": "America/New_York"})
    # 10:30 UTC on a Monday in July: 12:30 in Berlin, 06:30 in New York
    moment = datetime(2026, 7, 6, 10, 30, tzinfo=timezone.utc)
    assert policy.allows(BOB, "front-door", moment).allowed
    assert not new_york.allows(BOB, "front-door", moment).allowed


def test_now_must_be_timezone_aware(policy):
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.allows(BOB, "front-door", datetime(2026, 11, 23, 8, 0))


def test_holidays_only_let_in_rules_marked_for_them(policy):
    christmas = berlin(2026, 12, 25, 10, 0)  # a Friday, inside staff hours
    assert policy.allows(BOB, "front-door", christmas) == Verdict(False, "holiday 2026-12-25")
    assert policy.allows(GUARD, "front-door", christmas) == Verdict(True, "allowed by group security")
    assert policy.allows(BOB, "front-door", berlin(2026, 12, 26, 10, 0)) == Verdict(False, "holiday 2026-12-26")


def test_holiday_is_the_local_date(policy):
    # 23:30 UTC on the 24th is already the 25th in Berlin
    assert policy.allows(CLEANER, "front-door", datetime(2026, 12, 24, 23, 30, tzinfo=timezone.utc)) == \
        Verdict(False, "holiday 2026-12-25")


def test_door_permission(policy):
    monday = berlin(2026, 11, 23, 22, 30)
    assert policy.allows(CLEANER, "back-door", berlin(2026, 11, 27, 23, 0)) == \
        Verdict(False, "no permission for door back-door")
    assert policy.allows(GUARD, "any-door-at-all", monday).allowed  # '*'


def test_personal_rule_adds_to_the_groups(policy):
    sunday_night = berlin(2026, 11, 29, 23, 0)
    assert policy.allows(ALICE, "server-room", sunday_night) == Verdict(True, "allowed by person E1001")
    assert policy.allows(ALICE, "front-door", sunday_night) == Verdict(False, "outside schedule of group staff")
    assert policy.allows(BOB, "server-room", berlin(2026, 11, 23, 8, 0)).allowed  # staff has '*'
    assert policy.allows(BOB, "server-room", sunday_night) == Verdict(False, "outside schedule of group staff")


def test_default_group_for_people_in_no_group(policy):
    assert policy.allows(STRANGER, "front-door", berlin(2026, 11, 23, 10, 0)) == \
        Verdict(True, "allowed by group visitors")
    assert policy.allows(STRANGER, "back-door", berlin(2026, 11, 23, 10, 0)) == \
        Verdict(False, "no permission for door back-door")
    closed = Policy.from_config({**yaml.safe_load(CONFIG), "default_group": None})
    verdict = closed.allows(STRANGER, "front-door", berlin(2026, 11, 23, 10, 0))
    assert not verdict.allowed and "no default group" in verdict.reason
    assert closed.allows(BOB, "front-door", berlin(2026, 11, 23, 10, 0)).allowed


def test_several_groups_any_one_lets_in():
    config = yaml.safe_load(CONFIG)
    config["groups"]["cleaners"]["members"].append("Bob")
    both = Policy.from_config(config)
    assert both.allows(BOB, "front-door", berlin(2026, 11, 27, 23, 0)) == Verdict(True, "allowed by group cleaners")
    assert both.allows(BOB, "front-door", berlin(2026, 11, 29, 12, 0)) == \
        Verdict(False, "outside schedule of group staff, group cleaners")


def test_inactive(policy):
    assert policy.allows(Person("Bob", active=False), "front-door", berlin(2026, 11, 23, 8, 0)) == \
        Verdict(False, "inactive")
    assert policy.allows(Person("Bob", active=0), "front-door", berlin(2026, 11, 23, 8, 0)).reason == "inactive"


@pytest.mark.parametrize("valid_from, valid_until, moment, reason", [
    ("2026-12-01", None, (2026, 11, 30, 12, 0), "not yet valid until 2026-12-01"),
    (date(2026, 12, 1), None, (2026, 11, 30, 12, 0), "not yet valid until 2026-12-01"),
    ("2026-11-23T09:00:00+01:00", None, (2026, 11, 23, 8, 59), "not yet valid until 2026-11-23T09:00:00+01:00"),
    (None, "2026-11-20", (2026, 11, 23, 8, 0), "expired on 2026-11-20"),
    (None, datetime(2026, 11, 23, 7, 30), (2026, 11, 23, 8, 0), "expired on 2026-11-23T07:30:00"),
    (None, "2026-11-23T06:00:00Z", (2026, 11, 23, 8, 0), "expired on 2026-11-23T06:00:00Z"),
    ("Tuesday", None, (2026, 11, 23, 8, 0), "invalid valid_from 'Tuesday'"),
])
def test_validity_dates(policy, valid_from, valid_until, moment, reason):
    person = Person("Bob", valid_from=valid_from, valid_until=valid_until)
    assert policy.allows(person, "front-door", berlin(*moment)) == Verdict(False, reason)


@pytest.mark.parametrize("valid_from, valid_until", [
    ("2026-11-23", "2026-11-23"),  # a date covers the whole local day, the last one included
    (date(2026, 11, 1), date(2026, 11, 23)),
    ("2026-11-23 08:00:00", ""),  # naive: local wall-clock time; empty: no bound
    (None, None),
])
def test_within_validity(policy, valid_from, valid_until):
    person = Person("Bob", valid_from=valid_from, valid_until=valid_until)
    assert policy.allows(person, "front-door", berlin(2026, 11, 23, 18, 59)).allowed


def test_all_day_window_and_time_objects():
    from datetime import time
    policy = Policy.from_config({"timezone": "UTC", "default_group": "all", "groups": {"all": {
        "doors": ["d"], "schedule": [{"days": ["sun"], "start": "00:00", "end": "24:00"},
                                     {"days": ["mon"], "start": time(8, 0), "end": time(9, 0)}]}}})
    assert policy.allows(BOB, "d", datetime(2026, 11, 29, 23, 59, 59, tzinfo=timezone.utc)).allowed
    assert policy.allows(BOB, "d", datetime(2026, 11, 29, 0, 0, tzinfo=timezone.utc)).allowed
    assert not policy.allows(BOB, "d", datetime(2026, 11, 30, 0, 0, tzinfo=timezone.utc)).allowed
    assert policy.allows(BOB, "d", datetime(2026, 11, 30, 8, 30, tzinfo=timezone.utc)).allowed


# -- config errors ---------------------------------------------------------------------------

def broken(path: str, value) -> dict:
    """The example config with one value replaced (path: dotted keys, [i] for list items)."""
    config = yaml.safe_load(CONFIG)
    *parents, last = path.replace("[", ".").replace("]", "").split(".")
    node = config
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return config


@pytest.mark.parametrize("path, value, message", [
    ("groups.staff.schedule[1].days", "Mon-Fri",
     "policy.groups.staff.schedule[1].days = 'Mon-Fri' is not allowed: expected a list of day names"),
    ("groups.staff.schedule[0].days", ["mon", "funday"],
     "policy.groups.staff.schedule[0].days = ['mon', 'funday'] is not allowed"),
    ("groups.staff.schedule[0].start", "7am", "policy.groups.staff.schedule[0].start = '7am' is not allowed: "
                                              "expected a time 'HH:MM'"),
    ("groups.staff.schedule[0].end", 1170, "policy.groups.staff.schedule[0].end = 1170 is not allowed: "
                                           "expected a quoted 'HH:MM' time"),
    ("groups.staff.schedule[0].end", "07:00", "policy.groups.staff.schedule[0].end = '07:00' is not allowed"),
    ("groups.staff.schedule[0].start", "24:00", "policy.groups.staff.schedule[0].start = '24:00' is not allowed"),
    ("groups.staff.schedule[0].end", "25:00", "policy.groups.staff.schedule[0].end = '25:00' is not allowed"),
    ("groups.staff.schedule[0].colour", "red", "policy.groups.staff.schedule[0].colour is not a known key"),
    ("groups.staff.schedule", [], "policy.groups.staff.schedule = [] is not allowed: expected 'always' or"),
    ("groups.staff.schedule", "sometimes", "policy.groups.staff.schedule = 'sometimes' is not allowed"),
    ("groups.staff.doors", [], "policy.groups.staff.doors = [] is not allowed: expected a non-empty list"),
    ("groups.staff.doors", "front-door", "policy.groups.staff.doors = 'front-door' is not allowed"),
    ("groups.staff.holidays", "yes", "policy.groups.staff.holidays = 'yes' is not allowed: expected true or false"),
    ("groups.staff.members", [["Bob"]], "policy.groups.staff.members[0] = ['Bob'] is not allowed"),
    ("groups.staff.leader", "Bob", "policy.groups.staff.leader is not a known key"),
    ("groups.visitors", "everyone", "policy.groups.visitors = 'everyone' is not allowed: expected a mapping"),
    ("people.E1001.groups", ["staff"], "policy.people.E1001.groups is not a known key"),
    ("default_group", "contractors", "policy.default_group = 'contractors' is not allowed: expected one of "
                                     "the groups ['cleaners', 'security', 'staff', 'visitors'] or null"),
    ("timezone", "Mars/Olympus", "policy.timezone = 'Mars/Olympus' is not allowed: expected an IANA time zone"),
    ("holidays[1]", "25.12.2026", "policy.holidays[1] = '25.12.2026' is not allowed: expected a date YYYY-MM-DD"),
    ("doors", ["front-door"], "policy.doors is not a known key"),
])
def test_config_errors_name_the_key_path(path, value, message):
    with pytest.raises(PolicyConfigError) as info:
        Policy.from_config(broken(path, value))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_config_requirements():
    with pytest.raises(PolicyConfigError, match="policy.timezone is required"):
        Policy.from_config({})
    with pytest.raises(PolicyConfigError, match="policy.groups.g.doors is required"):
        Policy.from_config({"timezone": "UTC", "groups": {"g": {"schedule": "always"}}})
    with pytest.raises(PolicyConfigError, match="policy.groups.g.schedule is required"):
        Policy.from_config({"timezone": "UTC", "groups": {"g": {"doors": "*"}}})
    with pytest.raises(PolicyConfigError, match="policy = 'open' is not allowed"):
        Policy.from_config("open")


def test_unquoted_yaml_times_are_caught():
    # PyYAML reads an unquoted 19:30 as the base-60 integer 1170: refused with the fix in the message
    raw = yaml.safe_load("timezone: UTC\ngroups: {g: {doors: '*', schedule: [{days: [mon], start: '07:00', "
                         "end: 19:30}]}}")
    with pytest.raises(PolicyConfigError, match=r"write '19:30' in quotes"):
        Policy.from_config(raw)


def test_empty_policy_lets_nobody_in():
    policy = Policy.from_config({"timezone": "UTC"})
    verdict = policy.allows(BOB, "front-door", datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc))
    assert not verdict.allowed
