"""Image decoding and fitting, without HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.errors import APIError
from service.images import decode_image, encode_png, fit_image
from tests.service.helpers import encode_file, png_with_header, random_image


def test_png_round_trip() -> None:
    image = random_image(9, 13)
    np.testing.assert_array_equal(decode_image(encode_png(image), label="x", max_side=64), image)


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    out = decode_image(encode_file(Image.fromarray(values)), label="x", max_side=64)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_alpha_is_composited_over_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red; transparent black becomes white
    out = decode_image(encode_file(Image.fromarray(rgba, "RGBA")), label="x", max_side=64)
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 255, 255]


def test_header_check_refuses_before_decoding() -> None:
    with pytest.raises(APIError) as info:
        decode_image(png_with_header(70, 10), label="images[3]", max_side=64)
    assert info.value.status_code == 413
    assert "images[3]" in info.value.detail and "10x70 (HxW)" in info.value.detail  # width 70


@pytest.mark.parametrize(
    ("fit", "shape"),
    [("crop", (8, 12)), ("pad", (12, 16)), ("resize", (12, 12))],  # from 11 x 13, f = 4
)
def test_fit_shapes(fit: str, shape: tuple[int, int]) -> None:
    image = random_image(11, 13)
    out = fit_image(image, f=4, fit=fit, label="x")  # type: ignore[arg-type]
    assert out.shape == (*shape, 3)
    if fit == "pad":  # original pixels stay at the top left, the edge is repeated
        np.testing.assert_array_equal(out[:11, :13], image)
        np.testing.assert_array_equal(out[11, :13], image[10])
    if fit == "crop":
        np.testing.assert_array_equal(out, image[1:9, 0:12])


def test_fit_leaves_good_sizes_alone() -> None:
    image = random_image(8, 12)
    for fit in ("reject", "crop", "pad", "resize"):
        assert fit_image(image, f=4, fit=fit, label="x") is image  # type: ignore[arg-type]
