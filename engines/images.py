"""Images from files and arrays as the HxWx3 uint8 RGB frames the engines take.

Every failure is an ImageError naming the file (or the array) and the cause, so
one bad photo in an enrolment folder is a log line, not a crash.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engines.errors import ImageError

# Modes Pillow decodes to that numpy cannot take as they are (palette, 1-bit,
# other colour spaces), and the mode each is converted to first.
_PIL_CONVERSIONS = {"1": "L", "P": "RGBA", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
                    "LAB": "RGB", "HSV": "RGB", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB"}
_FLOAT_SLACK = 1e-3  # resampling overshoot that float images in [0, 1] may carry


def load_image(path: str | Path) -> np.ndarray:
    """The upright HxWx3 uint8 RGB image in a file (any format Pillow reads, EXIF orientation applied)."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown format or damaged header)") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: too many pixels to decode safely: {error}") from None
    # Pillow's decoders report truncated or corrupt data with many exception types.
    except Exception as error:
        raise ImageError(f"{path}: cannot decode (truncated or corrupt?): {type(error).__name__}: {error}") from None
    try:
        return to_rgb8(_pil_array(upright))
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from None


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """An image array as contiguous HxWx3 uint8 RGB; uint8 RGB input comes back as is.

    Takes gray (HxW or HxWx1), gray+alpha (HxWx2), RGB and RGBA, as bool, uint8,
    uint16 (scaled by 255/65535, keeping the whole range) or float in [0, 1].
    Alpha is composited onto white: pixels under zero alpha hold whatever the
    editor left there (often black, sometimes the cut-away background with other
    faces in it), while white is what a viewer showed the person who chose the photo.
    """
    array = np.asarray(array)
    channels = _channels(array)
    if channels == 3 and array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    pixels = _to_uint8(array.reshape(*array.shape[:2], channels))
    if channels in (2, 4):
        pixels = _on_white(pixels[..., :-1], pixels[..., -1:])
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read: {error.strerror or error}") from None
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")


def _pil_array(image: Image.Image) -> np.ndarray:
    if image.mode in _PIL_CONVERSIONS:
        image = image.convert(_PIL_CONVERSIONS[image.mode])
    array = np.asarray(image)
    if image.mode == "I":  # 32-bit integer pixels: in practice 16-bit data (old PNG and TIFF readers)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageError(f"32-bit integer pixels outside 0..65535 ({array.min()}..{array.max()}) "
                             "are not supported")
        array = array.astype(np.uint16)
    return array


def _channels(array: np.ndarray) -> int:
    if array.ndim == 2:
        channels = 1
    elif array.ndim == 3 and array.shape[2] in (1, 2, 3, 4):
        channels = array.shape[2]
    else:
        raise ImageError(f"unsupported image array shape {array.shape}: expected HxW or HxWxC with C in 1..4")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"empty image array of shape {array.shape}")
    return channels


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.uint8):
        return array.astype(np.uint8, copy=False)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.uint16):  # also big-endian 16-bit TIFF data
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_uint8(array)
    raise ImageError(f"unsupported image dtype {array.dtype}: expected bool, uint8, uint16 or float in [0, 1]")


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ImageError("float image has NaN or infinite pixels")
    low, high = float(array.min()), float(array.max())
    if low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
        raise ImageError(f"float image values {low:g}..{high:g} are outside [0, 1]: scale it to [0, 1] first")
    return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if (alpha == 255).all():  # opaque, as most RGBA files are: skip the arithmetic
        return colour
    a = alpha.astype(np.uint32)
    return ((colour * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
