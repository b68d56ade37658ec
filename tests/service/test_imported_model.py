"""The service serves an imported (vq-import) VQGAN-family model like one of ours."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vq
from service.app import create_app
from tests.service.conftest import TestClient
from tests.service.helpers import encode_file, make_settings, random_image
from vq.importer import import_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "llamagen"
    return import_checkpoint("llamagen", FIXTURES / "llamagen_vq_tiny.pt", out)


@pytest.fixture(scope="module")
def client(imported: Path) -> Iterator[TestClient]:
    # The VQGAN layout has attention, whose memory grows faster than the pixel count: the
    # start-up check would refuse the default 2048-px sides under the default budget.
    settings = make_settings(imported, max_image_side=1024)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_imported_model_tokenizes_detokenizes_and_reports_usage(
    client: TestClient, imported: Path
) -> None:
    tok = vq.load_tokenizer(imported)
    image = random_image(32, 48, seed=3)
    files = [("files", ("a.png", encode_file(image), "application/octet-stream"))]
    response = client.post("/v1/tokenize", files=files)
    assert response.status_code == 200, response.text
    codes = response.json()["results"][0]["codes"]
    expected = tok.encode(torch.from_numpy(image.copy()).permute(2, 0, 1)[None])[0].tolist()
    assert codes == expected
    png = client.post("/v1/detokenize", json={"codes": codes})
    assert png.status_code == 200, png.text
    decoded = np.asarray(Image.open(io.BytesIO(png.content)))
    assert decoded.shape == (32, 48, 3)
    info = client.get("/v1/models/default").json()
    assert info["codebook_size"] == 256
    usage = client.get("/v1/models/default/usage").json()
    assert usage["tokens_seen"] == len(codes) * len(codes[0]) == (32 // 4) * (48 // 4)
