"""The door service: frames in, decisions out, the relay driven, everything logged.

Safety: the relay is off unless a decision grants access. It is released on
stop, on any unhandled error (then the process exits non-zero and systemd
restarts it) and by a guard thread when the main loop stalls. The systemd
watchdog is fed only while frames flow.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from daemon import config as config_module
from daemon.clock import clock_for
from daemon.config import Config
from daemon.decision import Decider, Decision, Threshold, threshold_in_force
from daemon.door import Door, make_pin_factory
from daemon.events import EventLog, face_snapshot, unknown_reason
from daemon.fleet.commands import Command
from daemon.gallery import GalleryReader, escaped, listed
from daemon.metrics import DoorMetrics, MetricsError, MetricsServer
from daemon.notify import Notifier
from daemon.panel.formats import Card
from daemon.panel.output import make_panel_output
from daemon.recognition import Observation, Recogniser
from daemon.settings import ConfigError
from daemon.sqlite_files import check_state_files
from daemon.sources import Frame, make_source
from daemon.tracker import Track, Tracker
from engines.face import Face

log = logging.getLogger("facegate.daemon")

ATTACK_REASON = "presentation attack suspected"
DOOR_EVENTS = {"relay_on", "relay_off", "exit_request", "alarm_held_open", "alarm_forced_open", "alarm_cleared", "fault"}


@dataclass
class Stats:
    frames: int = 0
    faces: int = 0
    recognised: int = 0  # faces aligned, checked and (when good enough) embedded: those on undecided tracks
    grants: int = 0
    denies: int = 0  # attacks among them
    attacks: int = 0  # tracks denied as presentation attacks
    unknowns: int = 0
    first_grant_video_time: float | None = None
    frame_ms: list[float] = field(default_factory=list)  # recent processing times, for STATUS
    decided: deque = field(default_factory=lambda: deque(maxlen=100))  # the latest Outcomes, oldest first


@dataclass(frozen=True)
class Outcome:
    """What the door made of one decided track (Stats.decided)."""

    track_id: int
    kind: str  # grant, deny, attack (denied as a presentation attack) or unknown
    name: str | None  # the person; None for an unknown face
    distance: float | None
    live_score: float | None  # the median live score the decision rests on; None with liveness off
    video_time: float


@dataclass(frozen=True)
class Seen:
    """A face in a frame, its track, and what recognition said of it: None on a decided track,
    whose faces are no longer embedded."""

    track: Track
    face: Face
    observation: Observation | None


FrameHook = Callable[[Frame, list[Seen], bool], None]


class DoorService:
    def __init__(self, config: Config, *, notifier: Notifier | None = None, pin_factory=None,
                 on_frame: FrameHook | None = None, wall_clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.on_frame = on_frame
        self.wall_clock = wall_clock or (lambda: datetime.now(timezone.utc))
        self.stats = Stats()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._last_tick = time.monotonic()
        self._closers: list[Callable[[], None]] = []
        self.events: EventLog | None = None
        # Door events arrive from gpiozero's threads, the door's timer and signal handlers; a
        # SimpleQueue may be used from all of them (even re-entrantly), the event log may not.
        self._door_events: queue.SimpleQueue = queue.SimpleQueue()
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()  # from the MQTT link's thread
        self.fleet = None  # the MQTT link (daemon/fleet), when mqtt.host is set
        self.metrics_server: MetricsServer | None = None
        # Unlock pulses, alarms, track ages and the log and refresh intervals run on this clock;
        # the stall guard and the systemd watchdog stay on real time (self._last_tick).
        self.clock = clock_for(config.camera)
        if pin_factory is None:  # ours to close, after the door has released its pins
            pin_factory = make_pin_factory(config.door.pin_factory)
            if pin_factory is not None:
                self._closers.append(pin_factory.close)
        # The door first: whatever fails after this, the relay has been driven off.
        self.door = Door(config.door, on_event=self._door_event, clock=self.clock, pin_factory=pin_factory)
        self._closers.append(self.door.close)
        try:
            # The panel's outputs (relay, Wiegand, OSDP) take every decision; their threads start here.
            self.panel = make_panel_output(config.panel, self.door.grant, pin_factory)
            self._closers.append(self.panel.close)
            # Both state files checked before either is opened (opening creates what is missing), so a
            # door refusing to start for one leaves the other as it was.
            check_state_files(config.gallery.path, config.events.path)
            self.events = EventLog(config.events.path, max_rows=config.events.max_rows,
                                   max_age_days=config.events.max_age_days, keep_snapshots=config.events.snapshots)
            self._closers.append(self.events.close)
            self.gallery = GalleryReader.open(config.gallery.path, config.embedder, config.gallery.index)
            self._closers.append(self.gallery.close)
            _warn_unrecognisable(self.gallery)
            self.recogniser = Recogniser(config)
            self._closers.append(self.recogniser.close)
            self.source = make_source(config.camera)
            self._closers.append(self.source.stop)
            self.gallery_version = self.gallery.synced_bundle()
            self.metrics = DoorMetrics(camera_reconnects=lambda: self.source.stats.reopens,
                                       camera_fault=lambda: self.source.fault,
                                       gallery_people=lambda: self.gallery.index.people,
                                       gallery_version=lambda: self.gallery_version.version if self.gallery_version else 0,
                                       event_write_failures=lambda: self.events.write_errors,
                                       events_dropped=lambda: self.events.dropped)
            if config.mqtt is not None:
                self.fleet = self._fleet_link(config)
        except BaseException:
            self.close()
            raise
        self.tracker = Tracker(config.tracker_iou, config.track_max_age)
        self.threshold = self._threshold_in_force()
        self.decider = Decider(config.decision, config.liveness.live_threshold, self.threshold.value)
        self.metrics.watch("facegate_decision_threshold", "Distance threshold in force (a frame matches below it)",
                           lambda: self.threshold.value)
        self.metrics.watch("facegate_gallery_templates", "Templates searched per face (the threshold's gallery size)",
                           lambda: self.gallery.index.count)
        self._last_unknown_event = -float("inf")
        self._next_gallery_check = 0.0
        self._next_status = 0.0
        self._last_watchdog = 0.0
        self._frames_since_watchdog = 0
        self._not_ready_reason: str | None = None  # the camera fault last sent as STATUS before the first frame

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped or the source ends; returns the process exit code."""
        guard = threading.Thread(target=self._stall_guard, name="stall-guard", daemon=True)
        try:
            self.source.start()
            self.events.record("start", door=self.door.config.name, reason=self.source.describe())
            self._start_reporting()
            _log_liveness(self.config)
            _log_threshold(self.threshold)
            guard.start()
            ready = False
            while not self._stop.is_set():
                if not self.step():
                    break
                ready = ready or self._ready_after_first_frame()
            return 0
        except Exception as error:
            log.exception("unhandled error, releasing the door and exiting")
            self.door.release("crash")
            self.events.record("fault", door=self.door.config.name, reason=f"crash: {error!r}")
            return 1
        finally:
            self.notifier.stopping()
            self._stop.set()
            self.door.release("stop")
            self._record_door_events()
            self.events.record("stop", door=self.door.config.name)
            self.close()

    def _ready_after_first_frame(self) -> bool:
        """READY=1 and "facegate ready" once a frame has gone through the pipeline, not before: a door whose
        camera cannot be opened is not ready, and the source's ERROR lines, STATUS and /healthz say why.
        The watchdog is not fed before either (_feed_watchdog needs processed frames): systemd arms it only
        at READY=1, and bounds the wait before it with TimeoutStartSec (then stops us, relay released)."""
        if not self.stats.frames:
            fault = self.source.fault
            if fault is not None and fault != self._not_ready_reason:
                self._not_ready_reason = fault
                self.notifier.status(f"not ready: {fault}")
            return False
        self.notifier.ready(self._status())
        log.info("facegate ready: door %s, camera %s, %d people in the gallery",
                 self.door.config.name, self.source.describe(), self.gallery.index.people)
        return True

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def install_signal_handlers(self) -> None:
        def on_stop(signum, _frame):
            # Lock at once, not after the current frame, but from another thread: the
            # interrupted code may hold a lock that releasing would need.
            threading.Thread(target=self.door.release, args=("stop signal",), name="stop-release").start()
            self.stop()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:
                log.exception("error while closing")

    # -- the loop ----------------------------------------------------------------------------

    def step(self) -> bool:
        """Handle housekeeping and at most one frame; False when the source has ended."""
        real_now = time.monotonic()
        self._last_tick = real_now
        self._record_door_events()
        self._run_commands()
        if self._reload.is_set():
            self._reload.clear()
            self._apply_reload()
        if self.clock.now() >= self._next_gallery_check:
            self._next_gallery_check = self.clock.now() + self.config.gallery.refresh_seconds
            if self.gallery.changed():
                self.gallery.refresh()
                self.gallery_version = self.gallery.synced_bundle()
                log.info("gallery changed: %d people", self.gallery.index.people)
                self._follow_gallery_size()
        frame = self.source.read(timeout=0.5)
        if frame is None:
            return not getattr(self.source, "exhausted", False)
        now = self.clock.frame_time(frame)  # on a video clock, the door's deadlines up to this frame expire here
        self._record_door_events()
        self._process(frame, now)
        self._feed_watchdog(real_now)
        if now >= self._next_status:
            self._next_status = now + self.config.status_seconds
            self.notifier.status(self._status())
        return True

    def _process(self, frame: Frame, now: float) -> None:
        started = time.perf_counter()
        faces = self.recogniser.detect(frame.rgb)
        detected = time.perf_counter()
        tracks = self.tracker.update([face.box for face in faces], now)
        pending = [i for i, track in enumerate(tracks) if not track.decided]
        observations: list[Observation | None] = [None] * len(faces)
        recognised = self.recogniser.recognise(frame.rgb, [faces[i] for i in pending], self.gallery)
        recognised_at = time.perf_counter()
        for i, observation in zip(pending, recognised):
            observations[i] = observation
            if observation.usable:
                decision = self.decider.observe(tracks[i], observation.match, observation.liveness,
                                                observation.face.landmarks)
                if decision is not None:
                    self._decide(decision, frame, observation, now)
        self.decider.forget({t.id for t in self.tracker.tracks})
        self.stats.frames += 1
        self.stats.faces += len(faces)
        self.stats.recognised += len(pending)
        ended = time.perf_counter()
        self.stats.frame_ms = (self.stats.frame_ms + [(ended - started) * 1000])[-100:]
        self.metrics.frame({"detect": detected - started, "recognise": recognised_at - detected,
                            "decide": ended - recognised_at, "frame": ended - started}, len(faces))
        self.metrics.grab_to_decision(time.monotonic() - frame.time)
        self.metrics.relay(self.door.is_unlocked)
        self.metrics.door_open(self.door.is_open)
        self._frames_since_watchdog += 1
        if self.on_frame is not None:
            self.on_frame(frame, [Seen(*seen) for seen in zip(tracks, faces, observations)], self.door.is_unlocked)

    def _decide(self, decision: Decision, frame: Frame, observation: Observation, now: float) -> None:
        door = self.door.config.name
        if decision.person_id is None:
            self.stats.unknowns += 1
            self._outcome(decision, "unknown", None, frame)
            self.panel.refused("unknown face")
            if now - self._last_unknown_event >= self.config.events.unknown_log_interval:
                self._last_unknown_event = now
                self.events.record("unknown_face", door=door, track_id=decision.track_id,
                                   score=None if decision.nearest is None else decision.nearest.distance,
                                   reason=unknown_reason(decision.nearest, self.decider.threshold),
                                   snapshot=self._snapshot(frame, observation))
                log.info("unknown face on track %d%s", decision.track_id, _live_text(decision))
            return
        person = self.gallery.person(decision.person_id)
        if decision.attack:
            # The face matches an enrolled person but the frames that said so look like a photo or a
            # screen: denied once, whoever it shows and whatever the policy; the relay is not touched.
            self.stats.denies += 1
            self.stats.attacks += 1
            self._outcome(decision, "attack", person.name, frame)
            self.panel.refused(ATTACK_REASON)
            reason = f"{ATTACK_REASON}: {decision.attack_reason}"
            self.events.record("deny", door=door, person_id=person.id, person_name=person.name,
                               external_id=person.external_id, score=decision.distance,
                               track_id=decision.track_id, reason=reason,
                               snapshot=self._snapshot(frame, observation))
            log.warning("DENY %s (distance %.3f, track %d): %s", escaped(person.name), decision.distance,
                        decision.track_id, reason)
            return
        verdict = self.config.policy.allows(person, door, self.wall_clock())
        kind = "grant" if verdict.allowed else "deny"
        self._outcome(decision, kind, person.name, frame)
        self.events.record(kind, door=door, person_id=person.id, person_name=person.name,
                           external_id=person.external_id, score=decision.distance,
                           track_id=decision.track_id, reason=verdict.reason,
                           snapshot=self._snapshot(frame, observation))
        log.info("%s %s (distance %.3f, track %d%s): %s", kind.upper(), escaped(person.name), decision.distance,
                 decision.track_id, _live_text(decision), verdict.reason)
        if verdict.allowed:
            self.stats.grants += 1
            if self.stats.first_grant_video_time is None:
                self.stats.first_grant_video_time = frame.video_time
            self.panel.granted(f"{escaped(person.name)} (track {decision.track_id})", self._card(person.id))
        else:
            self.stats.denies += 1
            if self.panel.panel_decides:  # the panel judges for itself; our policy's verdict is only logged
                self.panel.seen(f"{escaped(person.name)} (track {decision.track_id})", self._card(person.id))
            else:
                self.panel.refused(verdict.reason)

    def _card(self, person_id: int) -> Card | None:
        credential = self.gallery.credential(person_id)
        return None if credential is None else credential.card

    def _snapshot(self, frame: Frame, observation: Observation) -> bytes | None:
        """The decided face's JPEG for its event, made only while events.snapshots is on."""
        return face_snapshot(frame.rgb, observation.face.box) if self.config.events.snapshots else None

    def _outcome(self, decision: Decision, kind: str, name: str | None, frame: Frame) -> None:
        self.metrics.decision(kind)
        self.stats.decided.append(Outcome(decision.track_id, kind, name, decision.distance, decision.live_score,
                                          frame.video_time))

    # -- the fleet: MQTT and metrics ----------------------------------------------------------

    def _fleet_link(self, config: Config):
        from daemon.fleet.link import Fleet, FleetLink

        link = FleetLink(config.mqtt, Fleet(
            events_path=config.events.path,
            cursor_path=config.events.path.with_name("mqtt.db"),
            door_state=self.door_state,
            on_command=self._commands.put,
            record=self._record_fleet_event,
            discovery=_discovery(config),
            gallery_sync=_gallery_sync(config, self._record_fleet_event)))
        self.metrics.watch("facegate_mqtt_connected", "1 while connected to the MQTT broker", lambda: link.connected)
        self.metrics.watch("facegate_mqtt_backlog", "Events not yet acknowledged by the MQTT broker", link.backlog)
        return link

    def _start_reporting(self) -> None:
        """The link and the metrics endpoint: neither may keep the door from working."""
        if self.fleet is not None:
            self.fleet.start()
            self._closers.append(self.fleet.close)
        if self.config.metrics is not None:
            try:
                self.metrics_server = MetricsServer(self.metrics, self.config.metrics, self.config.stall_seconds)
            except MetricsError as error:
                log.error("%s; the door works on without metrics", error)
                return
            self._closers.append(self.metrics_server.close)
            log.info("metrics on http://%s/metrics, health on /healthz", self.metrics_server.address)

    def door_state(self) -> dict:
        """The door as the retained MQTT state shows it (read from the link's thread)."""
        alarm = self.door.alarm
        is_open = self.door.is_open
        return {"lock": "unlocked" if self.door.is_unlocked else "locked",
                "door": None if is_open is None else "open" if is_open else "closed",
                "alarm": alarm.removeprefix("alarm_") if alarm else None}

    def _record_fleet_event(self, kind: str, reason: str) -> None:
        self.events.record(kind, door=self.door.config.name, reason=reason)

    def _run_commands(self) -> None:
        """Commands from the broker, acted on by the door loop like its own decisions."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command.expired():  # it waited here (a stalled loop) past mqtt.command_max_age_seconds
                reason = f"{command.reason} refused: it waited past mqtt.command_max_age_seconds to be carried out"
                log.warning("MQTT command ignored: %s", reason)
                self._record_fleet_event("command_refused", reason)
                continue
            log.warning("MQTT command: %s", command.reason)
            if command.name == "unlock":
                self.events.record("grant", door=self.door.config.name, reason=command.reason)
                self.stats.grants += 1
                self.door.grant(command.reason)
            elif command.name == "lock":
                self.door.release(command.reason)
            elif command.name == "reload":
                self.request_reload()

    # -- safety and systemd ------------------------------------------------------------------

    def _feed_watchdog(self, now: float) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is not None and self._frames_since_watchdog and now - self._last_watchdog >= interval:
            self.notifier.watchdog()
            self._last_watchdog = now
            self._frames_since_watchdog = 0

    def _stall_guard(self) -> None:
        limit = self.config.stall_seconds
        stalled = False
        while not self._stop.wait(min(limit / 4, 1.0)):
            late = time.monotonic() - self._last_tick > limit
            if late and not stalled:
                log.error("main loop stalled for more than %.1f s: releasing the door", limit)
                self.door.release("main loop stalled")
                self.events.record("fault", door=self.door.config.name, reason="main loop stalled")
            if late:
                self._record_door_events()
            stalled = late

    def _door_event(self, kind: str, detail: str) -> None:
        if kind in DOOR_EVENTS:
            self._door_events.put((kind, detail, time.time()))

    def _record_door_events(self) -> None:
        while self.events is not None:
            try:
                kind, detail, at = self._door_events.get_nowait()
            except queue.Empty:
                return
            self.events.record(kind, door=self.config.door.name, reason=detail, at=at)

    def _apply_reload(self) -> None:
        """SIGHUP: new policy, decision, liveness (enabled, threshold) and quality settings; a fresh
        look at the gallery."""
        if self.config.path is None:
            log.warning("reload ignored: this door's config was not read from a file")
            return
        try:
            fresh = config_module.load(self.config.path)
        except ConfigError as error:
            log.error("reload refused, keeping the running config: %s", error)
            return
        for part in ("camera", "door", "models", "detector", "embedder", "gallery", "events", "mqtt", "metrics"):
            if _differs(getattr(fresh, part), getattr(self.config, part)):
                log.warning("config section %s changed: it takes effect on restart", part)
        if None not in (fresh.liveness.models_dir, self.config.liveness.models_dir) and \
                fresh.liveness.models_dir != self.config.liveness.models_dir:
            log.warning("liveness.models_dir changed: it takes effect on restart")
        fresh = _keep_runtime_parts(self.config, fresh)
        try:
            self.recogniser.set_liveness(fresh.liveness)
        except Exception as error:  # the nets cannot be opened: keep judging as before
            log.error("reload refused, keeping the running config: liveness cannot be enabled: %s", error)
            return
        liveness_changed = fresh.liveness != self.config.liveness
        self.config = fresh
        # Tracks keep their votes and live scores: a new Decider judges them from here on.
        self.decider = Decider(fresh.decision, fresh.liveness.live_threshold, self.threshold.value)
        if liveness_changed:
            _log_liveness(fresh)
        self.recogniser.limits = fresh.quality
        logging.getLogger("facegate").setLevel(fresh.log_level)
        self.gallery.refresh()
        log.info("config reloaded from %s; gallery: %d people", fresh.path, self.gallery.index.people)
        self._follow_gallery_size()  # decision.threshold or max_fpir may have changed, and the gallery

    def _threshold_in_force(self) -> Threshold:
        return threshold_in_force(self.config.decision, self.config.embedder, self.gallery.index.count)

    def _follow_gallery_size(self) -> None:
        """A gallery of another size needs another threshold to hold decision.max_fpir."""
        fresh = self._threshold_in_force()
        if fresh.value != self.threshold.value:
            _log_threshold(fresh)
        self.threshold = fresh
        self.decider.threshold = fresh.value

    def _status(self) -> str:
        recent = self.stats.frame_ms
        fps = 1000 / np.mean(recent) if recent else 0.0
        return (f"{fps:.1f} fps capacity, {self.stats.frames} frames, {self.stats.faces} faces, "
                f"{self.gallery.index.people} people, {self.stats.grants} grants")


def _warn_unrecognisable(gallery: GalleryReader) -> None:
    """People without a template of the configured embedder (enrolled before templates were stored per model)."""
    lacking = gallery.lacking()
    if lacking:
        log.warning("%d of %d enrolled people have no template of embedder %r and cannot be recognised at this door: "
                    "%s; tools/enroll_local.py --card %s check lists them, reembed embeds their kept photos again",
                    len(lacking), len(lacking) + gallery.index.people, gallery.card.id, listed(lacking),
                    gallery.card.path)


def _differs(a, b) -> bool:
    try:
        return bool(a != b)
    except ValueError:  # dataclasses holding numpy arrays (a model card's alignment template) compare by value
        return repr(a) != repr(b)


def _log_liveness(config: Config) -> None:
    liveness = config.liveness
    if liveness.enabled:
        log.info("liveness on: a grant needs the median live score of the voting frames >= %.3f (%s)",
                 liveness.threshold, liveness.threshold_source)
    else:
        log.warning("liveness.enabled is false: presentation-attack detection is OFF, and a printed photo or a "
                    "phone screen showing an enrolled person opens the door; set liveness.enabled: true in %s",
                    config.path or "the config")


def _log_threshold(threshold: Threshold) -> None:
    expected = "" if threshold.expected_fpir is None else f", modelled FPIR {threshold.expected_fpir:.1e} per probe"
    log.info("match threshold in force: distance %.4f from %s%s", threshold.value, threshold.source, expected)


def _live_text(decision: Decision) -> str:
    return "" if decision.live_score is None else f", live {decision.live_score:.3f}"


def _discovery(config: Config) -> list[tuple[str, dict]]:
    from daemon.fleet.discovery import discovery_messages

    return discovery_messages(config.mqtt, config.door, _version())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facegate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _gallery_sync(config: Config, record: Callable[[str, str], None]):
    """The door's side of gallery sync, when the front desk's public key is configured."""
    if config.mqtt.gallery_public_key is None:
        return None
    from daemon.bundles import load_public_key
    from daemon.fleet.link import GallerySync
    from daemon.fleet.sync import apply_signed_bundle
    from daemon.gallery import Gallery
    from engines.model_card import cards_of

    key = load_public_key(config.mqtt.gallery_public_key)
    installed = cards_of(config.models.models_dir, "embedder")

    def running_version() -> dict | None:
        with Gallery.open(config.gallery.path) as gallery:
            synced = gallery.synced_bundle()
        return None if synced is None else {"version": synced.version, "sender": synced.sender,
                                            "applied_at": synced.applied_at}

    return GallerySync(lambda payload: apply_signed_bundle(payload, key, config.gallery.path, config.embedder,
                                                           installed), running_version, record)


def _keep_runtime_parts(running: Config, fresh: Config) -> Config:
    return replace(fresh, camera=running.camera, door=running.door, models=running.models,
                   detector=running.detector, embedder=running.embedder, gallery=running.gallery,
                   events=running.events, mqtt=running.mqtt, metrics=running.metrics,
                   liveness=replace(fresh.liveness,
                                    models_dir=running.liveness.models_dir or fresh.liveness.models_dir))
