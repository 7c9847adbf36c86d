"""Uploaded photos: size and pixel limits, and images only, told by decoding them, never by their name.

An upload is checked before the decoder sees its pixels: at most MAX_UPLOAD_BYTES, a format
Pillow identifies from the bytes (JPEG, PNG, WebP, BMP, TIFF), at most MAX_PIXELS by its
header, so a decompression bomb (a small file of a huge picture) is refused without being
decoded. What passes is written to a private temporary folder and judged by the same
engines.images.load_image and quality gate the CLI uses; the label is the name the browser
gave, shown escaped.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from desk.settings import MAX_PIXELS, MAX_UPLOAD_BYTES

FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"}  # MPO: what some phone cameras write as .jpg


@dataclass(frozen=True)
class Upload:
    label: str  # the browser's file name, for the operator's eyes only
    data: bytes


def problem(upload: Upload) -> str | None:
    """Why the upload cannot be a photo to enrol, in plain words; None when it may be decoded."""
    if not upload.data:
        return "the file is empty"
    if len(upload.data) > MAX_UPLOAD_BYTES:
        return (f"the file is {len(upload.data) / 1e6:.1f} MB: at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MB per "
                "photo; export a smaller copy")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data)) as image:  # reads the header only
                kind, (width, height) = image.format, image.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return (f"the picture has too many pixels to decode safely (at most {MAX_PIXELS / 1e6:.0f} megapixels): "
                "a decompression bomb, or a photo to export smaller")
    except UnidentifiedImageError:
        return "not a photo: the file is no image format this desk reads (JPEG, PNG, WebP, BMP, TIFF)"
    except Exception:  # Pillow reports a broken header with many exception types
        return "not a readable photo: the file is damaged or truncated"
    if kind not in FORMATS:
        return f"a {kind} image: send a photo as JPEG, PNG, WebP, BMP or TIFF"
    if width * height > MAX_PIXELS:
        return (f"the picture is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels): at most "
                f"{MAX_PIXELS / 1e6:.0f} megapixels; export a smaller copy")
    return None


def save(upload: Upload, folder: Path, number: int) -> Path:
    """The upload in folder under a name of our own (the browser's name never becomes a path)."""
    path = folder / f"upload-{number}"
    path.write_bytes(upload.data)
    return path
