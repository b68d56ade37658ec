"""Every endpoint and every bad input of issue 4, through FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import vq
from service.app import create_app
from service.client import Client, ServiceError
from service.errors import ErrorCode
from service.loader import StartupError
from tests.service.helpers import (
    CODEBOOK_SIZE,
    F,
    encode_file,
    make_settings,
    png_with_header,
    random_image,
)


def expected_codes(tokenizer: vq.Tokenizer, image: np.ndarray) -> list[list[int]]:
    batch = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    codes: list[list[int]] = tokenizer.encode(batch)[0].tolist()
    return codes


def post_files(client: TestClient, blobs: list[bytes], **params: str) -> object:
    files = [("files", (f"f{i}.png", b, "application/octet-stream")) for i, b in enumerate(blobs)]
    return client.post("/v1/tokenize", params=params, files=files)


def assert_error(response: object, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    assert ErrorCode(code).status == status  # the code's one status (service/errors.py)
    for word in words:
        assert word in body["detail"], body


# ---------------------------------------------------------------------------- happy paths


def test_tokenize_multipart_returns_codes_of_each_image_in_order(
    app_client: TestClient, tokenizer: vq.Tokenizer
) -> None:
    images = [
        random_image(16, 24, seed=1),
        random_image(32, 8, seed=2),
        random_image(16, 24, seed=3),
    ]
    response = post_files(app_client, [encode_file(im) for im in images])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "default" and body["codebook_size"] == CODEBOOK_SIZE
    assert len(body["results"]) == 3
    for image, result in zip(images, body["results"], strict=True):
        h, w = image.shape[:2]
        assert result["image_size"] == [h, w]
        assert result["grid"] == [h // F, w // F]
        assert result["codes"] == expected_codes(tokenizer, image)


def test_tokenize_json_base64_matches_multipart(app_client: TestClient) -> None:
    blobs = [
        encode_file(random_image(16, 16, seed=4)),
        encode_file(random_image(8, 8, seed=5), "WEBP"),
    ]
    payload = {"images": [base64.b64encode(b).decode() for b in blobs]}
    payload["images"][1] = "data:image/webp;base64," + payload["images"][1]
    by_json = app_client.post("/v1/tokenize", json=payload)
    by_form = post_files(app_client, blobs)
    assert by_json.status_code == 200, by_json.text
    assert by_json.json() == by_form.json()


def test_tokenize_jpeg(app_client: TestClient) -> None:
    response = post_files(app_client, [encode_file(random_image(16, 16), "JPEG")])
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["grid"] == [4, 4]


@pytest.mark.parametrize(
    ("fit", "grid"),
    [("crop", [4, 5]), ("pad", [5, 6]), ("resize", [4, 6])],  # from 18 x 22 with f = 4
)
def test_tokenize_fit_modes(app_client: TestClient, fit: str, grid: list[int]) -> None:
    response = post_files(app_client, [encode_file(random_image(18, 22))], fit=fit)
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["grid"] == grid
    assert result["image_size"] == [18, 22]
    assert np.asarray(result["codes"]).shape == tuple(grid)


@pytest.mark.parametrize(
    "mode", ["L", "LA", "RGBA", "P", "P-transparent", "1", "I;16", "RGB-16bit-gray-equivalent"]
)
def test_tokenize_accepts_other_modes(
    app_client: TestClient, tokenizer: vq.Tokenizer, mode: str
) -> None:
    """Grayscale, alpha, palette and 16-bit images are converted to RGB, not refused."""
    rgb = random_image(16, 16, seed=7)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "L":
        image, expected = Image.fromarray(gray), np.repeat(gray[:, :, None], 3, 2)
    elif mode == "LA":
        la = Image.fromarray(np.stack([gray, np.full_like(gray, 255)], -1), "LA")
        image, expected = la, np.repeat(gray[:, :, None], 3, 2)
    elif mode == "RGBA":
        alpha = np.full((16, 16, 1), 255, np.uint8)
        image, expected = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA"), rgb
    elif mode in ("P", "P-transparent"):
        image = Image.fromarray(rgb).quantize(colors=32)
        expected = np.asarray(image.convert("RGB"))
        if mode == "P-transparent":
            image.info["transparency"] = 255  # an index no pixel uses: nothing changes
    elif mode == "1":
        image = Image.fromarray(gray).convert("1")
        expected = np.asarray(image.convert("RGB"))
    else:  # 16-bit grayscale: values scaled by 257 must come back as the 8-bit gray
        image = Image.fromarray(gray.astype(np.uint16) * 257)
        assert image.mode.startswith("I")
        expected = np.repeat(gray[:, :, None], 3, 2)
    response = post_files(app_client, [encode_file(image)])
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["codes"] == expected_codes(tokenizer, expected)


def test_detokenize_single_grid_returns_png_equal_to_library_decode(
    app_client: TestClient, tokenizer: vq.Tokenizer
) -> None:
    codes = np.random.default_rng(0).integers(0, CODEBOOK_SIZE, size=(3, 5)).tolist()
    response = app_client.post("/v1/detokenize", json={"codes": codes})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.content)))
    assert image.shape == (3 * F, 5 * F, 3)
    library = tokenizer.decode(torch.tensor([codes]))[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(image, library)


def test_detokenize_batch_returns_base64_pngs_in_order(app_client: TestClient) -> None:
    grids = [[[1, 2], [3, 4]], [[5, 6, 7]], [[0, 0], [63, 63]]]
    response = app_client.post("/v1/detokenize/batch", json={"batch": grids, "model": "default"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "default"
    sizes = [Image.open(io.BytesIO(base64.b64decode(s))).size for s in body["images"]]
    assert sizes == [(2 * F, 2 * F), (3 * F, 1 * F), (2 * F, 2 * F)]  # PIL sizes are (W, H)
    assert body["image_size"] == [[8, 8], [4, 12], [8, 8]]
    single = app_client.post("/v1/detokenize", json={"codes": grids[1]})
    assert base64.b64decode(body["images"][1]) == single.content


def test_tokenize_detokenize_round_trip_keeps_the_grid(app_client: TestClient) -> None:
    client = Client(http=app_client)
    image = random_image(24, 16, seed=9)
    result = client.tokenize([image])[0]
    png = client.detokenize(result.codes)
    assert Image.open(io.BytesIO(png)).size == (16, 24)
    again = client.tokenize([png])[0]
    assert again.grid == result.grid


def test_models_list_and_detail(app_client: TestClient) -> None:
    models = {m["name"]: m for m in app_client.get("/v1/models").json()["models"]}
    assert set(models) == {"default", "fsq"}
    vq_model = models["default"]
    assert vq_model["kind"] == "vq" and vq_model["codebook_size"] == CODEBOOK_SIZE
    assert vq_model["f"] == F and vq_model["code_dim"] == 8
    assert vq_model["image_range"] == [-1.0, 1.0]
    assert vq_model["metrics"] == {"psnr": 12.5}
    assert vq_model["format_version"] == 1
    fsq = app_client.get("/v1/models/fsq").json()
    assert fsq["kind"] == "fsq" and fsq["levels"] == [8, 6, 5] and fsq["codebook_size"] == 240
    assert app_client.get("/v1/models/default").json() == vq_model


def test_usage_counts_served_tokens(app_client: TestClient) -> None:
    before = app_client.get("/v1/models/default/usage").json()
    post_files(app_client, [encode_file(random_image(16, 16, seed=11))])
    after = app_client.get("/v1/models/default/usage").json()
    assert after["tokens_seen"] == before["tokens_seen"] + 16
    assert len(after["histogram"]) == CODEBOOK_SIZE
    assert sum(after["histogram"]) == after["window_tokens"]
    assert after["window_tokens"] == min(after["tokens_seen"], after["window"])
    used = sum(1 for n in after["histogram"] if n > 0)
    # The window (65,536) is filling: codes without a hit are unseen, not dead.
    assert after["window_tokens"] < after["window"]
    assert after["unseen_codes"] == CODEBOOK_SIZE - used and after["dead_codes"] == 0
    assert after["window_usage"] == pytest.approx(used / CODEBOOK_SIZE)
    assert 1.0 <= after["perplexity"] <= used + 1e-6


def test_health_ready_docs_and_dashboard(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == ["default", "fsq"]
    spec = app_client.get("/openapi.json").json()
    assert {"/v1/tokenize", "/v1/detokenize", "/v1/models/{name}/usage"} <= set(spec["paths"])
    page = app_client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="static/app.js"' in page.text
    assert app_client.get("/static/app.js").status_code == 200


def test_readyz_is_503_before_models_load(artifact_dir: Path) -> None:
    client = TestClient(create_app(make_settings(artifact_dir)))  # no `with`: no lifespan
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "loading"
    assert_error(post_files(client, [encode_file(random_image(8, 8))]), 503, "not_ready")
    assert_error(client.get("/v1/models"), 503, "not_ready", "loading")


def test_startup_fails_on_a_missing_artifact(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "nowhere"))
    with pytest.raises(StartupError, match="model 'default': .*nowhere"), TestClient(app):
        pass


# ---------------------------------------------------------------------------- bad input


def test_not_an_image(app_client: TestClient) -> None:
    response = post_files(app_client, [b"certainly not a picture"])
    assert_error(response, 400, "invalid_image", "files[0]", "PNG")


def test_truncated_image(app_client: TestClient) -> None:
    blob = encode_file(random_image(64, 64))
    assert_error(post_files(app_client, [blob[: len(blob) // 2]]), 400, "invalid_image", "files[0]")


def test_zero_byte_upload(app_client: TestClient) -> None:
    assert_error(post_files(app_client, [b""]), 400, "empty_image", "empty")


def test_unsupported_format_is_refused(app_client: TestClient) -> None:
    assert_error(
        post_files(app_client, [encode_file(random_image(8, 8), "TIFF")]), 400, "invalid_image"
    )


@pytest.mark.parametrize("chunked", [False, True])
def test_upload_over_the_limit_is_413(artifact_dir: Path, chunked: bool) -> None:
    app = create_app(make_settings(artifact_dir, max_upload_bytes=4096))
    big = encode_file(random_image(64, 64))  # about 12 KB of incompressible PNG
    assert len(big) > 4096
    with TestClient(app) as client:
        if chunked:
            # A generator body has no Content-Length: the limit is counted while streaming.
            response = client.post(
                "/v1/tokenize",
                content=(big[i : i + 1024] for i in range(0, len(big), 1024)),
                headers={"content-type": "application/json"},
            )
        else:
            response = post_files(client, [big])
        assert_error(response, 413, "too_large", "4096")
        small = encode_file(random_image(8, 8))
        assert post_files(client, [small]).status_code == 200  # still serving


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [50_000, 5_000])
def test_decompression_bomb_refused_before_decoding(app_client: TestClient, side: int) -> None:
    """50,000^2 trips Pillow's own guard inside Image.open; 5,000^2 (below it) is refused by
    our header check. Either way nothing is decoded: the files are ~70 bytes."""
    bomb = png_with_header(side, side)
    assert len(bomb) < 100
    response = post_files(app_client, [bomb])
    assert_error(response, 413, "image_too_large", "files[0]", "2048")


def test_side_over_the_maximum(app_client: TestClient) -> None:
    wide = encode_file(np.zeros((4, 4097, 3), np.uint8))
    assert_error(post_files(app_client, [wide], fit="resize"), 413, "image_too_large", "4097")


def test_sides_not_multiples_of_f_with_fit_reject(app_client: TestClient) -> None:
    response = post_files(app_client, [encode_file(random_image(10, 16))])
    assert_error(response, 422, "bad_image_size", "f=4", "fit=crop")


def test_crop_of_an_image_smaller_than_f(app_client: TestClient) -> None:
    response = post_files(app_client, [encode_file(random_image(3, 8))], fit="crop")
    assert_error(response, 422, "bad_image_size", "too small")


def test_bad_fit_value(app_client: TestClient) -> None:
    response = post_files(app_client, [encode_file(random_image(8, 8))], fit="stretch")
    assert_error(response, 422, "invalid_request", "fit")


def test_unknown_model_is_404_everywhere(app_client: TestClient) -> None:
    image = encode_file(random_image(8, 8))
    assert_error(
        post_files(app_client, [image], model="nope"), 404, "unknown_model", "nope", "default"
    )
    assert_error(
        app_client.post("/v1/detokenize", json={"codes": [[1]], "model": "nope"}),
        404,
        "unknown_model",
    )
    assert_error(app_client.get("/v1/models/nope"), 404, "unknown_model")
    assert_error(app_client.get("/v1/models/nope/usage"), 404, "unknown_model")


def test_the_frameworks_own_errors_have_codes(app_client: TestClient) -> None:
    assert_error(app_client.get("/v2/nothing"), 404, "not_found")
    response = app_client.get("/v1/tokenize")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]
    response = app_client.post(
        "/v1/tokenize",
        content=b"--x\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert_error(response, 400, "bad_request")


@pytest.mark.parametrize(
    ("path", "body", "code", "word"),
    [
        ("/v1/detokenize/batch", {"batch": []}, "invalid_request", "at least 1"),
        ("/v1/detokenize/batch", {"batch": [[[1]], [[1, 2], [3]]]}, "invalid_codes", "batch[1]"),
        ("/v1/detokenize/batch", {"batch": [[[1]], [[-1]]]}, "invalid_codes", "batch[1]"),
        ("/v1/detokenize/batch", {"codes": [[1]]}, "invalid_request", "batch"),
        ("/v1/detokenize", {"batch": [[[1]]]}, "invalid_request", "codes"),
    ],
)
def test_detokenize_batch_bad_bodies_are_422(
    app_client: TestClient, path: str, body: dict[str, object], code: str, word: str
) -> None:
    assert_error(app_client.post(path, json=body), 422, code, word)


@pytest.mark.parametrize(
    ("body", "code", "word"),
    [
        ({"codes": [[0, CODEBOOK_SIZE]]}, "invalid_codes", f"[0, {CODEBOOK_SIZE})"),
        ({"codes": [[0, -1]]}, "invalid_codes", "-1"),
        ({"codes": [[0, 10**30]]}, "invalid_codes", "[0, 64)"),
        ({"codes": [[0, 1.5]]}, "invalid_request", "integer"),
        ({"codes": [[0, "3"]]}, "invalid_request", "integer"),
        ({"codes": [[0, True]]}, "invalid_request", "integer"),
        ({"codes": [[1, 2], [3]]}, "invalid_codes", "ragged"),
        ({"codes": []}, "invalid_request", "at least 1"),
        ({"codes": [[]]}, "invalid_request", "at least 1"),
        ({"codes": [[0] * 257]}, "grid_too_large", "256"),
        ({}, "invalid_request", "codes"),
        ({"codes": [1, 2]}, "invalid_request", "array"),
        ({"codes": [[1]], "colour": "red"}, "invalid_request", "colour"),
    ],
)
def test_detokenize_bad_codes_are_422(
    app_client: TestClient, body: dict[str, object], code: str, word: str
) -> None:
    assert_error(app_client.post("/v1/detokenize", json=body), 422, code, word)


def test_malformed_json(app_client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    for path in ("/v1/tokenize", "/v1/detokenize"):
        response = app_client.post(path, content=b'{"images": [', headers=headers)
        assert_error(response, 422, "invalid_request", "JSON")


@pytest.mark.parametrize(
    "payload",
    [{"images": "abc"}, {"images": []}, {"images": [3]}, {"pictures": ["aGk="]}, [1, 2]],
)
def test_tokenize_json_of_the_wrong_shape(app_client: TestClient, payload: object) -> None:
    assert_error(app_client.post("/v1/tokenize", json=payload), 422, "invalid_request")


@pytest.mark.parametrize("text", ["not base64 at all!", "aGk", "data:image/png,aGk="])
def test_malformed_base64(app_client: TestClient, text: str) -> None:
    response = app_client.post("/v1/tokenize", json={"images": [text]})
    assert_error(response, 400, "invalid_base64", "images[0]")


def test_unsupported_content_type_and_missing_files(app_client: TestClient) -> None:
    response = app_client.post(
        "/v1/tokenize", content=b"raw", headers={"content-type": "image/png"}
    )
    assert_error(response, 415, "unsupported_media_type", "multipart")
    response = app_client.post("/v1/tokenize", files={"other": ("a.png", b"x")})
    assert_error(response, 422, "no_images", "files")
    response = app_client.post(
        "/v1/tokenize", data={"files": "just text"}, files={"other": ("a.png", b"x")}
    )
    assert_error(response, 422, "not_a_file", "text field")


def test_too_many_images(artifact_dir: Path) -> None:
    app = create_app(make_settings(artifact_dir, max_images_per_request=2))
    blob = encode_file(random_image(8, 8))
    with TestClient(app) as client:
        payload = {"images": [base64.b64encode(blob).decode()] * 3}
        assert_error(client.post("/v1/tokenize", json=payload), 422, "too_many_images", "2")
        # The same error for multipart files as for base64 images.
        assert_error(post_files(client, [blob] * 3), 422, "too_many_images", "more than 2")
        assert_error(
            client.post("/v1/detokenize/batch", json={"batch": [[[1]]] * 3}),
            422,
            "too_many_images",
        )


def test_unexpected_errors_are_json_500_and_the_service_recovers(artifact_dir: Path) -> None:
    app = create_app(make_settings(artifact_dir))
    with TestClient(app, raise_server_exceptions=False) as client:
        served = app.state.service.models["default"]
        original = served.tokenizer.encode

        def broken(images: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("simulated bug")

        served.tokenizer.encode = broken
        assert_error(post_files(client, [encode_file(random_image(8, 8))]), 500, "internal_error")
        served.tokenizer.encode = original
        assert post_files(client, [encode_file(random_image(8, 8))]).status_code == 200


def test_service_keeps_serving_after_bad_input(app_client: TestClient) -> None:
    for bad in (b"", b"junk", png_with_header(50_000, 50_000)):
        assert 400 <= post_files(app_client, [bad]).status_code < 500
    response = post_files(app_client, [encode_file(random_image(8, 8))])
    assert response.status_code == 200


def test_client_raises_service_error_with_code(app_client: TestClient) -> None:
    client = Client(http=app_client)
    with pytest.raises(ServiceError) as info:
        client.tokenize([b"junk"])
    assert info.value.status_code == 400 and info.value.code == "invalid_image"
    result = client.tokenize([random_image(8, 8)], as_json=True)[0]
    assert result.grid == (2, 2) and result.as_array().shape == (2, 2)
    assert client.usage()["codebook_size"] == CODEBOOK_SIZE
    assert [m["name"] for m in client.models()] == ["default", "fsq"]
    pngs = client.detokenize_batch([result.codes, result.codes])
    assert pngs[0] == pngs[1]


def test_one_size_order_everywhere(app_client: TestClient) -> None:
    """(H, W), height first: JSON image_size and grid, the X-Image-Size header, messages."""
    image = random_image(12, 20)  # H = 12, W = 20
    result = post_files(app_client, [encode_file(image)]).json()["results"][0]  # type: ignore[attr-defined]
    assert result["image_size"] == [12, 20] and result["grid"] == [3, 5]
    png = app_client.post("/v1/detokenize", json={"codes": result["codes"]})
    assert png.headers["x-image-size"] == "12x20"
    assert Image.open(io.BytesIO(png.content)).size == (20, 12)  # PIL's own order is (W, H)
    batch = app_client.post("/v1/detokenize/batch", json={"batch": [result["codes"]]}).json()
    assert batch["image_size"] == [[12, 20]]
    response = post_files(app_client, [encode_file(random_image(10, 13))])
    assert_error(response, 422, "bad_image_size", "10x13 (HxW)")
    wide = app_client.post("/v1/detokenize", json={"codes": [[0] * 513]})
    assert_error(wide, 422, "grid_too_large", "1x513 (HxW)")


@pytest.mark.parametrize("as_json", [False, True])
def test_client_names_images_by_their_path_in_errors(
    app_client: TestClient, tmp_path: Path, as_json: bool
) -> None:
    good, odd = tmp_path / "good.png", tmp_path / "sub" / "odd size.png"
    odd.parent.mkdir()
    good.write_bytes(encode_file(random_image(8, 8)))
    odd.write_bytes(encode_file(random_image(10, 13)))
    with pytest.raises(ServiceError) as info:
        Client(http=app_client).tokenize([good, str(odd)], as_json=as_json)
    assert info.value.code == "bad_image_size"
    assert str(odd) in info.value.detail and "10x13 (HxW)" in info.value.detail
    assert "image1" not in info.value.detail and str(good) not in info.value.detail


def test_model_card_is_served_where_the_artifact_has_one(
    artifact_dir: Path, tmp_path: Path
) -> None:
    """GET /v1/models/{name}/card: the artifact's card.md as Markdown (the dashboard links it
    for the full-image figures); 404 not_found, and ``card: false``, without one."""
    import shutil

    with_card = tmp_path / "carded"
    shutil.copytree(artifact_dir, with_card)
    (with_card / "card.md").write_text("# A card\n\nKodak: 24.6 dB\n", encoding="utf-8")
    settings = make_settings(artifact_dir)
    settings.models["carded"] = str(with_card)
    with TestClient(create_app(settings)) as client:
        card = client.get("/v1/models/carded/card")
        assert card.status_code == 200 and card.text.startswith("# A card")
        assert card.headers["content-type"].startswith("text/markdown")
        assert client.get("/v1/models/carded").json()["card"] is True
        missing = client.get("/v1/models/default/card")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        assert "no model card" in missing.json()["detail"]
        assert client.get("/v1/models/default").json()["card"] is False
        assert client.get("/v1/models/nope/card").json()["code"] == "unknown_model"


def test_client_sends_the_base_name_of_a_file(app_client: TestClient, tmp_path: Path) -> None:
    """The upload's file name is the base name, never the local path (the service's messages
    and logs would show it); the client's own error names the local path."""
    folder = tmp_path / "private" / "folder"
    folder.mkdir(parents=True)
    (folder / "cat.png").write_bytes(b"not an image")
    sent: list[object] = []

    class Recording:
        def post(self, *args: object, **kwargs: object) -> object:
            sent.append(kwargs.get("files"))
            return app_client.post(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(ServiceError) as err:
        Client(http=Recording()).tokenize([folder / "cat.png"])  # type: ignore[arg-type]
    assert sent[0][0][1][0] == "cat.png"  # type: ignore[index]
    assert f"files[0] ({folder / 'cat.png'})" in err.value.detail


@pytest.mark.parametrize("path", ["/v1/detokenize", "/v1/detokenize/batch"])
def test_detokenize_with_a_form_body_is_415_like_tokenize(
    app_client: TestClient, path: str
) -> None:
    for response in (
        app_client.post(path, data={"codes": "[[1]]"}),  # a form, as curl -d sends
        app_client.post(path, content=b'{"codes": [[1]]}'),  # no content-type
        app_client.post("/v1/tokenize", data={"images": "x"}),
    ):
        assert_error(response, 415, "unsupported_media_type", "content-type")
