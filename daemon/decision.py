"""Multi-frame decision: who a track is, decided once, from K agreeing frames of N, and
whether those frames show a live face.

Liveness (presentation-attack detection, engines/liveness.py) is judged over the same
frames as identity: the frames of the window that voted for the person. The statistic is
their median live score (engines/liveness_temporal.py, where it was measured). A door track of a real person has a few odd frames (motion blur,
a box that jitters onto the background, a face half out of the light) and a photo or a
screen held up to the camera can score high now and then; the median of K or more frames
ignores a minority of odd frames either way, where the mean lets one extreme frame move
the verdict, the minimum denies a real person for one bad frame and the maximum grants a
photo for one lucky frame. The track is granted when the median is at or above the
threshold and denied as a presentation attack otherwise; either way it is decided once.
A track whose landmarks moved as one flat picture (engines/planar_motion.py, over the track's
latest frames) is denied as an attack whatever its scores (engines.liveness_temporal.judge_track).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from daemon.tracker import Track
from engines import open_set
from engines.liveness_temporal import judge_track, track_live_score
from engines.planar_motion import MAX_FRAMES
from engines.model_card import ModelCard


class MatchView(Protocol):
    """What the decision needs from a gallery search result."""

    person_id: int
    name: str
    distance: float
    runner_up_distance: float


@dataclass(frozen=True)
class DecisionConfig:
    # A frame matches when its distance is below the threshold in force: this one where it is set (an
    # explicit override), else the one that holds max_fpir for the gallery's size (threshold_in_force).
    threshold: float | None = None
    margin: float = 0.05  # and the runner-up person is at least this much further away
    k: int = 3  # frames that must agree on one person ...
    n: int = 5  # ... among the track's last n frames
    max_fpir: float = 1e-3  # per probe: the share of a stranger's frames that may vote for an enrolled person

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"decision.k = {self.k} is not allowed: expected 1 <= k <= n ({self.n})")
        if self.threshold is not None and self.threshold <= 0 or self.margin < 0:
            raise ValueError("decision.threshold must be positive and decision.margin not negative")
        if not 0 < self.max_fpir < 1:
            raise ValueError(f"decision.max_fpir = {self.max_fpir} is not allowed: expected a rate between 0 and 1")


@dataclass(frozen=True)
class Threshold:
    """The distance threshold in force and where it comes from (logged, shown by check-config)."""

    value: float
    source: str
    comparisons: int  # the gallery's templates it was derived for (1: a claimed identity)
    expected_fpir: float | None  # per probe, by the card's impostor model; None without one
    # per image, interpolated in the card's measured embedding.tpir_at_threshold; None outside its range
    expected_tpir: float | None = None


def threshold_in_force(config: DecisionConfig, card: ModelCard, comparisons: int) -> Threshold:
    """The threshold a door searching `comparisons` templates (index.count) decides with.

    decision.threshold wins where set. Otherwise the embedder card's impostor tail gives the distance
    at which a stranger's best match of that many templates falls under it with probability max_fpir
    (engines/open_set.py); a card without a measured tail keeps its own 1:1 threshold, and FPIR then
    grows with the gallery.
    """
    comparisons = max(int(comparisons), 1)
    tail = card.impostor_tail
    if config.threshold is not None:
        expected = None if tail is None or config.threshold > tail.tail_start else \
            open_set.expected_fpir(tail, config.threshold, comparisons)
        return Threshold(config.threshold, "decision.threshold in the config", comparisons, expected,
                         _expected_tpir(card, config.threshold))
    if tail is None:
        return Threshold(card.threshold, f"the card's 1:1 threshold ({card.path.name} has no embedding.impostor_tail: "
                         "FPIR grows with the gallery)", comparisons, None, _expected_tpir(card, card.threshold))
    value = open_set.identification_threshold(tail, config.max_fpir, comparisons)
    return Threshold(value, f"max_fpir {config.max_fpir:g} for {comparisons} templates ({card.path.name} impostor tail)",
                     comparisons, open_set.expected_fpir(tail, value, comparisons), _expected_tpir(card, value))


def _expected_tpir(card: ModelCard, threshold: float) -> float | None:
    measured = card.tpir_at_threshold
    if not measured or not measured[0][0] <= threshold <= measured[-1][0]:
        return None
    return float(np.interp(threshold, [t for t, _ in measured], [r for _, r in measured]))


def claimed_threshold(config: DecisionConfig, card: ModelCard) -> Threshold:
    """A claimed identity (a card or PIN names the person): one comparison, 1:1, at max_fpir as its FAR."""
    return threshold_in_force(config, card, 1)


@dataclass(frozen=True)
class Decision:
    track_id: int
    person_id: int | None  # None: an unknown face
    name: str | None
    distance: float | None  # the best agreeing frame's distance
    frames: int  # frames the track had when it was decided
    # The median live score of the frames the decision rests on (those that voted for the person;
    # for an unknown face, the window's frames); None where liveness was not computed.
    live_score: float | None = None
    attack: bool = False  # the identity votes agreed, but the frames were judged a presentation attack
    # The closest match any of the track's frames had, voting or not: for an unknown face, the enrolled
    # person it came nearest to (a near miss to audit); None where no frame had a match.
    nearest: MatchView | None = None
    attack_reason: str | None = None  # why (judge_track's reason)


class Decider:
    """Turns per-frame matches of a track into at most one decision per track.

    live_threshold: the least median live score granted (liveness.threshold); None when
    liveness is off, and identity alone decides.
    """

    def __init__(self, config: DecisionConfig, live_threshold: float | None = None,
                 threshold: float | None = None) -> None:
        self.config = config
        self.live_threshold = live_threshold
        # The distance threshold in force: threshold_in_force's value for the gallery now (the service
        # sets it again when the gallery changes), or config.threshold.
        self.threshold = threshold if threshold is not None else config.threshold
        if self.threshold is None:
            raise ValueError("a Decider needs a threshold: decision.threshold or threshold_in_force's value")
        self._best: dict[tuple[int, int], tuple[float, str]] = {}
        self._nearest: dict[int, MatchView] = {}  # track id -> the closest match of its frames

    def vote(self, match: MatchView | None) -> int | None:
        """The person this frame speaks for, or None when it is not a confident match."""
        if match is None or match.distance >= self.threshold:
            return None
        if match.runner_up_distance - match.distance < self.config.margin:
            return None
        return match.person_id

    def observe(self, track: Track, match: MatchView | None, live: float | None = None,
                landmarks=None) -> Decision | None:
        """Record one frame of a track (its match, its live score if computed, its face's 5x2
        landmarks); returns a decision the first time one is reached."""
        if landmarks is not None:
            track.landmarks.append(landmarks)
            del track.landmarks[:-MAX_FRAMES]
        person = self.vote(match)
        track.votes.append(person)
        track.live.append(None if live is None else float(live))
        del track.votes[:-self.config.n]
        del track.live[:-self.config.n]
        if match is not None and (track.id not in self._nearest or match.distance < self._nearest[track.id].distance):
            self._nearest[track.id] = match
        if person is not None:
            key = (track.id, person)
            if key not in self._best or match.distance < self._best[key][0]:
                self._best[key] = (match.distance, match.name)
        if track.decided:
            return None
        return self._decide(track)

    def forget(self, live_track_ids: set[int]) -> None:
        """Drop per-track memory of tracks that have ended."""
        self._best = {key: value for key, value in self._best.items() if key[0] in live_track_ids}
        self._nearest = {key: value for key, value in self._nearest.items() if key in live_track_ids}

    def _decide(self, track: Track) -> Decision | None:
        counts = Counter(v for v in track.votes if v is not None)
        if counts:
            person, agreeing = counts.most_common(1)[0]
            if agreeing >= self.config.k:
                scores = [s for v, s in zip(track.votes, track.live) if v == person and s is not None]
                if self.live_threshold is not None and len(scores) < self.config.k:
                    # Liveness was just switched on (SIGHUP): wait until k voting frames have a score.
                    return None
                live = track_live_score(scores) if scores else None
                verdict = None if self.live_threshold is None else judge_track(scores, track.landmarks,
                                                                               self.live_threshold)
                track.decided = True
                distance, name = self._best[(track.id, person)]
                return Decision(track.id, person, name, distance, track.frames, live,
                                verdict is not None and not verdict.live,
                                attack_reason=verdict.reason if verdict is not None else None)
        # A full window in which no person can reach k is an unknown face. It is
        # reported once, but the track stays open: a face that was too small or
        # turned away may still be recognised as it comes closer.
        window_full = len(track.votes) >= self.config.n
        if window_full and not track.reported_unknown and track.votes.count(None) > self.config.n - self.config.k:
            track.reported_unknown = True
            scores = [s for s in track.live if s is not None]
            return Decision(track.id, None, None, None, track.frames, track_live_score(scores) if scores else None,
                            nearest=self._nearest.get(track.id))
        return None
