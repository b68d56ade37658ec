"""API keys (service/auth.py): every route that spends compute or tells about the models
answers 401 without a valid key, the probes stay open, /metrics has keys of its own, keys
come from settings or a file of digests, and no key reaches a log."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.auth import digest as key_digest
from service.auth import is_loopback, matches, read_key_file
from service.cli import open_bind_warning
from service.client import Client, ServiceError
from service.settings import Settings
from tests.service.helpers import make_settings

KEY = "k-3f9a1c7e0b"
OTHER_KEY = "k-second-key"
METRICS_KEY = "m-scraper-key"
OPEN = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def keyed(artifact_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(artifact_dir, api_keys=[KEY, OTHER_KEY], metrics_keys=[METRICS_KEY])
    with TestClient(create_app(settings)) as client:
        yield client


def operations(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation in the OpenAPI schema."""
    schema = client.get("/openapi.json").json()
    return [
        (method.upper(), path.replace("{name}", "default"))
        for path, item in schema["paths"].items()
        for method in item
    ]


def assert_unauthorized(response: object) -> None:
    assert response.status_code == 401, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["code"] == "unauthorized" and body["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")  # type: ignore[attr-defined]


def test_every_protected_route_in_the_schema_needs_a_key(keyed: TestClient) -> None:
    ops = operations(keyed)
    protected = [(m, p) for m, p in ops if p not in OPEN]
    assert {p for _, p in protected} >= {
        "/v1/tokenize",
        "/v1/detokenize",
        "/v1/detokenize/batch",
        "/v1/models",
        "/v1/models/default",
        "/v1/models/default/usage",
        "/v1/models/default/usage/history",
    }
    for method, path in protected:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key"},
            {"Authorization": f"Bearer {KEY[:-1]}"},  # a prefix of a valid key
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": "Bearer "},
            {"Authorization": f"Bearer {METRICS_KEY}"},  # the metrics key opens /metrics only
        ):
            response = keyed.request(method, path, headers=headers)
            assert_unauthorized(response)
        for key in (KEY, OTHER_KEY):
            response = keyed.request(method, path, headers={"Authorization": f"Bearer {key}"})
            assert response.status_code != 401, (method, path, response.text)


def test_the_schema_says_which_routes_need_a_key(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for operation in item.values():
            keyed_op = "security" in operation
            assert keyed_op == (path not in {"/healthz", "/readyz"}), path
            assert ("401" in operation["responses"]) == keyed_op, path


def test_probes_stay_open_and_metrics_take_their_own_key(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 200
    assert keyed.get("/").status_code == 200  # the dashboard page; it asks for the key
    assert_unauthorized(keyed.get("/metrics"))
    assert_unauthorized(keyed.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}))
    metrics = keyed.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert metrics.status_code == 200 and "vq_" in metrics.text


def test_without_keys_nothing_is_keyed(app_client: TestClient) -> None:
    for method, path in operations(app_client):
        assert app_client.request(method, path).status_code != 401, (method, path)
    schema = app_client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})


def test_a_file_of_digests(artifact_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# one per line\n\nsha256:" + hashlib.sha256(KEY.encode()).hexdigest() + "\n")
    assert read_key_file(path) == [key_digest(KEY)]
    settings = make_settings(artifact_dir, api_key_file=path)
    with TestClient(create_app(settings)) as client:
        assert_unauthorized(client.get("/v1/models"))
        ok = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        assert client.get("/metrics").status_code == 200  # open: no metrics_keys


@pytest.mark.parametrize(
    ("text", "word"),
    [
        (KEY + "\n", ":1 is not a key digest"),
        ("sha256:abc\n", ":1 is not a key digest"),
        ("# nothing\n", "holds no key digests"),
    ],
)
def test_a_bad_key_file_is_refused_naming_the_line(tmp_path: Path, text: str, word: str) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ValidationError, match=word):
        Settings(api_key_file=path)
    with pytest.raises(ValidationError, match="api_key_file"):
        Settings(api_key_file=tmp_path / "missing")


def test_keys_from_the_environment_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_API_KEYS", f"{KEY}, {OTHER_KEY},")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == [KEY, OTHER_KEY]
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_matches_every_key_and_nothing_else() -> None:
    digests = [key_digest(KEY), key_digest(OTHER_KEY)]
    assert matches(KEY, digests) and matches(OTHER_KEY, digests)
    for guess in ("", KEY[:-1], KEY + "x", KEY.upper()):
        assert not matches(guess, digests)


def test_no_key_reaches_the_logs(keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        keyed.get("/v1/models", headers={"Authorization": "Bearer a-wrong-guess"})
        keyed.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        keyed.post(
            "/v1/detokenize", json={"codes": "x"}, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert caplog.records
    for text in (KEY, "a-wrong-guess"):
        assert text not in caplog.text


def test_the_client_sends_its_key(keyed: TestClient) -> None:
    with pytest.raises(ServiceError) as refused:
        Client(http=keyed).models()
    assert refused.value.status_code == 401 and refused.value.code == "unauthorized"
    client = Client(http=keyed, api_key=KEY)
    assert [m["name"] for m in client.models()] == ["default"]
    result = client.tokenize([np.zeros((16, 16, 3), dtype=np.uint8)])[0]
    assert client.detokenize(result.codes)[:4] == b"\x89PNG"
    assert "vq_" in client.metrics(key=METRICS_KEY)
    # The passed-in http client carries no key of its own afterwards.
    assert "authorization" not in keyed.headers


@pytest.mark.parametrize(
    ("host", "keys", "warned"),
    [
        ("127.0.0.1", [], False),
        ("::1", [], False),
        ("localhost", [], False),
        ("0.0.0.0", [], True),
        ("::", [], True),
        ("0.0.0.0", [KEY], False),
    ],
)
def test_one_start_up_line_for_an_open_public_bind(
    host: str, keys: list[str], warned: bool
) -> None:
    warning = open_bind_warning(Settings(host=host, api_keys=keys))
    assert (warning is not None) == warned
    if warning is not None:
        assert host in warning and "\n" not in warning and "api-key" in warning
    assert is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")
