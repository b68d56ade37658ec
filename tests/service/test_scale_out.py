"""Scale-out: several vq-serve processes behind a load balancer. Each process counts its
own traffic and says which process it is; summing their /metrics gives the fleet's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.service.helpers import encode_file, random_image, start_server, stop_server


def _images_total(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vq_images_total" and s.labels == {"model": "default", "op": "tokenize"}:
                return s.value
    return 0.0


def test_two_replicas_report_their_own_process_and_sum(artifact_dir: Path, tmp_path: Path) -> None:
    args = ["--model", f"default={artifact_dir}", "--torch-threads", "1", "--memory-budget", "2G"]
    with ThreadPoolExecutor(2) as pool:  # start both at once
        replicas = list(pool.map(lambda i: start_server(args, tmp_path / f"r{i}.log"), range(2)))
    try:
        files = [("files", ("a.png", encode_file(random_image(8, 8)), "image/png"))]
        sent = [3, 5]  # a round-robin balancer would spread them; here by hand
        for server, n in zip(replicas, sent, strict=True):
            for _ in range(n):
                assert httpx.post(f"{server.url}/v1/tokenize", files=files).status_code == 200
        usages = [httpx.get(f"{s.url}/v1/models/default/usage").json() for s in replicas]
        assert usages[0]["process"] != usages[1]["process"]
        assert [u["process"].rsplit(":", 1)[1] for u in usages] == [
            str(s.process.pid) for s in replicas
        ]
        assert [u["tokens_seen"] for u in usages] == [n * 4 for n in sent]  # 2x2 codes each
        totals = [_images_total(httpx.get(f"{s.url}/metrics").text) for s in replicas]
        assert totals == sent and sum(totals) == sum(sent)  # Prometheus: sum(vq_images_total)
    finally:
        for server in replicas:
            stop_server(server.process)
