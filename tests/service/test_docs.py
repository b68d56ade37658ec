"""/docs (Swagger UI) and /redoc work offline: their assets come from the app itself."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from tests.service.browser import dump_dom
from tests.service.helpers import LiveServer

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

PAGES = ("/docs", "/redoc")


@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_load_only_local_assets(app_client: TestClient, page: str) -> None:
    response = app_client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html)
    scripts = re.findall(r'<script[^>]+src=["\']([^"\']+)["\']', html)
    assert scripts, html  # the page's code is a script file, so it must be one of ours
    assert not [r for r in refs if re.match(r"^(https?:)?//", r)], refs  # nothing remote
    for ref in refs:
        asset = app_client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 1000, ref
    assert "/openapi.json" in html


@pytest.mark.parametrize(
    ("page", "marker"),
    [
        ("/docs", r'class="[^"]*opblock-summary-path[^"]*"[^>]*>.*?/v1/tokenize'),
        ("/redoc", r"/v1/tokenize"),
    ],
)
def test_docs_pages_render_in_headless_chromium(
    live_server: LiveServer, tmp_path: Path, page: str, marker: str
) -> None:
    """The rendered page (after its scripts ran, with no network) shows the API's title
    and its operations, not a blank page."""
    dom = dump_dom(f"{live_server.url}{page}", tmp_path / "profile", budget_ms=8000)
    assert "vq-tokenizer" in dom
    assert re.search(marker, dom, re.S), re.sub(r"\s+", " ", dom)[:3000]
    for path in ("/v1/detokenize", "/v1/models/{name}/usage", "/healthz"):
        assert path in dom, path
    assert "Images -&gt; code grids" in dom or "Images -> code grids" in dom
