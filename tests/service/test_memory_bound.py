"""The memory budget as a bound (issue 23): sizes priced from headers without decoding a
pixel, JSON bodies priced by their structure before they are parsed (and parsed off the
event loop), the body's memory reserved before it is read."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.budget import (
    IMAGES_JSON_BYTES_PER_IMAGE,
    MemoryBudget,
    MemoryBusy,
    Reservation,
    grid_json_bytes,
    grid_parse_bytes,
    images_json_bytes,
)
from service.images import header_size
from tests.service.helpers import encode_file, make_settings, random_image


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG", "GIF", "BMP"])
def test_header_size_decodes_no_pixel(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode_file(random_image(40, 56), fmt)
    loads: list[str] = []
    original = Image.Image.load

    def counting_load(self: Image.Image) -> object:
        loads.append(self.format or "?")
        return original(self)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    monkeypatch.setattr(Image.Image, "getexif", lambda self: pytest.fail("getexif called"))
    assert header_size(data, label="x", max_side=4096) in ((40, 56), (56, 40))
    assert loads == []


def grid_body(grids: int, h: int, w: int, code: int = 63) -> bytes:
    row = b"[" + b",".join([str(code).encode()] * w) + b"]"
    grid = b"[" + b",".join([row] * h) + b"]"
    return b'{"batch": [' + b",".join([grid] * grids) + b"]}"


@pytest.mark.parametrize(
    "body",
    [
        grid_body(8, 64, 64),  # long rows
        grid_body(8, 64, 64, code=7),  # long rows of one-digit codes: most codes per byte
        grid_body(64, 64, 1),  # one-element rows: most lists per byte
        grid_body(1, 1, 64, code=10**30),  # big ints (refused after the parse: out of range)
    ],
    ids=["long-rows", "one-digit", "one-element-rows", "big-ints"],
)
def test_the_price_of_a_grid_body_covers_its_parse(artifact_dir: Path, body: bytes) -> None:
    """What the parse allocates (traced) plus the int64 tensors it returns stays within
    what the body was charged, less the body itself (held before the parse began)."""
    import tracemalloc

    from service.errors import APIError
    from service.routes.detokenize import _parse

    settings = make_settings(artifact_dir, max_grid_side=64)
    app = create_app(settings)
    with TestClient(app):
        state = app.state.service
        tracemalloc.start()
        try:
            _, tensors = _parse(body, True, state, settings)
        except APIError:
            tensors = []
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    codes = sum(t.numel() for t in tensors)
    charged = grid_json_bytes(body) + grid_parse_bytes(settings.max_grid_side)
    assert peak + 8 * codes + len(body) <= charged, (peak, codes, len(body), charged)


@pytest.mark.parametrize(
    "texts",
    [
        ["QUFB" * 250_000],  # one large image
        [" Q U F B" * 100_000],  # whitespace-padded
        ["QUFB"] * 64,  # many small ones
        ["data:image/png;base64," + "QUFB" * 1000] * 8,
    ],
    ids=["large", "whitespace", "many", "data-url"],
)
def test_the_price_of_an_images_body_covers_its_parse(texts: list[str]) -> None:
    import json
    import tracemalloc

    from service.routes.tokenize import _parse_json
    from service.settings import Settings

    body = json.dumps({"images": texts}).encode()
    tracemalloc.start()
    payloads = _parse_json(body, Settings())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(data.startswith(b"AAA") for _, data in payloads)
    upfront = IMAGES_JSON_BYTES_PER_IMAGE * len(texts)  # reserved before the body is read
    assert peak + len(body) <= images_json_bytes(body) + upfront, (peak, len(body))


def test_reservations_grow_without_waiting() -> None:
    budget = MemoryBudget(100)
    held = Reservation(budget, 0)
    held.resize(60)
    assert budget.used == 60
    other = Reservation(budget, 0)
    with pytest.raises(MemoryBusy):
        other.resize(50)  # would have to wait: refused instead
    assert budget.used == 60
    held.resize(10)
    other.resize(50)
    assert budget.used == 60
    held.release()
    other.release()
    assert budget.used == 0


def ones_body(rows: int) -> bytes:
    return b'{"batch": [[' + b",".join([b"[0]"] * rows) + b"]]}"


def test_a_json_body_is_priced_before_it_is_parsed(artifact_dir: Path) -> None:
    settings = make_settings(artifact_dir)
    app = create_app(settings)
    with TestClient(app) as client:
        state = app.state.service
        state._input_budget = MemoryBudget(8 * 2**20)  # bodies may use 8 MiB
        headers = {"content-type": "application/json"}
        small = client.post("/v1/detokenize/batch", content=ones_body(64), headers=headers)
        assert small.status_code == 200, small.text
        # Four 256 x 256 grids of legal codes: some 790 kB of JSON, priced over 8 MiB.
        body = grid_body(4, 256, 256)
        assert grid_json_bytes(body) + grid_parse_bytes(256) > 8 * 2**20
        big = client.post("/v1/detokenize/batch", content=body, headers=headers)
        assert big.status_code == 413, big.text
        assert big.json()["code"] == "memory_budget"
        # 60,000 one-element rows: more rows than a grid within the limits holds, refused
        # from the grid's bytes before a list is built.
        rows = client.post("/v1/detokenize/batch", content=ones_body(60_000), headers=headers)
        assert rows.status_code == 422, rows.text
        assert rows.json()["code"] == "grid_too_large"
        assert state.input_budget.used == 0 and state.budget.used == 0


def test_json_is_parsed_off_the_event_loop(artifact_dir: Path) -> None:
    app = create_app(make_settings(artifact_dir))
    with TestClient(app) as client:
        loop_thread: list[int] = []
        from service.routes import detokenize

        original = detokenize._parse

        def spy(*args: object) -> object:
            loop_thread.append(threading.get_ident())
            return original(*args)  # type: ignore[arg-type]

        detokenize._parse = spy  # type: ignore[assignment]
        try:
            grid = np.zeros((4, 4), dtype=int).tolist()
            response = client.post("/v1/detokenize/batch", json={"batch": [grid]})
        finally:
            detokenize._parse = original
        assert response.status_code == 200
        # TestClient runs the app's event loop on a thread of its own; the parse ran elsewhere.
        assert loop_thread and loop_thread[0] != client.portal.call(threading.get_ident)  # type: ignore[union-attr]
    time.sleep(0)


DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "default"


@pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="no models/default")
def test_the_charge_covers_what_a_larger_pass_takes() -> None:
    import torch

    from service.budget import measure_peak

    settings = make_settings(DEFAULT_MODEL, torch_threads=1)
    app = create_app(settings)
    with TestClient(app):
        served = app.state.service.models["default"]
        image = torch.zeros(1, 3, 512, 512, dtype=torch.uint8)  # 4x the probe's pixels
        _, encode = measure_peak(lambda: served.backend.encode(image))
        codes = torch.zeros(1, 64, 64, dtype=torch.int64)
        _, decode = measure_peak(lambda: served.backend.decode(codes))
    assert served.cost.encode_per_pixel * 512**2 >= encode > 0
    assert served.cost.decode_per_pixel * 512**2 >= decode > 0


def test_passes_and_the_process_peak_are_exported(app_client: TestClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    files = {"files": ("a.png", encode_file(random_image(32, 32)), "image/png")}
    assert app_client.post("/v1/tokenize", files=files).status_code == 200
    metrics = {
        s.name: s
        for family in text_string_to_metric_families(app_client.get("/metrics").text)
        for s in family.samples
    }
    count = "vq_pass_bytes_per_pixel_count"
    assert any(
        s.name == count and s.labels.get("op") == "tokenize" and s.value >= 1
        for family in text_string_to_metric_families(app_client.get("/metrics").text)
        for s in family.samples
    )
    peak = metrics["vq_resident_memory_peak_bytes"].value
    assert peak >= metrics["vq_resident_memory_bytes"].value > 0
