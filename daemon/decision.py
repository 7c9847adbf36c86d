"""Multi-frame decision: who a track is, decided once, from K agreeing frames of N."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from daemon.tracker import Track


class MatchView(Protocol):
    """What the decision needs from a gallery search result."""

    person_id: int
    name: str
    distance: float
    runner_up_distance: float


@dataclass(frozen=True)
class DecisionConfig:
    threshold: float  # a frame matches when its distance is below this (the model card's default)
    margin: float = 0.05  # and the runner-up person is at least this much further away
    k: int = 3  # frames that must agree on one person ...
    n: int = 5  # ... among the track's last n frames

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"decision.k = {self.k} is not allowed: expected 1 <= k <= n ({self.n})")
        if self.threshold <= 0 or self.margin < 0:
            raise ValueError("decision.threshold must be positive and decision.margin not negative")


@dataclass(frozen=True)
class Decision:
    track_id: int
    person_id: int | None  # None: an unknown face
    name: str | None
    distance: float | None  # the best agreeing frame's distance
    frames: int  # frames the track had when it was decided


class Decider:
    """Turns per-frame matches of a track into at most one decision per track."""

    def __init__(self, config: DecisionConfig) -> None:
        self.config = config
        self._best: dict[tuple[int, int], tuple[float, str]] = {}

    def vote(self, match: MatchView | None) -> int | None:
        """The person this frame speaks for, or None when it is not a confident match."""
        if match is None or match.distance >= self.config.threshold:
            return None
        if match.runner_up_distance - match.distance < self.config.margin:
            return None
        return match.person_id

    def observe(self, track: Track, match: MatchView | None) -> Decision | None:
        """Record one frame of a track; returns a decision the first time one is reached."""
        person = self.vote(match)
        track.votes.append(person)
        del track.votes[:-self.config.n]
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

    def _decide(self, track: Track) -> Decision | None:
        counts = Counter(v for v in track.votes if v is not None)
        if counts:
            person, agreeing = counts.most_common(1)[0]
            if agreeing >= self.config.k:
                track.decided = True
                distance, name = self._best[(track.id, person)]
                return Decision(track.id, person, name, distance, track.frames)
        # A full window in which no person can reach k is an unknown face. It is
        # reported once, but the track stays open: a face that was too small or
        # turned away may still be recognised as it comes closer.
        window_full = len(track.votes) >= self.config.n
        if window_full and not track.reported_unknown and track.votes.count(None) > self.config.n - self.config.k:
            track.reported_unknown = True
            return Decision(track.id, None, None, None, track.frames)
        return None
