"""`tools/evaluate.py identify` and `impostors`: open-set 1:N figures, measured as the door decides.

identify SPLIT.tsv: the `enrol` rows go through the front desk's enrolment code (daemon/enrolment.py:
its quality gate, a template per installed embedder, the largest face of each photo) into a temporary
gallery; every probe (`genuine`, `stranger`) goes through the door's recognition (daemon/recognition.py:
detector, door quality gate, embedder) and the door's decision (daemon/decision.py) at the defaults for
that gallery: the threshold in force for its size, the runner-up margin, k of n for a track. Per probe
image, a stranger is falsely identified when its frame votes for anyone (FPIR), a genuine probe is
identified when it votes for its own person (TPIR) and misidentified when it votes for someone else.
Rows with a `track` id are also decided together as one walk-up.

impostors SPLIT.tsv: the distances between different people's faces among the split's enrol and genuine
rows (the strangers stay out, so identify can check the fit on them), a generalized Pareto fit of their
lower tail (engines/open_set.py) printed as a card's embedding.impostor_tail, and the closest pairs, to
look at before trusting the tail: some "different people" of a public set are one person.

Faces are embedded once per photo, setting and model and kept in --cache (outside the repository).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import pickle
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from daemon import config as config_module
from daemon.demo import demo_config
from daemon.decision import Decider, Threshold, threshold_in_force
from daemon.enrolment import Enroller, Shot, enrol
from daemon.gallery import Gallery, GalleryReader
from daemon.recognition import Recogniser
from daemon.tracker import Track
from engines import evaluation as ev
from engines import open_set
from engines.errors import ImageError
from engines.images import load_image
from engines.model_card import ModelCard, find_card, load_card
from engines.manifest import MODELS_DIR

ROLES = ("enrol", "genuine", "stranger")
DEFAULT_CACHE = Path.home() / ".cache" / "facegate" / "identify"
REPORTED_RATES = ("0.01", "0.001")


class SplitError(ValueError):
    """The split file is not usable; the message names the line."""


@dataclass(frozen=True)
class Row:
    path: Path
    identity: str
    role: str
    track: str  # "" where the row is not part of a track


def read_split(path: Path, root: Path | None) -> list[Row]:
    """The rows of a split TSV (path, identity, role[, track]); paths relative to root (default: the TSV's folder)."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            header = reader.fieldnames or []
            if not {"path", "identity", "role"} <= set(header):
                raise SplitError(f"{path}: expected a header with columns path, identity, role (and optionally "
                                 f"track), got {header}")
            base = root or path.parent
            rows = []
            for line, raw in enumerate(reader, 2):
                role = (raw.get("role") or "").strip()
                if role not in ROLES:
                    raise SplitError(f"{path} line {line}: role {role!r} is not one of {', '.join(ROLES)}")
                if not (raw.get("path") or "").strip() or not (raw.get("identity") or "").strip():
                    raise SplitError(f"{path} line {line}: path and identity must not be empty")
                rows.append(Row(base / raw["path"].strip(), raw["identity"].strip(), role,
                                (raw.get("track") or "").strip()))
    except OSError as error:
        raise SplitError(f"cannot read {path}: {error.strerror}") from None
    if not rows:
        raise SplitError(f"{path}: the split has no rows")
    return rows


class Cache:
    """What one photo gave under one setting (the models, the gate, the detector), kept in a pickle per setting."""

    def __init__(self, folder: Path | None, setting: str) -> None:
        digest = hashlib.sha256(setting.encode()).hexdigest()[:16]
        self.path = None if folder is None else folder / f"{digest}.pickle"
        self.entries: dict[str, object] = {}
        if self.path is not None and self.path.exists():
            try:
                self.entries = pickle.loads(self.path.read_bytes())
            except (OSError, pickle.UnpicklingError, EOFError) as error:
                print(f"warning: ignoring unreadable cache {self.path}: {error}", file=sys.stderr)
        self._unsaved = 0

    @staticmethod
    def key(path: Path) -> str:
        try:
            stat = path.stat()
        except OSError:
            return f"{path}|missing"
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def get(self, path: Path) -> object | None:
        return self.entries.get(self.key(path))

    def put(self, path: Path, value: object) -> None:
        self.entries[self.key(path)] = value
        self._unsaved += 1
        if self._unsaved >= 500:  # an interrupted run keeps most of its work
            self.save()

    def save(self) -> None:
        if self.path is None or not self._unsaved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(self.entries, protocol=pickle.HIGHEST_PROTOCOL))
        partial.replace(self.path)
        self._unsaved = 0


def _progress(label: str, done: int, total: int) -> None:
    if done == total or done % 50 == 0:
        print(f"\r{label} {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


def door_config(card: ModelCard, state: Path, flip: bool | None) -> config_module.Config:
    """The door's defaults (liveness off: a dev photo is not a walk-up), its state in a temporary folder."""
    # The demo's embedded config (a complete door) with this card and liveness off; the clip is never opened.
    raw = {**demo_config(state), "embedder": {"card": str(card.path)}, "liveness": {"enabled": False}}
    config = config_module.parse(raw)
    if flip is not None:
        config = replace(config, embedder=replace(config.embedder, flip_average=flip))
    return config


# --- enrolment --------------------------------------------------------------------------------------------

def enrol_shots(rows: list[Row], enroller: Enroller, cache: Cache) -> tuple[dict[str, list[Shot]], list[str]]:
    """Identity -> accepted shots of its enrol rows, through the front desk's gate; and the refused rows."""
    shots: dict[str, list[Shot]] = {}
    refused = []
    enrol_rows = [r for r in rows if r.role == "enrol"]
    for done, row in enumerate(enrol_rows, 1):
        verdict = cache.get(row.path)
        if verdict is None:
            verdict = enroller.judge_file(row.path, largest=True)
            cache.put(row.path, verdict)
        if isinstance(verdict, Shot):
            shots.setdefault(row.identity, []).append(verdict)
        else:
            refused.append(f"{row.path}: enrolment refused: {'; '.join(verdict.reasons)}")
        _progress("enrolling", done, len(enrol_rows))
    cache.save()
    return shots, refused


def build_gallery(path: Path, card: ModelCard, shots: dict[str, list[Shot]]) -> None:
    with Gallery.open(path) as gallery:
        for identity, person_shots in shots.items():
            # force: lookalikes of a public set are enrolled as its labels say, as an operator would after looking.
            enrol(gallery, card, identity, person_shots, force=True)


# --- probes ------------------------------------------------------------------------------------------------

class _Recording:
    """Stands in for the gallery while the door's recognition embeds a probe: keeps what it was asked."""

    def __init__(self) -> None:
        self.probes: np.ndarray | None = None

    def search(self, probes: np.ndarray) -> list[None]:
        self.probes = np.array(probes, np.float32)
        return [None] * len(probes)


@dataclass(frozen=True)
class Probe:
    """What the door's recognition made of a photo: its embedding, or why it has none."""

    embedding: np.ndarray | None
    problem: str | None  # unreadable photo, no face, or the quality gate's refusals


def probe(recogniser: Recogniser, path: Path) -> Probe:
    try:
        rgb = load_image(path)
    except ImageError as error:
        return Probe(None, f"unreadable: {error}")
    face = ev.select_face(recogniser.detect(rgb), rgb.shape, "largest")
    if face is None:
        return Probe(None, "no face found")
    recording = _Recording()
    observation = recogniser.recognise(rgb, [face], recording)[0]
    if not observation.usable:
        return Probe(None, "quality gate: " + "; ".join(observation.refusals))
    return Probe(recording.probes[0], None)


def probe_all(rows: list[Row], recogniser: Recogniser, cache: Cache, label: str) -> list[Probe]:
    found = []
    for done, row in enumerate(rows, 1):
        result = cache.get(row.path)
        if result is None:
            result = probe(recogniser, row.path)
            cache.put(row.path, result)
        found.append(result)
        _progress(label, done, len(rows))
    cache.save()
    return found


# --- deciding ----------------------------------------------------------------------------------------------

def track_outcomes(rows: list[Row], matches: list, decider: Decider) -> dict[str, str]:
    """Track id -> 'right', 'wrong' (granted as someone else), 'unknown' or 'undecided': the probes of a track
    in order, fed to the door's Decider as the frames of one walk-up."""
    tracks: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.track:
            tracks.setdefault(row.track, []).append(i)
    outcomes = {}
    for number, (name, members) in enumerate(tracks.items()):
        track = Track(number, np.zeros(4), 0.0, 0.0)
        outcome = "undecided"
        for i in members:
            if matches[i] is None:
                continue  # a photo without a usable face gives the door no frame to vote with
            decision = decider.observe(track, matches[i])
            if decision is not None:
                if decision.person_id is None:
                    outcome = "unknown"
                else:
                    outcome = "right" if decision.name == rows[i].identity else "wrong"
                    break
        outcomes[name] = outcome
    return outcomes


def identify(rows: list[Row], card: ModelCard, cache_dir: Path | None, flip: bool | None = None,
             margin: float | None = None) -> tuple[dict, ev.OpenSetCurve]:
    """The identify report (JSON keys as documented) and the DET curve."""
    models_dir = card.path.parent
    setting = f"{card.id}|{card.path}|flip={flip if flip is not None else card.flip_average}"
    with tempfile.TemporaryDirectory(prefix="facegate-identify-") as state:
        config = door_config(card, Path(state), flip)
        decision = config.decision if margin is None else replace(config.decision, margin=margin)
        with Enroller.from_models(models_dir, card=config.embedder) as enroller:
            shots, problems = enrol_shots(rows, enroller, Cache(cache_dir, f"enrol|{setting}|{enroller.limits}"))
        build_gallery(config.gallery.path, config.embedder, shots)
        probes = [r for r in rows if r.role != "enrol"]
        recogniser = Recogniser(config)
        try:
            results = probe_all(probes, recogniser, Cache(cache_dir, f"probe|{setting}|{config.detector}|{config.quality}"),
                                "probing")
        finally:
            recogniser.close()
        problems += [f"{row.path}: {result.problem}" for row, result in zip(probes, results)
                     if result.problem and not result.problem.startswith("quality gate")]
        with Gallery.open(config.gallery.path) as gallery:
            reader = GalleryReader(gallery, config.embedder)
            index = reader.index
            threshold = threshold_in_force(decision, config.embedder, index.count)
            usable = [i for i, r in enumerate(results) if r.embedding is not None]
            found = reader.search(np.stack([results[i].embedding for i in usable])) if usable else []
            people, templates = index.people, index.count
    matches: list = [None] * len(probes)
    for i, match in zip(usable, found):
        matches[i] = match
    decider = Decider(decision, threshold=threshold.value)
    votes = [decider.vote(m) for m in matches]
    report = _report(probes, matches, votes, decision.margin, threshold, people, templates, card)
    curve = _curve(probes, matches, decision.margin)
    for rate in REPORTED_RATES:
        report["tpir_at_fpir"][rate] = ev.tpir_at_fpir(curve, float(rate))
        report["threshold_at_fpir"][rate] = ev.threshold_at_fpir(curve, float(rate))
        tail = config.embedder.impostor_tail
        report["predicted_threshold_at_fpir"][rate] = None if tail is None else \
            open_set.identification_threshold(tail, float(rate), templates)
    # For the card's embedding.tpir_at_threshold (check-config's TPIR to expect).
    report["tpir_at_threshold"] = [[round(t, 2), round(ev.tpir_at_threshold(curve, t), 4)]
                                   for t in np.arange(0.30, 0.701, 0.02)]
    outcomes = track_outcomes(probes, matches, Decider(decision, threshold=threshold.value))
    if outcomes:
        report["tracks"] = _track_report(probes, outcomes)
    report["problems"] = problems
    report["quality_refused"] = sum(1 for r in results if r.problem and r.problem.startswith("quality gate"))
    return report, curve


def _report(probes: list[Row], matches: list, votes: list, margin: float, threshold: Threshold, people: int,
            templates: int, card: ModelCard) -> dict:
    genuine = [i for i, r in enumerate(probes) if r.role == "genuine"]
    strangers = [i for i, r in enumerate(probes) if r.role == "stranger"]
    voted_name = [None if v is None else matches[i].name for i, v in enumerate(votes)]
    right = sum(1 for i in genuine if voted_name[i] == probes[i].identity)
    wrong = sum(1 for i in genuine if voted_name[i] not in (None, probes[i].identity))
    # FPIR counts the strangers whose face the door could use: one the quality gate refuses tests no threshold.
    acquired = [i for i in strangers if matches[i] is not None]
    false = [i for i in acquired if voted_name[i] is not None]
    closest = sorted((i for i in strangers if matches[i] is not None), key=lambda i: matches[i].distance)[:10]
    return {
        "model": card.id, "gallery_size": people, "templates": templates,
        "genuine_probes": len(genuine), "stranger_probes": len(strangers), "strangers_acquired": len(acquired),
        "fpir": len(false) / len(acquired) if acquired else None,
        "tpir": right / len(genuine) if genuine else None,
        "misidentification_rate": wrong / len(genuine) if genuine else None,
        "threshold": threshold.value, "threshold_source": threshold.source,
        "expected_fpir": threshold.expected_fpir, "margin": margin,
        "tpir_at_fpir": {}, "threshold_at_fpir": {}, "predicted_threshold_at_fpir": {},
        "closest_strangers": [{"probe": str(probes[i].path), "matched": matches[i].name,
                               "distance": round(matches[i].distance, 4)} for i in closest],
    }


def _curve(probes: list[Row], matches: list, margin: float) -> ev.OpenSetCurve:
    """Each probe's best distance, whether its runner-up clears the margin and whether the best is right."""
    def columns(role: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Every genuine probe (one without a usable face is a miss), the strangers with one (as fpir counts them).
        chosen = [i for i, r in enumerate(probes) if r.role == role and (role == "genuine" or matches[i] is not None)]
        distance = np.array([np.inf if matches[i] is None else matches[i].distance for i in chosen])
        clear = np.array([matches[i] is not None and matches[i].runner_up_distance - matches[i].distance >= margin
                          for i in chosen], bool)
        right = np.array([matches[i] is not None and matches[i].name == probes[i].identity for i in chosen], bool)
        return distance, clear, right

    g_distance, g_clear, g_right = columns("genuine")
    s_distance, s_clear, _ = columns("stranger")
    return ev.open_set_curve(g_distance, g_clear & g_right, s_distance, s_clear)


def _track_report(probes: list[Row], outcomes: dict[str, str]) -> dict:
    role = {row.track: row.role for row in probes if row.track}
    genuine = [o for name, o in outcomes.items() if role[name] == "genuine"]
    strangers = [o for name, o in outcomes.items() if role[name] == "stranger"]
    return {"genuine_tracks": len(genuine), "stranger_tracks": len(strangers),
            "tpir": genuine.count("right") / len(genuine) if genuine else None,
            "misidentification_rate": genuine.count("wrong") / len(genuine) if genuine else None,
            "fpir": sum(o in ("right", "wrong") for o in strangers) / len(strangers) if strangers else None,
            "undecided": sum(o == "undecided" for o in outcomes.values())}


# --- the impostor tail -------------------------------------------------------------------------------------

def impostors(rows: list[Row], card: ModelCard, cache_dir: Path | None, tail_fraction: float,
              source: str) -> dict:
    """Impostor distances among the split's enrol and genuine rows (as the door embeds them), their tail fit,
    and the closest pairs."""
    chosen = [r for r in rows if r.role != "stranger"]
    with tempfile.TemporaryDirectory(prefix="facegate-impostors-") as state:
        config = door_config(card, Path(state), None)
        recogniser = Recogniser(config)
        try:
            setting = f"{card.id}|{card.path}|flip={card.flip_average}"
            results = probe_all(chosen, recogniser, Cache(cache_dir, f"probe|{setting}|{config.detector}|{config.quality}"),
                                "embedding")
        finally:
            recogniser.close()
    keep = [i for i, r in enumerate(results) if r.embedding is not None]
    embeddings = np.stack([results[i].embedding for i in keep])
    identities = np.array([chosen[i].identity for i in keep])
    distances, closest = _impostor_distances(embeddings, identities, card.metric)
    tail = open_set.fit_tail(distances, tail_fraction, source)
    return {"model": card.id, "photos": len(keep), "impostor_pairs": int(len(distances)),
            "impostor_tail": tail.as_card(),
            "closest_pairs": [{"a": str(chosen[keep[a]].path), "b": str(chosen[keep[b]].path),
                               "distance": round(d, 4)} for d, a, b in closest]}


def _impostor_distances(embeddings: np.ndarray, identities: np.ndarray, metric: str,
                        closest: int = 20) -> tuple[np.ndarray, list[tuple[float, int, int]]]:
    """Every distance between two photos of different identities (row blocks keep memory bounded)."""
    parts, best = [], []
    block = 512
    for start in range(0, len(embeddings), block):
        rows = slice(start, start + block)
        distances = ev.cross_distances(embeddings[rows], embeddings[start:], metric)
        # Row r is photo start + r and column c photo start + c: each unordered pair once, where c > r.
        a, b = np.nonzero(np.arange(distances.shape[1])[None, :] > np.arange(distances.shape[0])[:, None])
        values = distances[a, b]
        other = identities[start + a] != identities[start + b]
        values, a, b = values[other], a[other], b[other]
        parts.append(values.astype(np.float32))
        nearest = np.argsort(values)[:closest]
        best += [(float(values[j]), int(start + a[j]), int(start + b[j])) for j in nearest]
    return np.concatenate(parts), sorted(best)[:closest]


# --- the command line ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("split", type=Path, help="TSV with columns path, identity, role (enrol|genuine|stranger)[, track]")
    parser.add_argument("--root", type=Path, help="folder the split's paths are relative to (default: the split's folder)")
    parser.add_argument("--card", type=Path, help="the embedder's model card (default: the one engines/models/DEFAULTS names)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"where embeddings are kept between runs (default {DEFAULT_CACHE})")
    parser.add_argument("--no-cache", action="store_true", help="embed every photo again and keep nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _inputs(args: argparse.Namespace) -> tuple[list[Row], ModelCard] | None:
    """The split's rows and the embedder card; None, the reason printed, when either is unusable."""
    try:
        card = load_card(args.card) if args.card is not None else find_card(MODELS_DIR, "embedder")
        return read_split(args.split, args.root), card
    except (SplitError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def main_identify(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="evaluate.py identify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=IDENTIFY_EXAMPLES)
    add_arguments(parser)
    parser.add_argument("--det", type=Path, help="also write the DET curve (FNIR against FPIR, log axes) as a PNG")
    parser.add_argument("--flip", choices=("on", "off"), help="override the card's embedding.flip_average")
    parser.add_argument("--margin", type=float, help="override decision.margin (default: the door's)")
    args = parser.parse_args(argv)
    inputs = _inputs(args)
    if inputs is None:
        return 2
    rows, card = inputs
    if not any(r.role == "enrol" for r in rows) or not any(r.role != "enrol" for r in rows):
        print(f"error: {args.split}: identify needs enrol rows and probe rows (genuine or stranger)", file=sys.stderr)
        return 2
    flip = None if args.flip is None else args.flip == "on"
    report, curve = identify(rows, card, None if args.no_cache else args.cache, flip, args.margin)
    if args.det is not None:
        from tools.evaluate import write_det_png

        write_det_png(curve, args.det, f"{args.split.name}: {report['gallery_size']} enrolled, {card.id}")
        report["det_png"] = str(args.det)
    for problem in report["problems"]:
        print(f"skipped {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_identify(report)
    return 0


def print_identify(report: dict) -> None:
    print(f"gallery: {report['gallery_size']} people, {report['templates']} templates ({report['model']}); "
          f"{report['genuine_probes']} genuine and {report['stranger_probes']} stranger probes "
          f"({report['strangers_acquired']} with a usable face); "
          f"{len(report['problems'])} rows skipped, {report['quality_refused']} probes refused by the quality gate")
    expected = "" if report["expected_fpir"] is None else f", modelled FPIR {report['expected_fpir']:.1e}"
    print(f"threshold in force  {report['threshold']:.4f} ({report['threshold_source']}{expected})")
    print(f"per image           FPIR {_rate(report['fpir'])}  TPIR {_rate(report['tpir'])}  "
          f"misidentified {_rate(report['misidentification_rate'])}")
    for rate in REPORTED_RATES:
        predicted = report["predicted_threshold_at_fpir"][rate]
        print(f"at FPIR {rate:6}      TPIR {report['tpir_at_fpir'][rate]:.4f}, measured threshold "
              f"{report['threshold_at_fpir'][rate]:.4f}, model's {'-' if predicted is None else f'{predicted:.4f}'}")
    if "tracks" in report:
        t = report["tracks"]
        print(f"per track           FPIR {_rate(t['fpir'])} of {t['stranger_tracks']}  TPIR {_rate(t['tpir'])} of "
              f"{t['genuine_tracks']}  misidentified {_rate(t['misidentification_rate'])}  undecided {t['undecided']}")
    print("closest strangers (label noise shows here):")
    for near in report["closest_strangers"][:5]:
        print(f"  {near['distance']:.4f}  {near['probe']} -> {near['matched']}")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main_impostors(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="evaluate.py impostors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=IMPOSTOR_EXAMPLES)
    add_arguments(parser)
    parser.add_argument("--tail-fraction", type=float, default=open_set.DEFAULT_TAIL_FRACTION,
                        help="the closest share of impostor pairs fitted (default %(default)g)")
    args = parser.parse_args(argv)
    inputs = _inputs(args)
    if inputs is None:
        return 2
    rows, card = inputs
    source = f"tools/evaluate.py impostors {args.split.name}: enrol and genuine rows, door recognition defaults"
    try:
        report = impostors(rows, card, None if args.no_cache else args.cache, args.tail_fraction, source)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['photos']} photos, {report['impostor_pairs']} impostor pairs ({report['model']})")
    print("embedding:\n  impostor_tail:")
    for key, value in report["impostor_tail"].items():
        print(f"    {key}: {json.dumps(value)}")
    print("closest impostor pairs (look at them: label noise moves a tail):")
    for pair in report["closest_pairs"]:
        print(f"  {pair['distance']:.4f}  {pair['a']}  {pair['b']}")
    return 0


IDENTIFY_EXAMPLES = """examples:
  python tools/make_splits.py --out /tmp/facegate-splits
  python tools/evaluate.py identify /tmp/facegate-splits/openset_n1660_e3.tsv --root ../shared/data/sets/openset_dev
  python tools/evaluate.py identify split.tsv --root photos --json --det det.png
"""
IMPOSTOR_EXAMPLES = """examples:
  python tools/evaluate.py impostors /tmp/facegate-splits/openset_n1660_e3.tsv --root ../shared/data/sets/openset_dev
"""
