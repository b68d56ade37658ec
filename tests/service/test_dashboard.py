"""The dashboard as a browser renders it: labelled tables, charts, empty states, the fold."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.client import Client
from tests.service.browser import dump_dom, screenshot
from tests.service.helpers import LiveServer, random_image, start_server, stop_server


@pytest.fixture(scope="module")
def two_models(
    artifact_dir: Path, fsq_artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """``busy`` gets traffic (three requests, a second apart: several history points);
    ``idle`` gets none."""
    log = tmp_path_factory.mktemp("dashboard") / "vq-serve.log"
    server = start_server(
        ["--model", f"busy={artifact_dir}", "--model", f"idle={fsq_artifact_dir}"], log
    )
    try:
        with Client(server.url) as client:
            for seed in range(3):
                client.tokenize([random_image(32, 32, seed=seed)], model="busy")
                if seed < 2:
                    time.sleep(1.05)
        yield server
    finally:
        stop_server(server.process)


def _card(dom: str, name: str) -> str:
    card = re.search(rf'<article[^>]*data-model="{name}"[^>]*>.*?</article>', dom, re.S)
    assert card, dom[:3000]
    return card.group(0)


def _table(card: str, cls: str) -> str:
    table = re.search(rf'<table class="{cls}">.*?</table>', card, re.S)
    assert table, card[:3000]
    return table.group(0)


def test_cards_tables_charts_and_empty_states(two_models: LiveServer, tmp_path: Path) -> None:
    dom = dump_dom(f"{two_models.url}/", tmp_path / "profile", budget_ms=6000)
    busy, idle = _card(dom, "busy"), _card(dom, "idle")
    for card in (busy, idle):
        # Two labelled tables: what the artifact says, and what this service has seen.
        training, live = _table(card, "training-card"), _table(card, "live-traffic")
        assert "<caption>Training card" in training and "config.json" in training
        assert "<caption>Served traffic" in live
        assert "data-stat" not in training and 'data-stat="tokens_seen"' in live
    assert "12.50 dB" in _table(busy, "training-card")  # the tiny artifact's card: psnr 12.5
    assert re.search(r'data-stat="tokens_seen">[1-9]', busy)
    assert re.search(r'data-stat="tokens_seen">0<', idle)

    # No traffic: each chart says so (and is not drawn as a solid square of dead codes).
    notes = lambda card: re.findall(r'<div class="no-traffic"( hidden(?:="")?)?>', card)  # noqa: E731
    assert len(notes(idle)) == 3 and not any(notes(idle)), idle[-2000:]
    assert len(notes(busy)) == 3 and all(notes(busy)), busy[-2000:]
    assert re.search(r'class="usage-heatmap"[^>]*data-nonzero-bins="0"', idle)
    bins = re.search(r'class="usage-heatmap"[^>]*data-nonzero-bins="(\d+)"', busy)
    assert bins and int(bins.group(1)) > 0
    assert re.search(r'class="usage-rank"[^>]*data-scale="log"', busy)
    points = re.search(r'class="usage-history"[^>]*data-points="(\d+)"', busy)
    assert points and int(points.group(1)) >= 2, busy[-2000:]
    assert re.search(r'class="usage-history"[^>]*data-points="0"', idle)


@pytest.mark.parametrize("size", [(1280, 800), (1024, 700)])
def test_tryout_is_above_the_fold(
    two_models: LiveServer, tmp_path: Path, size: tuple[int, int]
) -> None:
    dom = dump_dom(f"{two_models.url}/", tmp_path / "profile", size=size)
    assert dom.index('<section id="tryout"') < dom.index('<section id="models-section"')
    bottom = re.search(r'data-tryout-bottom="(\d+)"', dom)
    height = re.search(r'data-viewport-height="(\d+)"', dom)
    assert bottom and height, dom[:2000]
    # Headless Chromium's viewport is the window less ~150 px of emulated browser chrome.
    viewport = int(height.group(1))
    assert size[1] - 250 <= viewport <= size[1]
    assert 0 < int(bottom.group(1)) <= viewport


def test_screenshot_shows_the_charts(two_models: LiveServer, tmp_path: Path) -> None:
    """The first screenful, as pixels: the busy model's rank plot and usage line are drawn
    in the usage blue (#2f6fde), which nothing else on the page uses."""
    from PIL import Image

    out = screenshot(
        f"{two_models.url}/", tmp_path / "dashboard.png", tmp_path / "profile", size=(1280, 1000)
    )
    with Image.open(out) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    blue = (np.abs(rgb - np.array([47, 111, 222])).sum(axis=2) < 30).sum()
    assert blue > 300, blue
