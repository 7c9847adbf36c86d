"""One clock per run: the video's clock for a fast replay, the monotonic clock otherwise."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from daemon.clock import Clock, VideoClock, clock_for
from daemon.door import Door, DoorConfig
from daemon.sources import Frame, SourceConfig
from tests.conftest import DEMO_CLIP, wait_for
from tests.test_door import CONTACT, RELAY, Events

PIXELS = np.zeros((2, 2, 3), np.uint8)


def frame(video_time: float | None, index: int = 0) -> Frame:
    return Frame(PIXELS, index, time.monotonic(), video_time)


def test_a_fast_file_replay_runs_on_the_video_clock_and_everything_else_on_real_time():
    assert isinstance(clock_for(SourceConfig("file", path=DEMO_CLIP, pace="fast")), VideoClock)
    for camera in (SourceConfig("file", path=DEMO_CLIP, pace="realtime"), SourceConfig("opencv", device=0),
                   SourceConfig("picamera2", device=0)):
        clock = clock_for(camera)
        assert not isinstance(clock, VideoClock) and not clock.driven_by_frames


def test_the_monotonic_clock_times_a_frame_by_its_grab():
    grabbed = frame(12.0)
    assert Clock().frame_time(grabbed) == grabbed.time


def test_the_video_clock_moves_only_with_frames_and_never_backwards():
    clock = VideoClock()
    seen = []
    clock.on_advance(seen.append)
    assert clock.now() == 0.0
    assert clock.frame_time(frame(1.5)) == 1.5
    time.sleep(0.05)
    assert clock.now() == 1.5, "real time passing must not move a replay's clock"
    assert clock.frame_time(frame(1.2)) == 1.5
    assert seen == [1.5, 1.5]


def test_the_video_clock_refuses_a_camera_frame():
    with pytest.raises(ValueError, match="video_time"):
        VideoClock().frame_time(frame(None))


def test_a_listener_that_stopped_following_is_not_called():
    clock = VideoClock()
    seen = []
    undo = clock.on_advance(seen.append)
    undo()
    clock.frame_time(frame(3.0))
    assert seen == []


def door_on(clock: VideoClock, events: Events, factory: MockFactory, **overrides) -> Door:
    values = dict(relay_pin=RELAY, name="replay-door", unlock_seconds=3.0, contact_pin=CONTACT,
                  held_open_seconds=2.0, debounce_seconds=None)
    values.update(overrides)
    return Door(DoorConfig(**values), events, pin_factory=factory, clock=clock)


def test_an_unlock_pulse_on_the_video_clock_ends_at_the_same_frame_however_long_frames_take():
    clock, events, factory = VideoClock(), Events(), MockFactory()
    relay = factory.pin(RELAY)
    with door_on(clock, events, factory) as door:
        assert "door-replay-door" not in {t.name for t in threading.enumerate()}, \
            "a frame-driven door needs no scheduler thread: its deadlines pass with the frames"
        clock.frame_time(frame(10.0))
        door.grant("Lead Hiker (track 1)")
        time.sleep(0.1)  # real time is irrelevant: only frames move this clock
        clock.frame_time(frame(12.99))
        assert relay.state == 1 and door.is_unlocked
        clock.frame_time(frame(13.0))
        assert relay.state == 0 and not door.is_unlocked
    assert ("relay_off", "timeout") in events.items


def test_a_held_open_alarm_on_the_video_clock_is_raised_in_clip_time():
    clock, events, factory = VideoClock(), Events(), MockFactory()
    contact = factory.pin(CONTACT)
    with door_on(clock, events, factory) as door:
        contact.drive_low()  # shut: a reed switch to ground
        assert wait_for(lambda: door.is_open is False)
        clock.frame_time(frame(1.0))
        door.grant("Lead Hiker (track 1)")
        contact.drive_high()  # opened during the unlock
        assert wait_for(lambda: door.is_open)
        clock.frame_time(frame(2.9))
        assert door.alarm is None
        clock.frame_time(frame(3.0))
        assert door.alarm == "alarm_held_open"
        assert "alarm_held_open" in events.kinds()
