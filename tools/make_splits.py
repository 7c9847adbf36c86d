"""Open-set identification splits for `tools/evaluate.py identify`, made from the development data.

Reads ../shared/data/sets/openset_dev (CelebA identities with 30 aligned photos each and
UTKFace face crops, each taken for a different person; its MANIFEST.tsv suggests the roles)
and writes one split TSV per gallery size and number of enrolment photos per person:

    openset_n<people>_e<photos>.tsv   columns path, identity, role, track

- enrolled CelebA people (160): their first 1 or 3 photos by path are `enrol` rows (a front desk
  takes three shots); their other photos are `genuine` probes, whatever the number enrolled, so
  the 1- and 3-photo splits probe the same images;
- UTKFace `gallery_distractor` crops pad the gallery (enrolled, never probed, one photo each):
  the first D by path for a gallery of 160 + D people;
- `stranger` probes: the 40 held-out CelebA people (1,200 photos), never enrolled; with --utk-strangers
  also the UTKFace stranger crops. Those are left out by default: UTKFace photographs one person (toddlers
  above all) several times in a session under several names, and at 1,500 enrolled such "strangers"
  matched their enrolled sibling photos at distances 0.05-0.12, 6% of them under the door's threshold:
  label noise, not false matches, and enough of it to decide a 1e-3 threshold.
- label noise: UTKFace holds one photo under several names (re-encoded, re-cropped), and such a "stranger"
  matches its enrolled copy at distance 0.004-0.02 (seen in evaluate.py identify's closest strangers), which
  alone decides a 1e-2 threshold. A UTKFace crop whose 256-bit difference hash lies within NEAR_COPY_BITS of
  an earlier one's (by path) is left out; the copies found lay 3-13 bits apart, unrelated faces about 128.
- CelebA probes come in tracks of five photos of one person (a walk-up seen in five frames; five
  photos of one person differ more than five frames of a walk-up, so a track is a harder case).

and openset_impostor_fit.tsv: every photo of the enrolled CelebA people, the data `evaluate.py impostors`
fits the embedder card's impostor tail on. No stranger is in it, so identify's figures on the strangers
check the fit's predicted thresholds on faces it never saw.

The photos stay where they are: a split names paths relative to the openset_dev folder (pass it
as --root to evaluate.py) and is written outside the repository (--out): development photos never
enter it. The exception: UTKFace crops end at the face's edges, so the front desk's gate refuses them
("face cut off by the image edge") and so does the door's; each is copied once into OUT/utkface_padded/
on a mid-grey canvas twice its size (PNG, lossless), and the splits name those copies by absolute path.

examples:
  python tools/make_splits.py --out /tmp/facegate-splits
  python tools/make_splits.py --data ../shared/data --out /tmp/splits --sizes 160 400 1660
  python tools/evaluate.py identify /tmp/facegate-splits/openset_n1660_e3.tsv \\
      --root ../shared/data/sets/openset_dev --json
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
OPENSET = Path("sets") / "openset_dev"
TRACK_LENGTH = 5
DEFAULT_SIZES = (160, 400, 1000, 1500)
ENROL_PHOTOS = (1, 3)


class SplitError(Exception):
    """The data is missing or not as expected; the message says what."""


def read_manifest(folder: Path) -> list[dict[str, str]]:
    manifest = folder / "MANIFEST.tsv"
    try:
        with manifest.open(newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError as error:
        raise SplitError(f"cannot read {manifest}: {error.strerror}") from None
    if not rows or not {"path", "identity", "notes"} <= set(rows[0]):
        raise SplitError(f"{manifest}: expected a TSV with columns path, identity and notes")
    return rows


def suggested_role(row: dict[str, str]) -> str:
    return row["notes"].split(";", 1)[0].removeprefix("suggested_role=").strip()


NEAR_COPY_BITS = 40


def difference_hash(path: Path) -> np.ndarray:
    """256 bits: whether each pixel of a 17x16 grey thumbnail is brighter than its left neighbour."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L").resize((17, 16)), np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def near_copies(paths: list[str], folder: Path) -> set[str]:
    """The photos within NEAR_COPY_BITS of an earlier one of the list."""
    hashes = np.stack([difference_hash(folder / path) for path in paths]).astype(np.uint8)
    bits = hashes.astype(np.int32) @ (1 - hashes.T) + (1 - hashes.astype(np.int32)) @ hashes.T  # Hamming
    return {paths[j] for j in range(len(paths)) if np.any(bits[j, :j] <= NEAR_COPY_BITS)}


def openset_splits(rows: list[dict[str, str]], sizes: tuple[int, ...], folder: Path, utk_strangers: bool = False,
                   photos: tuple[int, ...] = ENROL_PHOTOS) -> dict[str, list[tuple[str, str, str, str]]]:
    """Split name -> rows (path, identity, role, track) for every gallery size and enrolment count."""
    crops = sorted(row["path"] for row in rows if row["path"].startswith("images/utkface/"))
    copies = near_copies(crops, folder) if crops else set()
    by_role: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if row["path"] not in copies:
            by_role[suggested_role(row)].append(row)
    people: dict[str, list[str]] = defaultdict(list)  # enrolled CelebA person -> all their photos
    for row in by_role["gallery"] + by_role["probe_genuine"]:
        people[row["identity"]].append(row["path"])
    enrolled_photos = {identity: sorted(paths) for identity, paths in people.items()}
    # The manifest's own enrolment photos (the first three by path) decide which photos are probes.
    gallery_paths = {row["path"] for row in by_role["gallery"]}
    distractors = sorted(row["path"] for row in by_role["gallery_distractor"])
    strangers = sorted((row["path"], row["identity"]) for row in by_role["stranger"]
                       if utk_strangers or not row["path"].startswith("images/utkface/"))
    if not enrolled_photos or not strangers:
        raise SplitError("the manifest suggests no gallery or no stranger rows")
    probes = [row for row in _tracked(
        [(path, identity) for identity, paths in sorted(enrolled_photos.items())
         for path in paths if path not in gallery_paths], "genuine")]
    probes += _tracked(strangers, "stranger")
    splits = {}
    for size in sizes:
        padding = size - len(enrolled_photos)
        if not 0 <= padding <= len(distractors):
            raise SplitError(f"gallery size {size}: expected {len(enrolled_photos)} to "
                             f"{len(enrolled_photos) + len(distractors)} people (the enrolled CelebA people plus "
                             "up to every UTKFace distractor)")
        for count in photos:
            enrol = [(path, identity, "enrol", "") for identity, paths in sorted(enrolled_photos.items())
                     for path in [p for p in paths if p in gallery_paths][:count]]
            enrol += [(path, _distractor_identity(path), "enrol", "") for path in distractors[:padding]]
            splits[f"openset_n{size}_e{count}"] = enrol + probes
    splits["openset_impostor_fit"] = [(path, identity, "genuine", "") for identity, paths in sorted(enrolled_photos.items())
                                      for path in paths]
    return splits


PAD_GREY = 128


def pad_crops(rows: list[tuple[str, str, str, str]], data: Path, out: Path) -> list[tuple[str, str, str, str]]:
    """The rows with every UTKFace crop replaced by its padded copy in out/utkface_padded (made once)."""
    folder = out / "utkface_padded"
    folder.mkdir(parents=True, exist_ok=True)
    padded = []
    for path, identity, role, track in rows:
        if path.startswith("images/utkface/"):
            target = folder / (Path(path).parent.name + ".png")
            if not target.exists():
                with Image.open(data / path) as crop:
                    crop = crop.convert("RGB")
                    canvas = Image.new("RGB", (crop.width * 2, crop.height * 2), (PAD_GREY,) * 3)
                    canvas.paste(crop, (crop.width // 2, crop.height // 2))
                    canvas.save(target)
            path = str(target)
        padded.append((path, identity, role, track))
    return padded


def _distractor_identity(path: str) -> str:
    return "utkface:" + Path(path).parent.name


def _tracked(items: list[tuple[str, str]], role: str) -> list[tuple[str, str, str, str]]:
    """Probe rows; a person with several photos gets tracks of TRACK_LENGTH consecutive ones (a remainder
    shorter than that goes untracked), a person with one photo none."""
    by_person: dict[str, list[str]] = defaultdict(list)
    for path, identity in items:
        by_person[identity].append(path)
    rows = []
    for identity, paths in by_person.items():
        whole = len(paths) - len(paths) % TRACK_LENGTH if len(paths) > 1 else 0
        for i, path in enumerate(paths):
            track = f"{identity}#{i // TRACK_LENGTH}" if i < whole else ""
            rows.append((path, identity, role, track))
    return rows


def write_split(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "identity", "role", "track"])
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the splits to (outside the repository)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help=f"gallery sizes in people (default {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--utk-strangers", action="store_true",
                        help="also probe with the UTKFace stranger crops (label noise: read their false matches by eye)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out == REPO or REPO in out.parents:
        print(f"error: --out {args.out} is inside the repository; development photos and their lists stay out of it",
              file=sys.stderr)
        return 2
    try:
        splits = openset_splits(read_manifest(args.data / OPENSET), tuple(args.sizes), args.data / OPENSET,
                                args.utk_strangers)
    except SplitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        rows = pad_crops(rows, args.data / OPENSET, out)
        write_split(out / f"{name}.tsv", rows)
        roles = defaultdict(int)
        for row in rows:
            roles[row[2]] += 1
        print(f"{out / name}.tsv: {roles['enrol']} enrol, {roles['genuine']} genuine, {roles['stranger']} stranger rows")
    print(f"evaluate with: python tools/evaluate.py identify SPLIT.tsv --root {args.data / OPENSET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
