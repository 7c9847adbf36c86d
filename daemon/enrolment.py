"""Enrolment: photos and camera frames through the quality gate into gallery templates.

Also the duplicate guard and folder batches; portable gallery bundles (export,
import, signed sync) are daemon/bundles.py, which builds on this module.
tools/enroll_local.py is a thin shell over both; a web UI would call the same
functions.

Nothing is written before everything has been examined: photos go through the
quality gate and the guards first, and each person is then written in one
gallery transaction, so a refusal or a crash leaves each person fully enrolled
or absent. A folder batch is one transaction for everyone in it: a refused photo
leaves the gallery as it was.

Templates per model: an Enroller holds one embedder per embedder card installed
(every card of role embedder in the models folder), the configured one first. Each
accepted face is aligned with every card's own template and embedded by every
card, so a person gets one template per model and switching the daemon's
embedder.card needs no re-enrolment. The quality gate runs once, on the
configured card's chip; the kept photo goes with the configured card's template
only (one copy per shot); the duplicate and same-person guards compare the
configured card's templates. People enrolled before a card was installed lack
its templates: reembed_person embeds their kept photos again.

Presentation attacks: a face captured from a camera (capture) must also be judged live
by the liveness nets of the models folder (engines/liveness.py, the cards' threshold,
the same LivenessChecker the door uses): someone holding up a printed photo or a phone
could otherwise enrol a face that is not theirs in front of them. A frame judged an
attack is refused with guidance and not kept. Photo files skip the check: an ID photo
is a photo, and the operator who enrols from files vouches for them.

    with Enroller.from_models(models_dir) as enroller:
        shots, refusals = judge_files(enroller, photos)
        person_id = enrol(gallery, enroller.card, "Alice", shots)
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from daemon.events import face_jpeg
from daemon.gallery import (AmbiguousName, Gallery, NewPerson, Person, PersonNotFound, StoredTemplate, Template,
                            checked_name)
from daemon.sources import Frame, FrameSource
from engines.align import align
from engines.embedder import Embedder, distance
from engines.errors import ImageError
from engines.face import Face
from engines.images import load_image
from engines.liveness import LivenessChecker
from engines.manifest import MODELS_DIR
from engines.model_card import ModelCard, cards_of, find_card
from engines.pipeline import FacePipeline
from engines.quality import Quality, QualityLimits, measure, problems


class EnrolmentError(Exception):
    """An enrolment refused or failed; the message says why and what to do. Nothing was written."""


class PhotosRefused(EnrolmentError):
    def __init__(self, refusals: Sequence[Refusal]) -> None:
        self.refusals = list(refusals)
        lines = [f"  {refusal.label}: {'; '.join(refusal.reasons)}" for refusal in self.refusals]
        super().__init__(f"{len(lines)} photo(s) refused; nothing was changed:\n" + "\n".join(lines))


class DuplicateFace(EnrolmentError):
    """The new face matches someone already enrolled."""


class NameTaken(EnrolmentError):
    """Someone of that name is already enrolled."""


class NotTheSamePerson(EnrolmentError):
    """A photo added to a person does not look like them."""


class CameraError(EnrolmentError):
    """The camera gave no picture, or too few good shots."""


# --- examining one face --------------------------------------------------------------------------

NO_FACE = "no face found: use a photo in which the face is clearly visible, frontal and well lit"
ATTACK_HINT = "a photo or a screen is not enrolled: the person themselves in front of the camera, please"
PHOTO_CONTEXT = 2.0  # kept photo: the face box widened to twice its size, enough to find the face again
PHOTO_MAX_SIDE = 640
PHOTO_JPEG_QUALITY = 90


@dataclass(frozen=True, eq=False)
class Shot:
    """An accepted face: its templates to store, and its rank among other shots (higher is better).

    template is the configured model's (its chip was judged, the kept photo goes with it);
    others hold the same face embedded by each other installed embedder card.
    """

    label: str
    template: Template
    rank: float
    others: tuple[Template, ...] = ()

    @property
    def templates(self) -> list[Template]:
        """One template per installed model, the configured one first."""
        return [self.template, *self.others]


@dataclass(frozen=True)
class Refusal:
    """A photo or frame that failed the gate: each reason says what to do; hint is the short camera form."""

    label: str
    reasons: list[str]
    hint: str


def embedder_cards(models_dir: str | Path | None = None, card: ModelCard | None = None) -> list[ModelCard]:
    """Every embedder card installed in models_dir, the configured one first.

    card is the configured one (the daemon's embedder.card; it may live outside the folder);
    None takes the folder's default (find_card: its DEFAULTS file where it holds several).
    Templates are told apart by card id alone, so two cards of one id are refused.
    """
    models_dir = Path(models_dir or MODELS_DIR)
    installed = cards_of(models_dir, "embedder")
    twice = sorted(model for model, count in Counter(c.id for c in installed).items() if count > 1)
    if twice:
        raise EnrolmentError(f"{models_dir}: several embedder cards have the id {twice[0]!r}; templates are stored "
                             "by card id, so each embedder card needs its own id")
    configured = card or find_card(models_dir, "embedder")
    return [configured] + [c for c in installed if c.id != configured.id]


class Enroller:
    """The quality gate and the embedders: judges one image at a time. Owns its pipeline and embedders.

    pipeline.embedder is the configured model's (quality is judged on its chip, the guards
    use its templates); others embed the same face with every other installed model.
    liveness judges camera frames (source "camera"); without it camera frames are refused.
    """

    def __init__(self, pipeline: FacePipeline, limits: QualityLimits = QualityLimits(),
                 others: Sequence[Embedder] = (), liveness: LivenessChecker | None = None) -> None:
        ids = [pipeline.embedder.card.id] + [embedder.card.id for embedder in others]
        if len(set(ids)) != len(ids):
            raise ValueError(f"one embedder per model card id, got {ids}")
        self.pipeline = pipeline
        self.limits = limits
        self.others = list(others)
        self.liveness = liveness

    @classmethod
    def from_models(cls, models_dir: str | Path | None = None, limits: QualityLimits = QualityLimits(),
                    threads: int = 1, card: ModelCard | None = None) -> Enroller:
        """MTCNN and an embedder for every embedder card in models_dir; card (default: the folder's
        default card) is the configured one. The liveness nets are those of models_dir's liveness
        cards, else the shipped ones (engines/models), as the door finds them (daemon/config.py)."""
        from engines.mtcnn import DetectorConfig, MtcnnDetector

        models_dir = Path(models_dir or MODELS_DIR)
        cards = embedder_cards(models_dir, card)
        embedders: list[Embedder] = []
        liveness = None
        detector = MtcnnDetector(models_dir, DetectorConfig(), threads=threads)
        try:
            for each in cards:
                embedders.append(Embedder(each, threads=threads))
            live_dir = models_dir if cards_of(models_dir, "liveness") else MODELS_DIR
            if cards_of(live_dir, "liveness"):
                liveness = LivenessChecker.from_models(live_dir, threads=threads)
        except BaseException:
            detector.close()
            for embedder in embedders:
                embedder.close()
            raise
        return cls(FacePipeline(detector, embedders[0]), limits, embedders[1:], liveness)

    @property
    def card(self) -> ModelCard:
        """The configured model's card."""
        return self.pipeline.embedder.card

    @property
    def cards(self) -> list[ModelCard]:
        """The card of every model this enroller embeds with, the configured one first."""
        return [self.card] + [embedder.card for embedder in self.others]

    def judge(self, rgb: np.ndarray, label: str, *, source: str = "photo", largest: bool = False,
              keep_photo: bool = False) -> Shot | Refusal:
        """One image: exactly one face (or the largest, when asked) that passes the gate, embedded.

        A camera frame (source "camera") must also be judged live; a photo file is not checked.
        """
        if source == "camera" and self.liveness is None:
            raise EnrolmentError("camera enrolment needs the liveness models (model cards of role 'liveness', "
                                 f"shipped in {MODELS_DIR}) to refuse photos and screens held up to the camera; "
                                 "none were found: reinstall them, or enrol from photo files")
        faces = self.pipeline.detector.detect(rgb)
        if not faces:
            return Refusal(label, [NO_FACE], "step in front of the camera")
        if len(faces) > 1 and not largest:
            return Refusal(label, [f"{len(faces)} faces found: use a photo of this person alone, or enrol "
                                   "the largest face (--largest)"], "only the person enrolling in view, please")
        face = max(faces, key=lambda f: f.width * f.height)
        chip, _ = align(rgb, face.landmarks, self.card.alignment)
        quality = measure(face, chip, rgb.shape, self.limits.edge_margin)
        reasons = problems(quality, self.limits)
        if reasons:
            return Refusal(label, reasons, camera_hint(quality, self.limits))
        if source == "camera":
            live = float(self.liveness.score(rgb, [face])[0])
            if live < self.liveness.threshold:  # judged an attack: refused, and nothing of the frame is kept
                return Refusal(label, [f"judged a presentation attack (live score {live:.2f}, below the liveness "
                                       f"threshold {self.liveness.threshold:.2f}): a printed photo or a screen "
                                       "is not enrolled from a camera; the person must stand in front of it "
                                       "themselves"], ATTACK_HINT)
        rank = quality_rank(quality, self.limits)
        figures = {**quality.as_dict(), "rank": round(rank, 4), "faces": len(faces), "label": label}
        photo = face_photo(rgb, face) if keep_photo else None
        embedding = self.pipeline.embedder.embed([chip])[0]
        others = tuple(Template(embedder.embed([align(rgb, face.landmarks, embedder.card.alignment)[0]])[0],
                                embedder.card.id, figures, source) for embedder in self.others)
        return Shot(label, Template(embedding, self.card.id, figures, source, photo), rank, others)

    def judge_file(self, path: Path, *, largest: bool = False, keep_photo: bool = False) -> Shot | Refusal:
        try:
            rgb = load_image(path)
        except ImageError as error:
            return Refusal(str(path), [str(error).removeprefix(f"{path}: ")], "")
        return self.judge(rgb, str(path), largest=largest, keep_photo=keep_photo)

    def close(self) -> None:
        self.pipeline.close()
        for embedder in self.others:
            embedder.close()
        if self.liveness is not None:
            self.liveness.close()

    def __enter__(self) -> Enroller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def judge_files(enroller: Enroller, paths: Iterable[Path], *, largest: bool = False, keep_photo: bool = False,
                on_judged: Callable[[int], None] = lambda count: None) -> tuple[list[Shot], list[Refusal]]:
    """The accepted and the refused photos; on_judged(photos judged so far) runs after each."""
    shots: list[Shot] = []
    refusals: list[Refusal] = []
    for count, path in enumerate(paths, 1):
        verdict = enroller.judge_file(Path(path), largest=largest, keep_photo=keep_photo)
        (shots if isinstance(verdict, Shot) else refusals).append(verdict)
        on_judged(count)
    return shots, refusals


def quality_rank(quality: Quality, limits: QualityLimits) -> float:
    """0..1, higher is better: how frontal, sharp and large the face is, each relative to its limit."""
    frontal = 1 - max(abs(quality.yaw) / limits.max_yaw, abs(quality.pitch) / limits.max_pitch,
                      abs(quality.roll_degrees) / limits.max_roll_degrees)
    # Beyond a few times the minimum, more sharpness or size no longer helps the embedder.
    sharp = min(quality.sharpness / (4 * limits.min_sharpness), 1.0)
    large = min(quality.eye_distance / (2 * limits.min_eye_distance), 1.0)
    return float(quality.score * (max(frontal, 0.0) + sharp + large) / 3)


def camera_hint(quality: Quality, limits: QualityLimits) -> str:
    """What the person in front of the camera should do first; the checks follow engines.quality.problems."""
    if quality.eye_distance < limits.min_eye_distance:
        return "move closer"
    if not quality.inside_frame:
        return "move to the middle of the picture"
    if abs(quality.yaw) > limits.max_yaw or abs(quality.pitch) > limits.max_pitch:
        return "look straight at the camera"
    if abs(quality.roll_degrees) > limits.max_roll_degrees:
        return "hold your head upright"
    if quality.sharpness < limits.min_sharpness:
        return "hold still"
    return "face the light"  # only the detector score is left: a dim or unclear face


def face_photo(rgb: np.ndarray, face: Face) -> bytes:
    """The face with its surroundings as JPEG: enough to re-embed it later, without the rest of the picture."""
    data = face_jpeg(rgb, face.box, PHOTO_CONTEXT, PHOTO_MAX_SIDE, PHOTO_JPEG_QUALITY)
    if data is None:
        raise EnrolmentError("cannot encode the face photo as JPEG")
    return data


def decode_photo(jpeg: bytes, label: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise EnrolmentError(f"{label}: the kept photo does not decode as JPEG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --- finding people and the guards --------------------------------------------------------------------


@dataclass(frozen=True)
class Resemblance:
    person_id: int
    name: str
    distance: float


def find_person(gallery: Gallery, text: str) -> Person:
    """A person by id, external id or exact name; '#12' asks by id only."""
    people = gallery.list_people()
    if text.startswith("#") and text[1:].isdigit():
        found = [p for p in people if p.id == int(text[1:])]
    else:
        found = [p for p in people if p.name == text or p.external_id == text
                 or (text.isdigit() and p.id == int(text))]
    if not found:
        raise PersonNotFound(f"no person with the id, external id or name {text!r} (see the list command)")
    if len(found) > 1:
        listed = "; ".join(f"#{p.id} {p.name!r}" + (f" (external id {p.external_id})" if p.external_id else "")
                           for p in found)
        raise AmbiguousName(f"{text!r} fits {len(found)} people: {listed}; ask by id, e.g. #{found[0].id}")
    return found[0]


def nearest_person(gallery: Gallery, card: ModelCard, embeddings: Sequence[np.ndarray],
                   exclude: Iterable[int] = ()) -> Resemblance | None:
    """The enrolled person closest to any of the embeddings (exact search), leaving out exclude."""
    snapshot = gallery.snapshot(card.id)
    keep = ~np.isin(snapshot.person_ids, list(exclude))
    if not keep.any() or not len(embeddings):
        return None
    distances = np.atleast_2d(distance(np.asarray(embeddings)[:, None, :], snapshot.vectors[keep][None], card.metric))
    probe, column = np.unravel_index(np.argmin(distances), distances.shape)
    person_id = int(snapshot.person_ids[keep][column])
    return Resemblance(person_id, snapshot.names[person_id], float(distances[probe, column]))


def refuse_taken_name(gallery: Gallery, name: str) -> None:
    taken = [p for p in gallery.list_people() if p.name == name.strip()]
    if taken:
        raise NameTaken(f"{name!r} is already enrolled (id {taken[0].id}): add photos to them with add-template, "
                        "or enrol another person of the same name with --force")


def refuse_duplicate(gallery: Gallery, card: ModelCard, name: str, embeddings: Sequence[np.ndarray],
                     exclude: Iterable[int] = ()) -> None:
    near = nearest_person(gallery, card, embeddings, exclude)
    if near is not None and near.distance < card.threshold:
        raise DuplicateFace(
            f"{name!r} looks like {near.name!r} (id {near.person_id}), who is already enrolled: distance "
            f"{near.distance:.3f} is below the match threshold {card.threshold:.3f}. If this is a different "
            f"person, enrol with --force; to add photos to {near.name!r}, use add-template")


def refuse_strangers(gallery: Gallery, card: ModelCard, person: Person, shots: Sequence[Shot]) -> None:
    """Refuse photos that look like nobody in the person's own templates: a wrong photo would let its face in."""
    own = np.array([t.embedding for t in gallery.templates(person.id) if t.model_id == card.id])
    if not len(own):
        return
    gaps = [(shot.label, float(np.min(distance(embedding, own, card.metric))))
            for shot in shots for embedding in _embeddings_of(card, [shot])]
    unlike = [f"{label} (distance {gap:.3f})" for label, gap in gaps if gap >= card.threshold]
    if unlike:
        raise NotTheSamePerson(f"these photos do not look like {person.name!r} (match threshold "
                               f"{card.threshold:.3f}): {'; '.join(unlike)}. Check they show the right person, "
                               "or add them with --force")


# --- enrolling ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonDetails:
    external_id: str | None = None
    note: str | None = None
    valid_from: str | None = None
    valid_until: str | None = None


def enrol(gallery: Gallery, card: ModelCard, name: str, shots: Sequence[Shot],
          details: PersonDetails = PersonDetails(), *, force: bool = False) -> int:
    """A new person from accepted shots, in one transaction; a taken name or a known face is refused unless force."""
    if not shots:
        raise EnrolmentError(f"no accepted photo of {name!r}: nothing to enrol")
    if not force:
        refuse_taken_name(gallery, name)
        refuse_duplicate(gallery, card, name, _embeddings_of(card, shots))
    return gallery.add_person(name, [t for shot in shots for t in shot.templates], **asdict(details))


def add_shots(gallery: Gallery, card: ModelCard, person: Person, shots: Sequence[Shot], *,
              force: bool = False) -> list[int]:
    """More templates for an enrolled person, in one transaction; faces unlike theirs are refused unless force."""
    if not force:
        refuse_strangers(gallery, card, person, shots)
    return gallery.add_templates(person.id, [t for shot in shots for t in shot.templates])


def _embeddings_of(card: ModelCard, shots: Sequence[Shot]) -> list[np.ndarray]:
    """The shots' embeddings by one model: the guards compare like with like."""
    return [t.embedding for shot in shots for t in shot.templates if t.model_id == card.id]


def embed_again(enroller: Enroller, name: str, templates: Sequence[Template | StoredTemplate],
                models: Iterable[str]) -> tuple[list[Template], list[Refusal]]:
    """Templates of the given models (card ids of enroller's) from the kept photos among templates.

    Each photo is judged as at enrolment (the largest face) and embedded once; the new templates
    keep the source and label of the template holding the photo, and no copy of the photo.
    """
    models = set(models)
    added: list[Template] = []
    refusals: list[Refusal] = []
    seen: set[bytes] = set()
    for number, template in enumerate(templates):
        if not models or template.photo_jpeg is None or template.photo_jpeg in seen:
            continue
        seen.add(template.photo_jpeg)
        label = f"{name!r} template {getattr(template, 'id', number)}"
        verdict = enroller.judge(decode_photo(template.photo_jpeg, label), label, largest=True)
        if isinstance(verdict, Refusal):
            refusals.append(verdict)
            continue
        figures = {**verdict.template.quality, "label": template.quality.get("label", label)}
        added += [replace(t, quality=figures, source=template.source) for t in verdict.templates
                  if t.model_id in models]
    return added, refusals


@dataclass(frozen=True)
class Reembedded:
    """What reembed_person did for one person."""

    person: Person
    added: int  # templates written
    missing: list[str]  # models the person still has no template of
    refused: list[Refusal]  # kept photos that failed the gate
    photos: int  # kept photos the person has


def reembed_person(gallery: Gallery, enroller: Enroller, person: Person) -> Reembedded:
    """Give an enrolled person the templates they lack of each of enroller's models, embedded from their
    kept photos (--keep-photo), in one transaction; a person without a kept photo gets none."""
    stored = gallery.templates(person.id)
    held = {t.model_id for t in stored}
    missing = [card.id for card in enroller.cards if card.id not in held]
    added, refused = embed_again(enroller, person.name, stored, missing)
    if added:
        gallery.add_templates(person.id, added)
    made = {t.model_id for t in added}
    return Reembedded(person, len(added), [model for model in missing if model not in made], refused,
                      len({t.photo_jpeg for t in stored if t.photo_jpeg}))


# --- live capture -------------------------------------------------------------------------------------

CANDIDATES_PER_SHOT = 4  # stop collecting once there are this many good frames per shot to choose from


def capture(source: FrameSource, enroller: Enroller, shots: int, *, duration_s: float = 20.0,
            first_frame_s: float = 10.0, largest: bool = False, keep_photo: bool = False,
            on_frame: Callable[[Shot | Refusal, int], None] = lambda verdict, good: None) -> list[Shot]:
    """The best `shots` frames of a started source, judged for at most duration_s after its first frame.

    Each frame is judged as a camera frame: a face the liveness nets judge a presentation
    attack is refused (ATTACK_HINT) like a face that fails the quality gate.
    on_frame(verdict, good frames so far) runs for every frame judged, for live guidance.
    """
    frame = source.read(first_frame_s)
    if frame is None:
        raise CameraError(f"{source.describe()}: no picture within {first_frame_s:.0f} s: check that the camera is "
                          "connected, that no other program (the facegate service?) is using it, and that this "
                          "user may read it (group video)")
    deadline = time.monotonic() + duration_s
    candidates: list[Shot] = []
    hints: Counter[str] = Counter()
    while frame is not None and len(candidates) < shots * CANDIDATES_PER_SHOT:
        verdict = enroller.judge(frame.rgb, f"frame {frame.index}", source="camera", largest=largest,
                                 keep_photo=keep_photo)
        if isinstance(verdict, Shot):
            candidates.append(verdict)
        else:
            hints[verdict.hint] += 1
        on_frame(verdict, len(candidates))
        frame = _next_frame(source, deadline)
    if len(candidates) < shots:
        advice = f"; most frames: {hints.most_common(1)[0][0]}" if hints else ""
        raise CameraError(f"only {len(candidates)} good frame(s) of the {shots} needed{advice}. Try again with "
                          "better light, the face filling more of the picture, or a longer --duration")
    return sorted(candidates, key=lambda shot: shot.rank, reverse=True)[:shots]


def _next_frame(source: FrameSource, deadline: float) -> Frame | None:
    """The next frame before the deadline, or None at the deadline or the end of a file."""
    while (left := deadline - time.monotonic()) > 0:
        frame = source.read(min(left, 1.0))
        if frame is not None or source.exhausted:
            return frame
    return None


# --- folder batches -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    person: str
    people_done: int
    people: int
    photos_done: int
    photos: int


@dataclass
class PersonOutcome:
    name: str
    photos: int
    person_id: int | None = None  # None: not enrolled
    enrolled: int = 0  # accepted photos written (each as a template of every installed model)
    refused: list[Refusal] = field(default_factory=list)
    problem: str | None = None  # why the person cannot be enrolled
    already: bool = False  # someone of this name was enrolled before: left alone
    shots: list[Shot] = field(default_factory=list, repr=False)  # accepted, to be written with everyone else's

    @property
    def failed(self) -> bool:
        """A refused photo or a problem: the batch is not written."""
        return bool(self.refused or self.problem)


class FolderRefused(EnrolmentError):
    """A photo or a person of a folder batch was refused, so nobody of it was enrolled."""


def person_folders(root: Path) -> dict[str, list[Path]]:
    """Person name -> photo files, one sub-folder per person; hidden files and folders are left out."""
    if not root.is_dir():
        raise EnrolmentError(f"{root}: not a folder; expected one sub-folder of photos per person")
    return {folder.name.strip(): sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
            for folder in sorted(root.iterdir()) if folder.is_dir() and not folder.name.startswith(".")}


def judge_folder(gallery: Gallery | None, enroller: Enroller, folders: dict[str, list[Path]], *,
                 largest: bool = False, keep_photo: bool = False, force: bool = False,
                 progress: Callable[[Progress], None] = lambda progress: None) -> list[PersonOutcome]:
    """Every person's photos judged and their faces checked against the gallery (None: there is none
    yet) and against each other (unless force); nothing is written: enrol_judged writes them all.

    People already enrolled under the folder's name are left alone (already), so running a
    batch again after it was written changes nothing.
    """
    enrolled = {p.name for p in gallery.list_people()} if gallery is not None else set()
    total = sum(len(photos) for photos in folders.values())
    done = 0
    outcomes: list[PersonOutcome] = []
    for number, (name, photos) in enumerate(folders.items()):
        def report(judged: int) -> None:
            progress(Progress(name, number, len(folders), done + judged, total))

        report(0)
        outcome = PersonOutcome(name, len(photos))
        outcomes.append(outcome)
        done += len(photos)
        try:
            outcome.name = checked_name(name)
        except ValueError as error:
            outcome.problem = f"the folder's name is not a person's name: {error}"
            continue
        if outcome.name in enrolled:
            outcome.already = True
            continue
        outcome.shots, outcome.refused = judge_files(enroller, photos, largest=largest, keep_photo=keep_photo,
                                                     on_judged=report)
        if not outcome.shots:
            outcome.problem = "no photo passed the quality gate" if photos else "the folder holds no photos"
        elif not force:
            outcome.problem = _resemblance(gallery, enroller.card, outcome, outcomes[:-1])
    progress(Progress("", len(folders), len(folders), done, total))
    return outcomes


def _resemblance(gallery: Gallery | None, card: ModelCard, outcome: PersonOutcome,
                 earlier: Sequence[PersonOutcome]) -> str | None:
    """Why outcome's faces may not be enrolled as a new person: they look like someone enrolled, or like
    another person of the batch; None when they look like nobody."""
    embeddings = _embeddings_of(card, outcome.shots)
    if gallery is not None:
        try:
            refuse_duplicate(gallery, card, outcome.name, embeddings)
        except DuplicateFace as error:
            return str(error)
    for other in earlier:
        if other.shots:
            gap = float(np.min(distance(np.asarray(embeddings)[:, None, :],
                                        np.asarray(_embeddings_of(card, other.shots))[None], card.metric)))
            if gap < card.threshold:
                return (f"{outcome.name!r} looks like {other.name!r} of this folder: distance {gap:.3f} is below "
                        f"the match threshold {card.threshold:.3f}. If they are different people, enrol with "
                        "--force; if not, put the photos in one folder")
    return None


def enrol_judged(gallery: Gallery, outcomes: Sequence[PersonOutcome]) -> list[PersonOutcome]:
    """Write everyone judge_folder accepted in one gallery transaction: all of them, or (FolderRefused,
    when any photo or person was refused) nobody. Returns the outcomes of the people enrolled."""
    failed = [outcome for outcome in outcomes if outcome.failed]
    if failed:
        photos = sum(len(outcome.refused) for outcome in failed)
        raise FolderRefused(f"nobody was enrolled: {photos} photo(s) refused, {len(failed)} people with a problem")
    todo = [outcome for outcome in outcomes if outcome.shots and not outcome.already]
    ids = gallery.add_people([NewPerson(outcome.name, None, None, True, None, None,
                                        [t for shot in outcome.shots for t in shot.templates]) for outcome in todo])
    for outcome, person_id in zip(todo, ids):
        outcome.person_id, outcome.enrolled = person_id, len(outcome.shots)
    return todo
