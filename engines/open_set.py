"""The open-set threshold: how close a stranger's best match may come, for a gallery of a given size.

A door answers 1:N. A stranger is falsely identified when the nearest of the gallery's M
templates lies under the threshold t, so with a per-comparison false accept rate FAR(t)

    FPIR(t) = 1 - (1 - FAR(t)) ** M   (about M x FAR(t) while that is small)

and the threshold that holds FPIR at max_fpir is the one with FAR(t) = 1 - (1 - max_fpir) ** (1 / M).
At M = 1,000 and max_fpir 1e-3 that is FAR 1e-6, far below anything a development set measures
directly, so FAR(t) comes from a model of the impostor distances' lower tail: the distances of
different people's faces below tail_start (the closest tail_fraction of them) are fitted with a
generalized Pareto distribution (the limit law of exceedances over a high threshold, Pickands-
Balkema-de Haan), by probability-weighted moments (Hosking and Wallis 1987: closed form, and
steadier than maximum likelihood on a few thousand exceedances). Each embedder card records its
fit (embedding.impostor_tail) with the data it came from; `tools/evaluate.py impostors` measures it.

Counting templates, not people, as comparisons is the conservative choice: a person's several
templates are alike, so their best-of-three impostor distance is less often low than three
independent draws' would be. A claimed identity (a card, a PIN) is one comparison: M = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The tail is fitted on the closest share of impostor comparisons: small enough that the GPD holds (fitted on
# the closest 1% of 2 million distances between random 128-d directions, the shape came out too negative and
# FAR 1e-6 was under-predicted threefold; on the closest 0.1% a 9-million-pair sample measured 1.0e-6 at the
# predicted threshold), large enough with a few million pairs to give thousands of exceedances.
DEFAULT_TAIL_FRACTION = 1e-3


@dataclass(frozen=True)
class ImpostorTail:
    """FAR(t), the share of impostor comparisons with distance below t, for t at or below tail_start."""

    tail_start: float  # u: a distance; below it the generalized Pareto tail holds
    tail_fraction: float  # FAR(u): the share of impostor comparisons closer than u
    shape: float  # xi of the generalized Pareto distribution of u - distance (< 0: a bounded tail)
    scale: float  # sigma, in distance units
    comparisons: int  # impostor comparisons the fit came from
    source: str = ""  # the data and the command that measured it

    def __post_init__(self) -> None:
        if not 0 < self.tail_fraction < 1 or self.scale <= 0 or self.comparisons < 1:
            raise ValueError(f"impostor tail: tail_fraction {self.tail_fraction} must be in (0, 1), scale "
                             f"{self.scale} positive and comparisons {self.comparisons} at least 1")

    def far(self, threshold: float) -> float:
        """The modelled share of impostor comparisons with distance below threshold (threshold <= tail_start)."""
        if threshold > self.tail_start:
            raise ValueError(f"distance {threshold:.4f} is above the impostor tail's start {self.tail_start:.4f}: "
                             f"the model covers false accept rates up to {self.tail_fraction:g} only")
        excess = (self.tail_start - threshold) / self.scale
        if abs(self.shape) < 1e-9:
            return self.tail_fraction * math.exp(-excess)
        base = 1 + self.shape * excess
        return 0.0 if base <= 0 else self.tail_fraction * base ** (-1 / self.shape)

    def threshold_for_far(self, far: float) -> float:
        """The distance below which the modelled share of impostor comparisons is far (far <= tail_fraction)."""
        if not 0 < far <= self.tail_fraction:
            raise ValueError(f"false accept rate {far:g} is outside the impostor tail, which covers "
                             f"(0, {self.tail_fraction:g}]")
        ratio = self.tail_fraction / far
        if abs(self.shape) < 1e-9:
            excess = math.log(ratio)
        else:
            excess = (ratio ** self.shape - 1) / self.shape
        return self.tail_start - self.scale * excess

    def as_card(self) -> dict[str, Any]:
        """The card's embedding.impostor_tail mapping."""
        return {"tail_start": round(self.tail_start, 5), "tail_fraction": self.tail_fraction,
                "shape": round(self.shape, 5), "scale": round(self.scale, 6), "comparisons": self.comparisons,
                "source": self.source}

    @classmethod
    def from_card(cls, raw: Any, where: str) -> ImpostorTail:
        """The tail from a card's embedding.impostor_tail mapping; ValueError naming where and the key."""
        keys = {"tail_start": float, "tail_fraction": float, "shape": float, "scale": float, "comparisons": int,
                "source": str}
        if not isinstance(raw, dict) or set(raw) != set(keys):
            raise ValueError(f"{where} = {raw!r} is not allowed: expected a mapping with exactly the keys "
                             f"{sorted(keys)} (tools/evaluate.py impostors prints it)")
        for key, kind in keys.items():
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                raise ValueError(f"{where}.{key} = {value!r} is not allowed: expected a {kind.__name__}")
        try:
            return cls(**{key: kind(raw[key]) for key, kind in keys.items()})
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None


def fit_tail(impostor: np.ndarray, tail_fraction: float = DEFAULT_TAIL_FRACTION, source: str = "") -> ImpostorTail:
    """A generalized Pareto fit to the closest tail_fraction of impostor distances (probability-weighted moments)."""
    distances = np.sort(np.asarray(impostor, np.float64).ravel())
    count = int(np.floor(tail_fraction * len(distances)))
    if count < 50:
        raise ValueError(f"{len(distances)} impostor distances give {count} in the closest {tail_fraction:g}; "
                         "a tail fit needs at least 50")
    start = float((distances[count - 1] + distances[count]) / 2)
    excess = np.sort(start - distances[:count])  # ascending exceedances over the tail's start
    a0 = excess.mean()
    a1 = np.mean(excess * (count - 1 - np.arange(count)) / (count - 1))
    k = a0 / (a0 - 2 * a1) - 2  # Hosking and Wallis' k = -xi
    scale = 2 * a0 * a1 / (a0 - 2 * a1)
    return ImpostorTail(start, count / len(distances), float(-k), float(scale), len(distances), source)


def comparison_far(max_fpir: float, comparisons: int) -> float:
    """The per-comparison false accept rate at which M comparisons give one stranger FPIR max_fpir."""
    if not 0 < max_fpir < 1:
        raise ValueError(f"max_fpir = {max_fpir}: expected a rate between 0 and 1")
    # -expm1(log1p(-p) / M) is 1 - (1 - p) ** (1 / M) without the rounding of 1 - (1 - p) at p ~ 1e-9.
    return -math.expm1(math.log1p(-max_fpir) / max(int(comparisons), 1))


def identification_threshold(tail: ImpostorTail, max_fpir: float, comparisons: int) -> float:
    """The distance threshold that holds a stranger's FPIR at max_fpir against `comparisons` templates.

    A gallery so small that the rate lies above the fitted tail gets the tail's start: the model
    says no more there, and a looser threshold than that is not needed by any door.
    """
    far = comparison_far(max_fpir, comparisons)
    return tail.tail_start if far >= tail.tail_fraction else tail.threshold_for_far(far)


def verification_threshold(tail: ImpostorTail, far: float) -> float:
    """1:1 (a claimed identity: one comparison): the distance threshold at false accept rate far."""
    return identification_threshold(tail, far, 1)


def expected_fpir(tail: ImpostorTail, threshold: float, comparisons: int) -> float:
    """The modelled FPIR of a threshold against `comparisons` templates."""
    return -math.expm1(max(int(comparisons), 1) * math.log1p(-tail.far(threshold)))
