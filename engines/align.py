"""Face alignment: a similarity transform from 5 landmarks onto the card's chip template."""
from __future__ import annotations

import cv2
import numpy as np

from engines.model_card import Alignment


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the least-squares similarity mapping src points onto dst (Umeyama 1991).

    Rotation, uniform scale and translation only: a reflection is never produced,
    because a mirrored face is a different face to the embedder.
    """
    src = _points(src, "src")
    dst = _points(dst, "dst")
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have the same shape, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("src points coincide: no transform is defined")
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(s) @ sign)) / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align(rgb: np.ndarray, landmarks: np.ndarray, alignment: Alignment) -> tuple[np.ndarray, np.ndarray]:
    """The face chip for `landmarks` (5x2, frame pixels) and its 2x3 frame->chip transform.

    Pixels outside the frame are black, as in dlib's own chips (extract_image_chip
    fills them with zeros), so a face at the frame edge looks the same to the
    embedder as it did in training.
    """
    matrix = similarity_transform(landmarks, alignment.template)
    source, sample = _antialiased(rgb, matrix, alignment.chip_size)
    chip = cv2.warpAffine(source, sample, alignment.chip_size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return chip, matrix


def _antialiased(rgb: np.ndarray, matrix: np.ndarray, chip_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The chip's part of the frame, shrunk by area averaging where the chip is much smaller than the face.

    Bilinear sampling alone reads 4 pixels per chip pixel, so a face several times
    larger than the chip (a close-up enrolment photo) aliases; dlib avoids this with
    an image pyramid, leaving at most a 2x reduction to its bilinear sampling.
    Returns the image to sample and the matrix from it to the chip.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale >= 0.5:
        return rgb, matrix
    x0, y0, x1, y1 = _footprint(matrix, chip_size, rgb.shape, margin=int(np.ceil(2 / scale)))
    if x1 <= x0 or y1 <= y0:  # the chip lies wholly outside the frame: it will be black anyway
        return rgb, matrix
    crop = rgb[y0:y1, x0:x1]
    size = (max(1, round((x1 - x0) * scale * 2)), max(1, round((y1 - y0) * scale * 2)))
    shrunk = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    # Shrunk pixel centre u lies at frame x = x0 + (u + 0.5) * fx - 0.5.
    fx, fy = (x1 - x0) / size[0], (y1 - y0) / size[1]
    to_frame = np.array([[fx, 0.0, x0 + 0.5 * fx - 0.5], [0.0, fy, y0 + 0.5 * fy - 0.5], [0.0, 0.0, 1.0]])
    return shrunk, matrix @ to_frame


def _footprint(matrix: np.ndarray, chip_size: tuple[int, int], shape: tuple[int, ...],
               margin: int) -> tuple[int, int, int, int]:
    """The frame rectangle (x0, y0, x1, y1) the chip samples, widened by margin and clipped to the frame."""
    width, height = chip_size
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64)
    to_frame = cv2.invertAffineTransform(matrix)
    frame = corners @ to_frame[:, :2].T + to_frame[:, 2]
    x0, y0 = np.floor(frame.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(frame.max(axis=0)).astype(int) + margin
    return max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])


def _points(points: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 2:
        raise ValueError(f"{name} must be an Nx2 array of N >= 2 points, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite coordinates")
    return array
