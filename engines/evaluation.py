"""Verification and identification metrics over embedding distances, and which face of a photo to measure.

Distances follow the model card's metric: lower means more alike. A pair is
accepted as "same person" when its distance is below the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engines.face import Face

# How a labelled photo holding several faces names the one it is about. Enrolment has its own rule
# (exactly one face, or the largest on request: daemon/enrolment.py) and does not use these.
FACE_RULES = ("central", "largest")


def select_face(faces: Sequence[Face], image_shape: tuple[int, ...], rule: str) -> Face | None:
    """The face a labelled photo is about, None when there is none.

    central: the face whose box centre is nearest the photo's centre (pairs protocols such as LFW centre
    the subject, and bystanders are often larger); largest: the widest box. Ties go to the first found.
    """
    if rule not in FACE_RULES:
        raise ValueError(f"face selection rule {rule!r}: allowed are {', '.join(FACE_RULES)}")
    if not faces:
        return None
    if rule == "largest":
        return max(faces, key=lambda face: face.width)
    centre = np.array([image_shape[1], image_shape[0]], np.float64) / 2
    return min(faces, key=lambda face: float(np.linalg.norm((face.box[:2] + face.box[2:4]) / 2 - centre)))


@dataclass(frozen=True)
class Roc:
    thresholds: np.ndarray  # ascending distances
    far: np.ndarray  # impostor pairs accepted at each threshold
    tar: np.ndarray  # genuine pairs accepted at each threshold


def roc(genuine: np.ndarray, impostor: np.ndarray) -> Roc:
    """ROC over every distinct distance, accepting pairs with distance < threshold."""
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("a ROC curve needs at least one genuine and one impostor pair")
    distances = np.unique(np.concatenate([genuine, impostor]))
    thresholds = np.concatenate([distances, [np.nextafter(distances[-1], np.inf)]])
    genuine_sorted, impostor_sorted = np.sort(genuine), np.sort(impostor)
    tar = np.searchsorted(genuine_sorted, thresholds, side="left") / len(genuine)
    far = np.searchsorted(impostor_sorted, thresholds, side="left") / len(impostor)
    return Roc(thresholds, far, tar)


def auc(curve: Roc) -> float:
    """Area under the ROC (TAR against FAR), from (0, 0) to (1, 1)."""
    far = np.concatenate([[0.0], curve.far, [1.0]])
    tar = np.concatenate([[0.0], curve.tar, [1.0]])
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def equal_error_rate(curve: Roc) -> tuple[float, float]:
    """(EER, threshold) where the false accept and false reject rates cross."""
    frr = 1.0 - curve.tar
    i = int(np.argmin(np.abs(curve.far - frr)))
    return float((curve.far[i] + frr[i]) / 2), float(curve.thresholds[i])


def threshold_for_far(curve: Roc, target_far: float) -> float:
    """The largest threshold whose false accept rate does not exceed target_far."""
    allowed = np.flatnonzero(curve.far <= target_far)
    return float(curve.thresholds[allowed[-1]])


def tar_at_far(curve: Roc, target_far: float) -> float:
    allowed = np.flatnonzero(curve.far <= target_far)
    return float(curve.tar[allowed[-1]])


def best_accuracy_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    # Midpoints between distinct distances: a threshold sitting on a sample
    # value generalises worse to held-out pairs than one between samples.
    values = np.unique(distances)
    candidates = np.concatenate([[values[0]], (values[1:] + values[:-1]) / 2, [np.inf]])
    accuracies = [np.mean((distances < t) == same) for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


def kfold_accuracy(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of accuracy, each fold judged at the threshold best on the others."""
    scores = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_accuracy_threshold(distances[~test], same[~test])
        scores.append(np.mean((distances[test] < threshold) == same[test]))
    return float(np.mean(scores)), float(np.std(scores))


def pairwise_distances(embeddings: np.ndarray, metric: str) -> np.ndarray:
    embeddings = embeddings.astype(np.float64)  # float32 expansion leaves ~1e-3 on the diagonal
    if metric == "cosine":
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        return 1.0 - unit @ unit.T
    squared = (embeddings ** 2).sum(axis=1)
    return np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * embeddings @ embeddings.T, 0.0))


def all_pairs(distances: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor distances over every unordered pair of samples."""
    upper = np.triu_indices(len(identities), k=1)
    same = identities[upper[0]] == identities[upper[1]]
    values = distances[upper]
    return values[same], values[~same]


def rank1_identification(distances: np.ndarray, identities: np.ndarray) -> tuple[float, int]:
    """Leave-one-out 1:N: each sample whose identity has another sample is a probe against all others."""
    counts = {identity: int(np.sum(identities == identity)) for identity in np.unique(identities)}
    probes = [i for i, identity in enumerate(identities) if counts[identity] > 1]
    hits = 0
    for i in probes:
        row = distances[i].copy()
        row[i] = np.inf
        hits += identities[int(np.argmin(row))] == identities[i]
    return (hits / len(probes) if probes else float("nan")), len(probes)


@dataclass(frozen=True)
class OpenSet:
    enrolled_identities: int
    unknown_identities: int
    detect_and_identify_rate: float  # enrolled probes matched to the right person below threshold
    unknown_rejection_rate: float  # never-enrolled probes with no gallery match below threshold


def open_set(distances: np.ndarray, identities: np.ndarray, threshold: float, seed: int = 0) -> OpenSet:
    """Enrol half of the identities (first sample each) and probe with everything else."""
    names = np.unique(identities)
    enrolled = set(np.random.default_rng(seed).permutation(names)[: len(names) // 2].tolist())
    gallery = np.array([i for i, identity in enumerate(identities)
                        if identity in enrolled and i == np.flatnonzero(identities == identity)[0]])
    gallery_set = set(gallery.tolist())
    known_hits = known = unknown_rejected = unknown = 0
    for i, identity in enumerate(identities):
        if i in gallery_set:
            continue
        nearest = gallery[int(np.argmin(distances[i, gallery]))]
        accepted = distances[i, nearest] < threshold
        if identity in enrolled:
            known += 1
            known_hits += bool(accepted and identities[nearest] == identity)
        else:
            unknown += 1
            unknown_rejected += not accepted
    return OpenSet(len(enrolled), len(names) - len(enrolled),
                   known_hits / known if known else float("nan"),
                   unknown_rejected / unknown if unknown else float("nan"))


def cross_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """len(a) x len(b) distances under the card's metric (pairwise_distances between two sets)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        return 1.0 - (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    squared = (a ** 2).sum(axis=1)[:, None] + (b ** 2).sum(axis=1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


@dataclass(frozen=True)
class OpenSetCurve:
    """Open-set 1:N rates over every threshold (ISO/IEC 19795-1, NIST FRVT 1:N terms): a probe's frame votes
    when its best match is closer than the threshold and clears the runner-up margin."""

    thresholds: np.ndarray  # ascending distances
    fpir: np.ndarray  # strangers whose frame votes for anyone
    tpir: np.ndarray  # genuine probes whose frame votes for their own person (FNIR = 1 - TPIR)


def open_set_curve(genuine_distance: np.ndarray, genuine_counts: np.ndarray, stranger_distance: np.ndarray,
                   stranger_counts: np.ndarray) -> OpenSetCurve:
    """The rates at every distinct best-match distance. genuine_counts: the probe's best match is its own person
    and clears the margin (it votes right at any threshold above its distance); stranger_counts: it clears the
    margin (it votes for someone). The margin does not depend on the threshold, so both rates grow with it."""
    if len(genuine_distance) == 0 or len(stranger_distance) == 0:
        raise ValueError("an open-set curve needs genuine and stranger probes")
    voting_genuine = np.sort(genuine_distance[genuine_counts])
    voting_strangers = np.sort(stranger_distance[stranger_counts])
    finite = np.concatenate([voting_genuine, voting_strangers])
    values = np.unique(finite[np.isfinite(finite)])
    thresholds = np.concatenate([values, [np.nextafter(values[-1], np.inf)]]) if len(values) else np.array([np.inf])
    tpir = np.searchsorted(voting_genuine, thresholds, side="left") / len(genuine_distance)
    fpir = np.searchsorted(voting_strangers, thresholds, side="left") / len(stranger_distance)
    return OpenSetCurve(thresholds, fpir, tpir)


def tpir_at_fpir(curve: OpenSetCurve, target: float) -> float:
    """TPIR at the largest threshold whose FPIR does not exceed target."""
    return float(curve.tpir[np.flatnonzero(curve.fpir <= target)[-1]])


def threshold_at_fpir(curve: OpenSetCurve, target: float) -> float:
    """The largest threshold whose FPIR does not exceed target (the empirical one the model should predict)."""
    return float(curve.thresholds[np.flatnonzero(curve.fpir <= target)[-1]])


def tpir_at_threshold(curve: OpenSetCurve, threshold: float) -> float:
    """TPIR at any threshold: the rates step at the curve's thresholds, and just above one hold the next one's."""
    return float(curve.tpir[min(int(np.searchsorted(curve.thresholds, threshold, side="left")), len(curve.tpir) - 1)])
