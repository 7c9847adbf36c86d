"""Synthetic presentation attacks for the tests: a photo or a phone held up to the camera, as frames.

A still (a face photo) is the picture; for a held phone it gets a black bezel and a glare
band, as a screen has. Each frame places the picture in 3D in front of a pinhole camera --
a slow random sweep of yaw, pitch and roll (a hand turning the picture to the camera), a
slow drift, and hand shake on top -- and warps it with the homography of that pose over a
real background photo. The picture is flat, so its face's landmarks in every frame are one
homography apart: what engines/planar_motion.py must catch.
"""
from __future__ import annotations

import cv2
import numpy as np

FRAME_SIZE = (640, 480)  # width, height: the door's camera


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    about_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return about_z @ about_x @ about_y


def as_phone(picture: np.ndarray) -> np.ndarray:
    """The picture on a phone: a black bezel around it and a bright diagonal glare band across the glass."""
    height, width = picture.shape[:2]
    border = max(4, width // 14)
    phone = cv2.copyMakeBorder(picture, border, 2 * border, border, border, cv2.BORDER_CONSTANT, value=(12, 12, 14))
    yy, xx = np.mgrid[:phone.shape[0], :phone.shape[1]]
    band = np.exp(-(((xx - 0.9 * yy) - 0.2 * phone.shape[1]) / (0.06 * phone.shape[1])) ** 2)
    return np.clip(phone + 70 * band[..., None], 0, 255).astype(np.uint8)


def held_picture_frames(picture: np.ndarray, background: np.ndarray, frames: int, rng: np.random.Generator,
                        *, phone: bool = False, picture_width: float = 260.0) -> list[np.ndarray]:
    """`frames` RGB frames (FRAME_SIZE) of the picture held in front of the background and moved as a plane.

    picture_width: the picture's width on the image at the start, pixels (about a face of 120 px for a
    portrait photo held at arm's length).
    """
    shown = as_phone(picture) if phone else picture
    height, width = shown.shape[:2]
    frame_w, frame_h = FRAME_SIZE
    back = cv2.resize(background, FRAME_SIZE, interpolation=cv2.INTER_AREA)
    focal = 1.2 * frame_w
    distance = focal * width / picture_width  # the picture's plane distance for that width
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    plane = np.hstack([corners - [width / 2, height / 2], np.zeros((4, 1))])  # the picture centred at z = 0
    # A slow sweep (the hand turning the picture) from one random pose to another, plus shake each frame.
    start = rng.uniform(0.5, 1, 3) * rng.choice([-1, 1], 3) * [0.6, 0.35, 0.15]  # yaw, pitch, roll in radians
    end = -start * rng.uniform(0.5, 1, 3)  # turned through the facing pose, as a hand shows a picture
    drift = rng.uniform(-1, 1, (2, 2)) * [0.1 * frame_w, 0.08 * frame_h]
    out = []
    for step in np.linspace(0.0, 1.0, frames):
        yaw, pitch, roll = start + (end - start) * step + rng.normal(0, 0.015, 3)
        shift = drift[0] + (drift[1] - drift[0]) * step + rng.normal(0, 1.5, 2)
        points = plane @ _rotation(yaw, pitch, roll).T + [0, 0, distance]
        image = focal * points[:, :2] / points[:, 2:] + [frame_w / 2, frame_h / 2] + shift
        matrix = cv2.getPerspectiveTransform(corners.astype(np.float32), image.astype(np.float32))
        warped = cv2.warpPerspective(shown, matrix, FRAME_SIZE, flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(np.full((height, width), 255, np.uint8), matrix, FRAME_SIZE)
        frame = np.where(mask[..., None] > 127, warped, back)
        out.append(np.ascontiguousarray(frame))
    return out
