"""Face quality: is this face good enough to enrol, or to decide on at the door?

Pose comes from the five landmarks alone (no extra model): with a frontal face
the nose sits midway between the eyes, and between the eye line and the mouth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from engines.face import Face


@dataclass(frozen=True)
class QualityLimits:
    min_eye_distance: float = 30.0  # pixels between the eye centres in the frame
    min_sharpness: float = 40.0  # variance of the Laplacian of the aligned chip's grey levels
    max_yaw: float = 0.35  # nose offset from the eye midline, as a fraction of the eye distance
    max_roll_degrees: float = 25.0
    max_pitch: float = 0.35  # deviation of the nose's height between eye line and mouth from frontal
    min_score: float = 0.9  # detector face probability
    edge_margin: float = 0.0  # the box must lie this many pixels inside the frame


@dataclass(frozen=True)
class Quality:
    score: float
    eye_distance: float
    sharpness: float
    yaw: float
    pitch: float
    roll_degrees: float
    inside_frame: bool

    def as_dict(self) -> dict[str, float | bool]:
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


# Where the nose sits between the eye line (0) and the mouth line (1) on a
# frontal face, from the dlib alignment template in the model card.
FRONTAL_NOSE_HEIGHT = (79.61 - 46.41) / (94.39 - 46.41)


def measure(face: Face, chip: np.ndarray, frame_shape: tuple[int, ...], edge_margin: float = 0.0) -> Quality:
    eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
    eye_mid, mouth_mid = eyes.mean(axis=0), mouth.mean(axis=0)
    eye_vector = eyes[1] - eyes[0]
    eye_distance = float(np.linalg.norm(eye_vector))
    roll = float(np.degrees(np.arctan2(eye_vector[1], eye_vector[0])))
    # Work in the face's own frame (eye line horizontal) so roll does not leak into yaw and pitch.
    axis_x = eye_vector / max(eye_distance, 1e-6)
    axis_y = np.array([-axis_x[1], axis_x[0]])
    yaw = float(np.dot(nose - eye_mid, axis_x) / max(eye_distance, 1e-6))
    face_height = float(np.dot(mouth_mid - eye_mid, axis_y))
    pitch = float(np.dot(nose - eye_mid, axis_y) / face_height - FRONTAL_NOSE_HEIGHT) if face_height > 0 else 1.0
    height, width = frame_shape[:2]
    x1, y1, x2, y2 = face.box
    inside = bool(x1 >= edge_margin and y1 >= edge_margin and x2 <= width - edge_margin and y2 <= height - edge_margin)
    return Quality(face.score, eye_distance, sharpness(chip), yaw, pitch, roll, inside)


def sharpness(chip: np.ndarray) -> float:
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY) if chip.ndim == 3 else chip
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def problems(quality: Quality, limits: QualityLimits) -> list[str]:
    """Why a face falls short, each with what to do about it; empty when it is good enough."""
    found = []
    if quality.score < limits.min_score:
        found.append(f"detector score {quality.score:.2f} is below {limits.min_score:.2f}: use a clearer, well-lit photo")
    if quality.eye_distance < limits.min_eye_distance:
        found.append(f"face too small: {quality.eye_distance:.0f} px between the eyes, at least {limits.min_eye_distance:.0f} "
                     "needed: move closer or use a larger photo")
    if quality.sharpness < limits.min_sharpness:
        found.append(f"face too blurred (sharpness {quality.sharpness:.0f}, at least {limits.min_sharpness:.0f}): "
                     "hold still, focus, or use a sharper photo")
    if abs(quality.yaw) > limits.max_yaw:
        found.append(f"face turned {'right' if quality.yaw > 0 else 'left'} (yaw {quality.yaw:+.2f}, at most "
                     f"±{limits.max_yaw:.2f}): look straight at the camera")
    if abs(quality.pitch) > limits.max_pitch:
        found.append(f"head tilted {'down' if quality.pitch > 0 else 'up'} (pitch {quality.pitch:+.2f}, at most "
                     f"±{limits.max_pitch:.2f}): look straight at the camera")
    if abs(quality.roll_degrees) > limits.max_roll_degrees:
        found.append(f"head tilted sideways by {quality.roll_degrees:+.0f} degrees (at most "
                     f"±{limits.max_roll_degrees:.0f}): hold the head upright")
    if not quality.inside_frame:
        found.append("face cut off by the image edge: centre the face in the picture")
    return found
