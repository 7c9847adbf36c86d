"""Commands from the broker, parsed and admitted: the retain flag, issued_at in its two forms, the maximum
age, the clock skew tolerated into the future, and the expiry a command carries to the door loop."""
from __future__ import annotations

import json

import pytest

from daemon.fleet.commands import CLOCK_SKEW_SECONDS, Command, CommandRefused, parse_command, receive
from daemon.fleet.settings import parse_mqtt

NOW = 1767254400.0  # 2026-01-01T08:00:00Z, the door's wall clock in these tests
MONOTONIC = 5000.0  # the door's time.monotonic() at receipt


def payload(**fields) -> bytes:
    return json.dumps({"command": "unlock", "client_id": "desk", **fields}).encode()


def settings(**mqtt):
    return parse_mqtt({"host": "broker", "allow_remote_unlock": True, **mqtt}, "front-door")


def received(data: bytes, retained: bool = False, **mqtt) -> Command:
    return receive(data, retained, settings(**mqtt), now=NOW, monotonic=MONOTONIC)


@pytest.mark.parametrize("issued_at", [
    1767254400, 1767254400.0, "2026-01-01T08:00:00Z", "2026-01-01T09:00:00+01:00", "2026-01-01T08:00:00.000+00:00",
])
def test_issued_at_is_unix_seconds_or_iso_8601_with_an_offset(issued_at):
    assert parse_command(payload(issued_at=issued_at)).issued_at == NOW


@pytest.mark.parametrize("issued_at", [
    "2026-01-01T08:00:00",  # no offset: the zone would be a guess
    "1767254400",  # a number in a string
    "yesterday", True, 0, -5, [NOW], {"t": NOW},
])
def test_an_issued_at_that_is_no_time_is_refused(issued_at):
    with pytest.raises(CommandRefused, match="issued_at .* is not a time"):
        parse_command(payload(issued_at=issued_at))


@pytest.mark.parametrize("text", [b"NaN", b"Infinity"])
def test_an_issued_at_that_is_not_finite_is_refused(text):
    with pytest.raises(CommandRefused, match="issued_at"):
        parse_command(b'{"command": "unlock", "client_id": "desk", "issued_at": ' + text + b"}")


def test_a_command_without_issued_at_parses_without_one():
    assert parse_command(b'{"command": "lock"}') == Command("lock", "unknown sender", None)


@pytest.mark.parametrize("data", [payload(issued_at=NOW), b'{"command": "lock"}', b"garbage"])
def test_a_retained_message_is_refused_whatever_it_says(data):
    with pytest.raises(CommandRefused, match=r"retained command ignored .*mosquitto_pub -r -n -t "
                                             r"facegate/front-door/command$"):
        received(data, retained=True)


def test_a_fresh_stamped_unlock_is_admitted_and_expires_when_it_grows_too_old():
    command = received(payload(issued_at=NOW - 10))
    assert (command.name, command.client_id, command.issued_at) == ("unlock", "desk", NOW - 10)
    assert command.expires == MONOTONIC + 20, "30 s of age allowed, 10 s already gone"
    assert not command.expired(MONOTONIC + 19.9) and command.expired(MONOTONIC + 20.1)


@pytest.mark.parametrize("age, admitted", [(30.0, True), (30.01, False), (3600.0, False), (NOW - 1, False)])
def test_the_maximum_age(age, admitted):
    if admitted:
        assert received(payload(issued_at=NOW - age)).expires == MONOTONIC
    else:
        with pytest.raises(CommandRefused, match=r"^remote unlock by desk refused: issued .* s ago, over "
                                                 r"mqtt\.command_max_age_seconds \(30 s\)$"):
            received(payload(issued_at=NOW - age))


def test_the_maximum_age_follows_the_config():
    assert received(payload(issued_at=NOW - 50), command_max_age_seconds=60).expires == MONOTONIC + 10
    with pytest.raises(CommandRefused, match=r"over mqtt\.command_max_age_seconds \(5 s\)"):
        received(payload(issued_at=NOW - 6), command_max_age_seconds=5)


@pytest.mark.parametrize("ahead, admitted", [(1.0, True), (CLOCK_SKEW_SECONDS, True), (CLOCK_SKEW_SECONDS + 0.01, False),
                                             (86400.0, False)])
def test_a_stamp_from_the_future_is_admitted_only_within_the_clock_skew(ahead, admitted):
    if admitted:
        command = received(payload(issued_at=NOW + ahead))
        assert command.expires == MONOTONIC + 30, "counted as issued now: no longer valid than a fresh one"
    else:
        with pytest.raises(CommandRefused, match=r"in the future, beyond the 5 s of clock skew tolerated"):
            received(payload(issued_at=NOW + ahead))


def test_an_unstamped_unlock_is_refused_unless_the_config_allows_it():
    with pytest.raises(CommandRefused, match=r"no issued_at and mqtt\.require_issued_at is true"):
        received(payload())
    assert received(payload(), require_issued_at=False).expires == MONOTONIC + 30


@pytest.mark.parametrize("name", ["lock", "reload"])
def test_lock_and_reload_need_no_stamp_but_an_old_one_is_refused(name):
    assert received(payload(command=name)).expires == MONOTONIC + 30
    with pytest.raises(CommandRefused, match=f"remote {name} by desk refused: issued"):
        received(payload(command=name, issued_at=NOW - 31))


def test_an_unlock_is_refused_while_remote_unlock_is_off_stamped_or_not():
    with pytest.raises(CommandRefused, match=r"mqtt\.allow_remote_unlock is false"):
        received(payload(issued_at=NOW), allow_remote_unlock=False)


def test_a_command_made_by_hand_never_expires():
    """Only receive() stamps an expiry: the door's own code and tests may queue a Command directly."""
    assert not Command("lock", "ops").expired()
