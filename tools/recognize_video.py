#!/usr/bin/env python3
"""Recognise one person through a video: enrol from a still, then follow them.

Enrols the largest face of one frame of the video, then detects, aligns and
embeds every face of the following frames and prints who matches, with the
distance, and a summary. By default it runs on the bundled demo clip and
enrols the lead hiker.

examples:
  python tools/recognize_video.py
  python tools/recognize_video.py clip.mp4 --enroll-frame 40 --name Alice --stride 1
  python tools/recognize_video.py --min-face 80 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.mtcnn import DetectorConfig  # noqa: E402
from engines.pipeline import FacePipeline  # noqa: E402

DEMO_CLIP = Path(__file__).resolve().parents[1] / "daemon" / "demo" / "video_02_hikers_walking_towards_camera.mp4"


def read_frames(path: Path, stride: int):
    """(index, seconds, RGB frame) for every stride-th frame."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if index % stride == 0:
                yield index, index / fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def enrol(pipeline: FacePipeline, video: Path, frame_index: int) -> np.ndarray:
    for index, _, rgb in read_frames(video, 1):
        if index == frame_index:
            faces = pipeline.process(rgb)
            if not faces:
                raise ValueError(f"frame {frame_index} of {video} shows no face to enrol")
            face, embedding = max(faces, key=lambda item: item[0].width)
            print(f"enrolled the largest face of frame {frame_index}: box {face.box.round().astype(int).tolist()}")
            return embedding
    raise ValueError(f"{video} has no frame {frame_index}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", nargs="?", type=Path, default=DEMO_CLIP, help="video file (default: the demo clip)")
    parser.add_argument("--enroll-frame", type=int, default=110, help="frame whose largest face is enrolled")
    parser.add_argument("--name", default="lead hiker", help="name printed for the enrolled person")
    parser.add_argument("--stride", type=int, default=3, help="process every N-th frame (default 3)")
    parser.add_argument("--min-face", type=int, default=40, help="smallest face to detect, pixels")
    parser.add_argument("--threshold", type=float, help="match threshold (default: the model card's)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    pipeline = FacePipeline.from_models(detector_config=DetectorConfig(min_face_size=args.min_face))
    threshold = args.threshold if args.threshold is not None else pipeline.embedder.card.threshold
    try:
        reference = enrol(pipeline, args.video, args.enroll_frame)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    frames = faces_seen = 0
    matched_times, latencies = [], []
    for index, seconds, rgb in read_frames(args.video, args.stride):
        start = time.perf_counter()
        results = pipeline.process(rgb)
        latencies.append((time.perf_counter() - start) * 1000)
        frames += 1
        faces_seen += len(results)
        labels = []
        for face, embedding in results:
            distance = pipeline.embedder.distance(reference, embedding)
            if distance < threshold:
                matched_times.append(seconds)
                labels.append(f"{args.name} {distance:.2f}")
            else:
                labels.append(f"unknown {distance:.2f}")
        if not args.json and labels:
            print(f"{seconds:6.2f}s frame {index:4d}  {len(results)} face(s): {' | '.join(labels)}")

    summary = {
        "video": str(args.video), "frames": frames, "faces_per_frame": round(faces_seen / max(frames, 1), 2),
        "frames_matching": len(matched_times), "threshold": threshold,
        "first_match_s": min(matched_times, default=None), "last_match_s": max(matched_times, default=None),
        "median_ms_per_frame": round(statistics.median(latencies), 1) if latencies else None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\nsummary: " + ", ".join(f"{key} {value}" for key, value in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
