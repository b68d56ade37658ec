"""/metrics: Prometheus text that parses, request metrics by route, usage gauges that move."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.service.helpers import encode_file, random_image


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def gauge(samples: dict, name: str, model: str = "default") -> float:  # type: ignore[type-arg]
    return samples[(name, (("model", model),))]


def test_metrics_parse_and_usage_gauges_move_after_traffic(app_client: TestClient) -> None:
    before = scrape(app_client)
    for name in (
        "vq_codebook_window_usage",
        "vq_codebook_perplexity",
        "vq_codebook_dead_codes",
        "vq_codebook_unseen_codes",
    ):
        assert (name, (("model", "fsq"),)) in before  # every served model has its gauges
    images = [encode_file(random_image(32, 32, seed=s)) for s in range(20, 24)]
    files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    assert app_client.post("/v1/tokenize", files=files).status_code == 200
    assert app_client.get("/v1/models/nope").status_code == 404
    after = scrape(app_client)

    assert gauge(after, "vq_codebook_window_usage") > gauge(before, "vq_codebook_window_usage")
    # The window is filling: codes without a hit are unseen, and none is called dead yet.
    assert gauge(after, "vq_codebook_unseen_codes") < gauge(before, "vq_codebook_unseen_codes")
    assert gauge(after, "vq_codebook_dead_codes") == 0
    assert gauge(after, "vq_codebook_perplexity") > 1.0
    assert gauge(after, "vq_codebook_size") == 64

    def labelled(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(labels.items()))

    tokenize_ok = labelled(
        "vq_http_requests_total", endpoint="/v1/tokenize", method="POST", status="200"
    )
    assert after[tokenize_ok] == before.get(tokenize_ok, 0.0) + 1
    not_found = labelled(
        "vq_http_requests_total", endpoint="/v1/models/{name}", method="GET", status="404"
    )
    assert after[not_found] >= 1  # labelled by route template, not by the raw path
    latency = labelled(
        "vq_http_request_duration_seconds_count",
        endpoint="/v1/tokenize",
        method="POST",
        status="200",
    )
    assert after[latency] == after[tokenize_ok]
    tokens = labelled("vq_tokens_served_total", model="default", op="tokenize")
    assert after[tokens] - before.get(tokens, 0.0) == 4 * 8 * 8
    batches = labelled("vq_batch_size_sum", model="default", op="tokenize")
    assert after[batches] - before.get(batches, 0.0) == 4


def test_requests_refused_before_routing_keep_their_endpoint(artifact_dir: Path) -> None:
    from service.app import create_app
    from tests.service.helpers import make_settings

    app = create_app(make_settings(artifact_dir, max_upload_bytes=100))
    with TestClient(app) as client:
        # Refused by the body limit on its Content-Length, before routing.
        response = client.post("/v1/tokenize", content=b"x" * 1000)
        assert response.status_code == 413
        samples = [
            s.labels
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for s in family.samples
            if s.name == "vq_http_requests_total" and s.labels.get("status") == "413"
        ]
    assert samples and samples[0]["endpoint"] == "/v1/tokenize", samples


def test_dead_codes_only_count_in_a_full_window(artifact_dir: Path) -> None:
    """One meaning for dead_codes on /usage and /metrics: no hit in a full window; while the
    window fills, codes without a hit are unseen_codes (and the HELP text says so)."""
    from service.app import create_app
    from tests.service.helpers import make_settings

    app = create_app(make_settings(artifact_dir, usage_window=64))
    with TestClient(app) as client:
        filling = client.get("/v1/models/default/usage").json()
        assert (filling["dead_codes"], filling["unseen_codes"]) == (0, 64)
        image = encode_file(random_image(32, 32, seed=3))  # 64 tokens at f = 4: the window
        assert client.post("/v1/tokenize", files=[("files", ("a.png", image))]).status_code == 200
        full = client.get("/v1/models/default/usage").json()
        used = sum(1 for n in full["histogram"] if n > 0)
        assert full["window_tokens"] == full["window"] == 64
        assert (full["dead_codes"], full["unseen_codes"]) == (64 - used, 0)
        text = client.get("/metrics").text
        metrics = scrape(client)
    assert gauge(metrics, "vq_codebook_dead_codes") == 64 - used
    assert gauge(metrics, "vq_codebook_unseen_codes") == 0
    assert "# HELP vq_codebook_dead_codes Codes with zero hits in the full" in text
    assert "# HELP vq_codebook_unseen_codes Codes with no hit yet while" in text
