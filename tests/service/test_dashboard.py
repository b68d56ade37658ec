"""The dashboard as a browser renders it: labelled tables, charts, empty states, the fold."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import vq
from service.client import Client
from tests.service.browser import dump_dom, screenshot
from tests.service.helpers import LiveServer, random_image, start_server, stop_server

WIDE_K = 15360  # the shipped default's codebook size: the heatmap bins it


@pytest.fixture(scope="module")
def two_models(
    artifact_dir: Path, fsq_artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """``busy`` gets traffic (three requests, a second apart: several history points);
    ``idle`` gets none; ``wide`` (15,360 codes) one 64x64 image (256 tokens)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    wide = tmp / "wide"
    levels = [8, 8, 8, 6, 5]
    cfg = vq.VQVAEConfig(
        f=4,
        widths=(8, 8, 8),
        num_res_blocks=0,
        quantizer=vq.QuantizerConfig(kind="fsq", codebook_size=WIDE_K, levels=levels),
    )
    vq.save_tokenizer(vq.VQVAE(cfg), wide, metrics={"lpips": 0.4567})  # val/lpips, exported
    (wide / "card.md").write_text("# wide\n\nKodak: 24.6 dB\n", encoding="utf-8")
    server = start_server(
        [
            "--model",
            f"busy={artifact_dir}",
            "--model",
            f"idle={fsq_artifact_dir}",
            "--model",
            f"wide={wide}",
        ],
        tmp / "vq-serve.log",
    )
    try:
        with Client(server.url) as client:
            client.tokenize([random_image(64, 64, seed=9)], model="wide")
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
    # The training card says where its figures come from, and links the model card (if any)
    # for the full-image ones.
    for card in (busy, _card(dom, "wide")):
        note = _table(card, "training-card")
        assert "held-out crops" in note and "not full images" in note
    assert 'href="v1/models/wide/card"' in _card(dom, "wide") and "Kodak" in _card(dom, "wide")
    assert "/card" not in busy
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


def expected_coverage(k: int, n: int) -> float:
    """Codes hit on average by n uniform draws from k: k (1 - (1 - 1/k)^n)."""
    return k * (1.0 - (1.0 - 1.0 / k) ** n)


def _stat(card: str, key: str) -> str:
    cell = re.search(rf'data-stat="{key}">([^<]*)<', card)
    assert cell, card[:3000]
    return cell.group(1)


def test_served_traffic_says_what_the_window_can_reach(
    two_models: LiveServer, tmp_path: Path
) -> None:
    """A window that is still filling: the table shows what n uniform draws would hit, calls
    codes without a hit "not yet seen" (not dead), and the note explains the numbers."""
    dom = dump_dom(f"{two_models.url}/", tmp_path / "profile", budget_ms=6000)
    wide = _card(dom, "wide")
    n = 256  # one 64x64 image at f = 4
    assert _stat(wide, "window_tokens").startswith("256 / ") and "filling" in wide
    reach = expected_coverage(WIDE_K, n) / WIDE_K
    assert _stat(wide, "reachable") == f"{100 * reach:.1f} % (at most {100 * n / WIDE_K:.1f} %)"
    assert 'data-for="dead_codes">not yet seen<' in wide and ">dead codes<" not in wide
    # The row shows /usage's unseen_codes while the window fills (dead_codes is 0 then).
    with Client(two_models.url) as client:
        usage = client.usage("wide")
    assert usage["dead_codes"] == 0 and usage["unseen_codes"] > 0
    assert _stat(wide, "dead_codes") == f"{usage['unseen_codes']:,} / {WIDE_K:,}"
    note = _stat(wide, "reach_note")
    assert f"would hit {round(expected_coverage(WIDE_K, n)):,} of them" in note
    assert "not yet seen" in note
    # The heatmap bins 15,360 codes into 15-code cells (1,024 cells), about 320 px square,
    # and says so; the small codebook keeps one cell per code.
    heat = re.search(r'<canvas class="usage-heatmap"[^>]*>', wide)
    assert heat, wide[-3000:]
    assert 'data-bin-size="15"' in heat.group(0) and 'data-cells="1024"' in heat.group(0)
    assert "each cell: 15 consecutive code ids" in wide and "white: not yet seen" in wide
    assert re.search(r'class="usage-heatmap"[^>]*data-bin-size="1"', _card(dom, "busy"))
    nonzero = re.search(r'data-nonzero-bins="(\d+)"', heat.group(0))
    assert nonzero and 0 < int(nonzero.group(1)) <= n


def test_heatmap_of_a_large_codebook_is_drawn_large(two_models: LiveServer, tmp_path: Path) -> None:
    """The binned heatmap of 15,360 codes is drawn at >= 300 px (it was ~130 px)."""
    dom = dump_dom(f"{two_models.url}/", tmp_path / "profile", budget_ms=6000)
    heat = re.search(
        r'<canvas class="usage-heatmap"[^>]*width="(\d+)" height="(\d+)"', _card(dom, "wide")
    )
    assert heat, _card(dom, "wide")[-2000:]
    assert int(heat.group(2)) >= 300 + 40


def test_tryout_shows_full_size_reconstruction_psnr_bpp_and_grid(
    two_models: LiveServer, tmp_path: Path
) -> None:
    """/?tryout=sample runs the 256x256 sample through the first model (``busy``: 64 codes,
    f = 4): original and reconstruction at full size, PSNR, bits per pixel, token grid."""
    dom = dump_dom(f"{two_models.url}/?tryout=sample", tmp_path / "profile", budget_ms=10000)
    section = re.search(r'<section id="tryout"[^>]*>', dom)
    assert section and 'data-status="done"' in section.group(0), dom[:4000]
    stats = re.search(r'<p id="tryout-stats"[^>]*>', dom)
    assert stats, dom[:4000]
    tag = stats.group(0)
    assert 'data-grid="64x64"' in tag
    bpp = float(re.search(r'data-bpp="([\d.]+)"', tag).group(1))  # type: ignore[union-attr]
    assert bpp == pytest.approx(6 / 16, abs=1e-4)  # log2(64) bits per 4x4 pixels
    psnr = float(re.search(r'data-psnr="([\d.]+)"', tag).group(1))  # type: ignore[union-attr]
    assert 3.0 < psnr < 60.0 and 'data-psnr-exact="true"' in tag  # untrained model, 256 = 64 f
    assert "bits per pixel" in dom and "token grid 64×64" in dom
    # The default zoom fits the panel and never enlarges: the 256-px sample fits, so it is
    # shown at its own size, not as a 128 px thumbnail.
    assert re.search(r'data-output-shown="256x256"', section.group(0)), section.group(0)
    assert re.search(r'id="tryout-output"[^>]*data-zoom="fit 1\.000"', dom), dom[:4000]
    assert "Reading: the closer the reconstruction" in dom


def test_a_full_window_calls_unhit_codes_dead(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the window holds its capacity, codes without a hit are dead, and the note and
    the heatmap say so (a 64-token window: one 32x32 image at f = 4)."""
    monkeypatch.setenv("VQ_USAGE_WINDOW", "64")
    server = start_server(["--model", f"full={artifact_dir}"], tmp_path / "vq-serve.log")
    try:
        with Client(server.url) as client:
            client.tokenize([random_image(32, 32, seed=1)], model="full")
        card = _card(dump_dom(f"{server.url}/", tmp_path / "profile", budget_ms=6000), "full")
    finally:
        stop_server(server.process)
    assert 'data-filling="false"' in card
    assert 'data-for="dead_codes">dead codes<' in card and "not yet seen" not in card
    assert _stat(card, "reach_note").startswith("The window is full (64 tokens)")
    assert "pink: no hit in the full window" in card


def test_the_training_card_shows_lpips_when_the_artifact_has_it(
    two_models: LiveServer, tmp_path: Path
) -> None:
    dom = dump_dom(f"{two_models.url}/", tmp_path / "profile", budget_ms=6000)
    assert "LPIPS (VGG)" in _table(_card(dom, "wide"), "training-card")
    assert "0.457" in _table(_card(dom, "wide"), "training-card")
    assert "LPIPS" not in _table(_card(dom, "busy"), "training-card")  # psnr only
