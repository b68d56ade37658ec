"""vqio.decode_image: what each odd file becomes, and the errors for what is not an image."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqio
from tests.vqio.odd_files import ODD_FILES, exif_rotated_jpeg, photo

RGB = photo(30, 41)


def _write(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    ODD_FILES[name](path, RGB)
    return path


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Straight alpha over white, rounded: what compositing should give (within 1 level)."""
    a = rgba[..., 3:].astype(np.float64) / 255.0
    return np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a))


@pytest.mark.parametrize("name", list(ODD_FILES))
def test_every_odd_file_decodes_to_rgb_of_the_header_size(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name)
    image = vqio.read_image(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.flags.writeable and image.flags.c_contiguous
    assert vqio.image_size(path) == image.shape[:2]
    np.testing.assert_array_equal(vqio.decode_image(path.read_bytes()), image)


def test_alpha_is_composited_over_white(tmp_path: Path) -> None:
    path = _write(tmp_path, "rgba.png")
    with Image.open(path) as im:
        rgba = np.asarray(im)
    image = vqio.read_image(path)
    assert np.abs(image - _over_white(rgba)).max() <= 1
    assert (image[1:, 0] == 255).all()  # fully transparent column: white, not the photo
    np.testing.assert_array_equal(image[0], RGB[0])  # opaque row: the photo


def test_sixteen_bit_is_divided_by_257_not_clipped_or_stretched(tmp_path: Path) -> None:
    path = _write(tmp_path, "gray16.png")
    with Image.open(path) as im:
        values = np.asarray(im, dtype=np.float64)
    image = vqio.read_image(path)
    np.testing.assert_array_equal(image[..., 0], np.rint(values / 257.0))
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    # 16-bit white is 8-bit white; a per-image-maximum scaling would map a darker max there.
    tiny = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(tiny).save(buf, format="PNG")
    assert vqio.decode_image(buf.getvalue())[0, :, 0].tolist() == [0, 1, 128, 255]
    dark = np.array([[0, 1000, 2000]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(dark).save(buf, format="PNG")
    assert vqio.decode_image(buf.getvalue())[0, :, 0].tolist() == [0, 4, 8]


@pytest.mark.parametrize(("orientation", "turn"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, turn: int) -> None:
    """Same JPEG data with and without the tag: the tagged one comes back turned."""
    plain, tagged = tmp_path / "plain.jpg", tmp_path / "tagged.jpg"
    Image.fromarray(RGB).save(plain, quality=90)
    exif_rotated_jpeg(tagged, RGB, orientation)
    expected = np.rot90(vqio.read_image(plain), k=turn)  # k > 0: counter-clockwise
    image = vqio.read_image(tagged)
    np.testing.assert_array_equal(image, expected)
    assert vqio.image_size(tagged) == expected.shape[:2]


def test_palette_gif_with_transparency(tmp_path: Path) -> None:
    path = _write(tmp_path, "palette.gif")
    with Image.open(path) as im:
        assert im.mode == "P" and im.info.get("transparency") == 0
        expected = _over_white(np.asarray(im.convert("RGBA")))
    np.testing.assert_array_equal(vqio.read_image(path), expected)


def test_multi_frame_file_gives_its_first_frame(tmp_path: Path) -> None:
    path = _write(tmp_path, "animated.gif")
    with Image.open(path) as im:
        assert im.n_frames == 2
        first = np.asarray(im.convert("RGB"))
        im.seek(1)
        second = np.asarray(im.convert("RGB"))
    image = vqio.read_image(path)
    np.testing.assert_array_equal(image, first)
    assert np.abs(image.astype(int) - second).mean() > 50


def test_cmyk_jpeg_is_converted(tmp_path: Path) -> None:
    path = _write(tmp_path, "cmyk.jpg")
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    image = vqio.read_image(path)
    assert np.abs(image.astype(int) - RGB).mean() < 8  # the photo, up to JPEG loss


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="TIFF")
    return buf.getvalue()


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="PNG")
    return buf.getvalue()[:200]


@pytest.mark.parametrize(
    ("data", "kwargs", "kind", "words"),
    [
        (b"", {}, "empty", ["0 bytes"]),
        (b"hello, not an image", {}, "unreadable", ["not a readable image", "PNG, JPEG"]),
        (_tiff(), {}, "unreadable", ["allowed formats"]),
        (_truncated_png(), {}, "corrupt", ["truncated or corrupt"]),
        (_png_header(70, 10), {"max_side": 64}, "too_large", ["10x70 (HxW)", "64 px per side"]),
        (_png_header(300, 200), {"max_pixels": 50_000}, "too_large", ["60000 pixels", "50000"]),
    ],
)
def test_bad_files_raise_a_named_error(
    data: bytes, kwargs: dict[str, int], kind: str, words: list[str]
) -> None:
    with pytest.raises(vqio.ImageDecodeError) as info:
        vqio.decode_image(data, label="photo 7", **kwargs)
    assert info.value.kind == kind
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("photo 7 ")
    assert all(w in message for w in words), message


def test_missing_file_is_named_by_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    for call in (vqio.read_image, vqio.image_size):
        with pytest.raises(vqio.ImageDecodeError, match="nope.png could not be read"):
            call(missing)


@pytest.mark.parametrize(
    ("h", "w", "f", "rows", "cols"),
    [(13, 10, 4, (0, 12), (1, 9)), (8, 8, 4, (0, 8), (0, 8)), (3, 9, 4, (1, 1), (0, 8))],
)
def test_center_crop(h: int, w: int, f: int, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    r, c = vqio.center_crop(h, w, f)
    assert (r.start, r.stop) == rows and (c.start, c.stop) == cols
    with pytest.raises(ValueError, match="multiple=0"):
        vqio.center_crop(h, w, 0)
