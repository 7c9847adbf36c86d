#!/usr/bin/env python3
"""Measure gallery search: single-probe latency, memory and approximate recall by gallery size.

Builds the gallery's own index (daemon.gallery.GalleryIndex) over synthetic
unit vectors of the embedding card's dimension, several templates per person,
and searches it one probe at a time the way the daemon does. Probes are
enrolled templates plus noise (a person seen again), so recall@1 of the
approximate index is measured where it matters: does it name the same person
as exact search?

The 1M size takes a while (minutes: mostly the HNSW build) and about 2 GiB of memory.

examples:
  python tools/bench_gallery.py
  python tools/bench_gallery.py --sizes 1k 10k 100k
  python tools/bench_gallery.py --sizes 100k --kinds flat --threads 1 2
  python tools/bench_gallery.py --card engines/models/dlib_resnet_v1.yaml --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.gallery import KINDS, GalleryIndex, Snapshot  # noqa: E402
from engines.model_card import find_card, load_card  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "engines" / "models"
PROBE_NOISE = 0.4  # distance of a probe from its template, about dlib's 0.6 threshold on unit-ish vectors


def size(text: str) -> int:
    """1000, 10k or 1M."""
    multiplier = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        value = int(text[:-1] if multiplier > 1 else text) * multiplier
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1000, 10k or 1M") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a gallery needs at least 2 templates")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=size, default=[1_000, 10_000, 100_000, 1_000_000],
                        help="template counts (default: 1k 10k 100k 1M)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="index kinds")
    parser.add_argument("--card", type=Path, help="embedding model card (default: the embedder in engines/models)")
    parser.add_argument("--per-person", type=int, default=3, help="templates per person (default 3)")
    parser.add_argument("--probes", type=int, default=300, help="single-probe searches per row (default 300)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1],
                        help="FAISS OpenMP threads for search; several values add rows (default 1)")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count(),
                        help="FAISS OpenMP threads while building (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return parser.parse_args(argv)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic(count: int, dim: int, per_person: int, probes: int, seed: int) -> tuple[Snapshot, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    person_ids = np.arange(count, dtype=np.int64) // per_person
    snapshot = Snapshot(generation=1, model_id="bench", template_ids=np.arange(1, count + 1, dtype=np.int64),
                        person_ids=person_ids, names={int(p): f"person {p}" for p in np.unique(person_ids)},
                        vectors=vectors)
    noise = rng.standard_normal((probes, dim), dtype=np.float32)
    noise *= PROBE_NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    return snapshot, vectors[rng.integers(count, size=probes)] + noise


def latencies_ms(index: GalleryIndex, probes: np.ndarray) -> list[float]:
    for probe in probes[:10]:  # warm caches and OpenMP's thread pool
        index.search(probe[None, :])
    timings = []
    for probe in probes:
        start = time.perf_counter()
        index.search(probe[None, :])
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def measure(card, count: int, kind: str, args: argparse.Namespace, snapshot: Snapshot, probes: np.ndarray,
            exact_people: list[int] | None) -> list[dict]:
    faiss.omp_set_num_threads(args.build_threads)
    before = rss_bytes()
    start = time.perf_counter()
    index = GalleryIndex.build(snapshot, card, kind)
    build_s = time.perf_counter() - start
    rss_delta = rss_bytes() - before
    with tempfile.TemporaryDirectory() as directory:
        index.save(Path(directory))
        index_bytes = sum(file.stat().st_size for file in Path(directory).glob("*.faiss"))
    people = [m.person_id for m in index.search(probes)]
    recall = None if exact_people is None else float(np.mean(np.array(people) == np.array(exact_people)))
    rows = []
    for threads in args.threads:
        faiss.omp_set_num_threads(threads)
        timings = latencies_ms(index, probes)
        rows.append({"templates": count, "kind": kind, "threads": threads, "build_s": round(build_s, 2),
                     "median_ms": statistics.median(timings),
                     "p90_ms": statistics.quantiles(timings, n=10)[-1],
                     "index_mib": index_bytes / 2**20, "rss_delta_mib": rss_delta / 2**20,
                     "recall_at_1": recall, "people": people})
    return rows


def print_row(row: dict) -> None:
    recall = "exact" if row["kind"] == "flat" else (
        "n/a" if row["recall_at_1"] is None else f"{row['recall_at_1']:.3f}")
    print(f"{row['templates']:>10,} {row['kind']:>5} {row['threads']:>7} {row['build_s']:>8.2f} "
          f"{row['median_ms']:>10.3f} {row['p90_ms']:>8.3f} {row['index_mib']:>10.1f} "
          f"{row['rss_delta_mib']:>10.1f} {recall:>9}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    card = load_card(args.card) if args.card else find_card(MODELS, "embedder")
    if max(args.sizes) >= 1_000_000:
        print("note: 1M templates takes several minutes (HNSW build) and about 2 GiB of memory",
              file=sys.stderr, flush=True)
    if not args.json:
        print(f"card {card.id}: {card.embedding_dim}-d {card.metric}; {args.per_person} templates per person; "
              f"{args.probes} single-probe searches; build threads {args.build_threads}; "
              f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"{'templates':>10} {'kind':>5} {'threads':>7} {'build s':>8} {'median ms':>10} {'p90 ms':>8} "
              f"{'index MiB':>10} {'RSS Δ MiB':>10} {'recall@1':>9}", flush=True)
    results = []
    for count in args.sizes:
        snapshot, probes = synthetic(count, card.embedding_dim, args.per_person, args.probes, args.seed)
        exact_people = None
        for kind in sorted(args.kinds, key=lambda k: k != "flat"):  # exact first: it is the recall reference
            rows = measure(card, count, kind, args, snapshot, probes, exact_people)
            exact_people = rows[0]["people"] if kind == "flat" else exact_people
            for row in rows:
                del row["people"]
                results.append(row)
                if not args.json:
                    print_row(row)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
