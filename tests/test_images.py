"""Images: every supported layout becomes upright HxWx3 uint8 RGB; every bad input is an ImageError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engines.errors import ImageError
from engines.images import load_image, to_rgb8

# An upright test picture: four coloured quadrants on a 48 (wide) x 32 image,
# asymmetric under every flip and rotation, in flat blocks that JPEG keeps well.
UPRIGHT = np.zeros((32, 48, 3), np.uint8)
UPRIGHT[:16, :24] = (220, 30, 30)
UPRIGHT[:16, 24:] = (30, 220, 30)
UPRIGHT[16:, :24] = (30, 30, 220)
UPRIGHT[16:, 24:] = (230, 230, 40)

# What a camera stores for each EXIF orientation of UPRIGHT, written out from
# the EXIF definitions (independently of Pillow's exif_transpose).
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda a: np.rot90(a, 1),  # display rotates it 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, -1),  # display rotates it 90 counter-clockwise
}


def save(array: np.ndarray, path, **options) -> str:
    Image.fromarray(np.ascontiguousarray(array)).save(path, **options)
    return str(path)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# --- to_rgb8 ------------------------------------------------------------------------------------

def test_rgb_uint8_comes_back_as_is():
    out = to_rgb8(UPRIGHT)
    assert out is UPRIGHT


@pytest.mark.parametrize("gray", [np.arange(12, dtype=np.uint8).reshape(3, 4),
                                  np.arange(12, dtype=np.uint8).reshape(3, 4, 1)])
def test_gray_is_repeated_into_three_channels(gray):
    out = to_rgb8(gray)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out == gray.reshape(3, 4, 1)).all()


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)
    assert to_rgb8(values)[0, :, 0].tolist() == [0, 1, 4, 128, 255]
    big_endian = values.astype(">u2")
    assert (to_rgb8(big_endian) == to_rgb8(values)).all()


def test_floats_in_unit_range_are_scaled():
    values = np.array([[0.0, 0.5, 1.0, 1.0004, -0.0004]], np.float32)
    assert to_rgb8(values)[0, :, 0].tolist() == [0, 128, 255, 255, 0]


def test_bool_is_black_and_white():
    assert to_rgb8(np.array([[False, True]]))[0, :, 0].tolist() == [0, 255]


def test_alpha_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[..., 3] = (255, 0, 128)
    out = to_rgb8(rgba)
    assert out[0, 0].tolist() == [200, 0, 0]  # opaque: the colour
    assert out[0, 1].tolist() == [255, 255, 255]  # transparent: white, not the hidden colour
    assert out[0, 2].tolist() == [227, 127, 127]  # half: 200 * 128/255 + 255 * 127/255


def test_gray_alpha_is_composited_on_white():
    la = np.array([[[0, 255], [0, 0]]], np.uint8)
    assert to_rgb8(la).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_sixteen_bit_rgba():
    rgba = np.full((2, 2, 4), 65535, np.uint16)
    rgba[..., 0] = 0
    assert to_rgb8(rgba)[0, 0].tolist() == [0, 255, 255]


@pytest.mark.parametrize("array, cause", [
    (np.zeros((4, 4, 5), np.uint8), "shape"),
    (np.zeros(16, np.uint8), "shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 3), np.int64), "dtype"),
    (np.zeros((4, 4, 3), np.complex64), "dtype"),
    (np.zeros((4, 4, 3), object), "dtype"),
    (np.full((4, 4), 200.0), "outside"),
    (np.full((4, 4), np.nan), "NaN"),
])
def test_unsupported_arrays_are_image_errors(array, cause):
    with pytest.raises(ImageError, match=cause):
        to_rgb8(array)


# --- load_image: formats ------------------------------------------------------------------------

def test_png_round_trip(tmp_path):
    assert (load_image(save(UPRIGHT, tmp_path / "a.png")) == UPRIGHT).all()


def test_sixteen_bit_gray_png(tmp_path):
    gray = np.array([[0, 257, 65535]], np.uint16)
    path = save(gray, tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")  # the file really is 16-bit
    assert load_image(path)[0, :, 0].tolist() == [0, 1, 255]


def test_palette_png_with_transparency(tmp_path):
    image = Image.fromarray(UPRIGHT).quantize(4)
    image.info["transparency"] = 0
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    out = load_image(path)
    assert out.shape == (32, 48, 3)
    assert (out == 255).all(axis=2).any()  # the transparent palette entry became white


def test_rgba_png(tmp_path):
    rgba = np.dstack([UPRIGHT, np.full((32, 48), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    out = load_image(save(rgba, tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert (out[1:] == UPRIGHT[1:]).all()


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(UPRIGHT).convert("CMYK").save(path, quality=95)
    assert np.abs(load_image(path).astype(int) - UPRIGHT).mean() < 4


def test_float_tiff(tmp_path):
    gray = np.linspace(0, 1, 48 * 32, dtype=np.float32).reshape(32, 48)
    out = load_image(save(gray, tmp_path / "f.tif"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_a_large_image_loads(tmp_path):
    path = save(np.zeros((4000, 6000), np.uint8), tmp_path / "big.png")
    assert load_image(path).shape == (4000, 6000, 3)


# --- load_image: orientation --------------------------------------------------------------------

@pytest.mark.parametrize("orientation", sorted(STORED))
def test_every_exif_orientation_loads_upright(tmp_path, orientation):
    path = save(STORED[orientation](UPRIGHT), tmp_path / f"o{orientation}.jpg",
                quality=95, exif=exif_with_orientation(orientation))
    out = load_image(path)
    assert out.shape == UPRIGHT.shape
    assert np.abs(out.astype(int) - UPRIGHT).mean() < 4


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_tiff_orientation_loads_upright(tmp_path, orientation):
    path = save(STORED[orientation](UPRIGHT), tmp_path / f"o{orientation}.tif", tiffinfo={0x0112: orientation})
    assert (load_image(path) == UPRIGHT).all()


# --- load_image: bad files ----------------------------------------------------------------------

def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(UPRIGHT).save(buffer, "PNG")
    return buffer.getvalue()


BAD_FILES = {
    "empty.jpg": (b"", "empty"),
    "text.jpg": (b"this is not an image\n" * 10, "not a readable image"),
    "random.png": (bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8)), "not a readable image"),
    "truncated.jpg": (jpeg_bytes()[:600], "truncated"),
    "truncated.png": (png_bytes()[:60], "truncated"),
    "header-only.png": (png_bytes()[:33], "not a readable image|truncated"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_image_errors_naming_file_and_cause(tmp_path, name):
    data, cause = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError, match=cause) as error:
        load_image(path)
    assert name in str(error.value)


def test_a_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="no such file") as error:
        load_image(tmp_path / "missing.jpg")
    assert "missing.jpg" in str(error.value)


def test_a_directory_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_an_unsupported_pixel_format_names_the_file(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.array([[-5, 70000]], np.int32)).save(path)
    with pytest.raises(ImageError, match="i32.tif: 32-bit integer"):
        load_image(path)


# --- the shared fixtures ------------------------------------------------------------------------

def meds(shared_data, name):
    return shared_data / "sets" / "meds_nist_sd32" / name


def test_the_exif_rotated_photo_matches_the_original(shared_data):
    original = load_image(meds(shared_data, "images/S001/S001-01-t10_01.jpg"))
    rotated = load_image(meds(shared_data, "variants/meds-aa-S001-01-exif-rotation.jpg"))
    assert rotated.shape == original.shape == (600, 480, 3)
    assert np.abs(rotated.astype(int) - original).mean() < 2


def test_the_rgba_tiff_matches_the_original(shared_data):
    original = load_image(meds(shared_data, "images/S001/S001-01-t10_01.jpg"))
    tiff = load_image(meds(shared_data, "variants/meds-aa-S001-01.tif"))
    assert tiff.shape == original.shape
    assert np.abs(tiff.astype(int) - original).mean() < 2


def test_the_two_face_photo_loads(shared_data):
    image = load_image(meds(shared_data, "variants/meds-af-S419-01_40deg.jpg"))
    assert image.shape == (768, 1263, 3) and image.dtype == np.uint8
