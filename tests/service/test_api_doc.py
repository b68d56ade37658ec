"""docs/api.md agrees with the code: its samples show the shipped default model, its error
table is the ErrorCode enum (one row, one status per code), and what it says the Docker health
check polls is what it polls."""

from __future__ import annotations

import json
import re
from pathlib import Path

from service.errors import ErrorCode

REPO = Path(__file__).resolve().parents[2]
API = (REPO / "docs" / "api.md").read_text()


def test_samples_show_the_default_model() -> None:
    config = json.loads((REPO / "models" / "default" / "config.json").read_text())
    quantizer = config["quantizer"]
    assert f'"codebook_size": {quantizer["codebook_size"]}' in API
    assert f'"levels": {quantizer["levels"]}' in API
    assert f'"psnr": {config["metrics"]["psnr"]:.2f}' in API
    sizes = {int(n) for n in re.findall(r'"codebook_size": (\d+)', API)}
    assert sizes == {quantizer["codebook_size"]}, sizes


ERRORS = API.split("## Errors", 1)[1].split("## Settings", 1)[0]
ROWS = re.findall(r"^\| (\d{3}) \| `([a-z0-9_]+)` \|", ERRORS, flags=re.M)


def test_each_error_code_has_one_row() -> None:
    codes = [code for _, code in ROWS]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    assert "internal_error" in codes and "internal" not in codes
    prose = re.findall(r"A 500 \(`([a-z_]+)`\)", ERRORS)
    assert prose == ["internal_error"]


def test_the_error_table_is_the_error_code_enum() -> None:
    documented = {code: int(status) for status, code in ROWS}
    assert documented == {code.value: code.status for code in ErrorCode}
    assert documented["body_timeout"] == 408 and documented["timeout"] == 503


def test_the_docker_health_check_is_what_the_dockerfile_polls() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    (polled,) = re.findall(r"HEALTHCHECK[^\n]*\n[^\n]*(/readyz|/healthz)", dockerfile)
    assert f"`HEALTHCHECK` on `{polled}`" in API


def test_the_metrics_table_names_every_exported_metric(app_client: object) -> None:
    """Every metric family /metrics exports has a row in docs/api.md's metrics table."""
    from prometheus_client.parser import text_string_to_metric_families

    text = app_client.get("/metrics").text  # type: ignore[attr-defined]
    families = text_string_to_metric_families(text)
    # prometheus_client's *_created series are timestamps of the families, not metrics.
    names = {f.name for f in families if f.name.startswith("vq_")}
    names = {n for n in names if not n.endswith("_created")}
    table = API.split("| metric | type | labels | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(vq_[a-z_]+)`", table))
    # The parser drops a counter's _total; the table names the series.
    missing = {n for n in names if n not in documented and f"{n}_total" not in documented}
    assert not missing, f"exported but not in docs/api.md's metrics table: {sorted(missing)}"
