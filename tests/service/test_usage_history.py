"""Usage over time: bounded memory, the whole uptime, the latest state last."""

from __future__ import annotations

import warnings

import pytest

from service.usage_history import UsageHistory
from tests.service.helpers import encode_file, random_image

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


def test_updates_within_an_interval_replace_the_newest_point() -> None:
    history = UsageHistory(100.0, capacity=8, spacing=1.0)
    history.record(100.2, 10, 0.1, 5.0)
    history.record(100.9, 20, 0.2, 6.0)  # same interval: replaces
    history.record(101.3, 30, 0.3, 7.0)  # a new interval
    history.record(101.5, 40, 0.4, 8.0)
    assert [(p.t, p.tokens_seen) for p in history.points()] == [
        (pytest.approx(0.9), 20),
        (pytest.approx(1.5), 40),
    ]


@pytest.mark.parametrize("capacity", [2, 8, 256])
def test_memory_is_bounded_and_the_series_spans_the_whole_uptime(capacity: int) -> None:
    history = UsageHistory(0.0, capacity=capacity, spacing=1.0)
    steps = 20 * capacity
    for i in range(1, steps + 1):  # one update per 0.5 s for 10 * capacity seconds
        history.record(i * 0.5, i, i / steps, float(i))
        assert len(history.points()) <= capacity + 1
    points = history.points()
    assert points[0].t <= 2 * history.spacing  # still starts near the beginning
    assert points[-1].t == pytest.approx(steps * 0.5) and points[-1].tokens_seen == steps
    assert all(a.t < b.t for a, b in zip(points, points[1:], strict=False))
    assert history.spacing >= steps * 0.5 / (capacity + 1)  # coarsened as uptime grew


@pytest.mark.parametrize(("capacity", "spacing"), [(3, 1.0), (0, 1.0), (4, 0.0)])
def test_bad_arguments_raise(capacity: int, spacing: float) -> None:
    with pytest.raises(ValueError, match="capacity|spacing"):
        UsageHistory(0.0, capacity=capacity, spacing=spacing)


def test_history_endpoint_follows_tokenize_traffic(app_client: TestClient) -> None:
    before = app_client.get("/v1/models/fsq/usage/history")
    assert before.status_code == 200
    body = before.json()
    assert body["model"] == "fsq" and body["spacing_s"] > 0
    n = len(body["points"])
    files = [("files", ("a.png", encode_file(random_image(8, 8)), "image/png"))]
    assert app_client.post("/v1/tokenize?model=fsq", files=files).status_code == 200
    points = app_client.get("/v1/models/fsq/usage/history").json()["points"]
    usage = app_client.get("/v1/models/fsq/usage").json()
    assert 1 <= len(points) <= n + 1
    last = points[-1]
    assert last["tokens_seen"] == usage["tokens_seen"] > 0
    assert last["window_usage"] == usage["window_usage"]
    assert last["perplexity"] == pytest.approx(usage["perplexity"])
    assert app_client.get("/v1/models/nope/usage/history").status_code == 404
