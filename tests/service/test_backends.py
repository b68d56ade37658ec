"""Service backends (VQ_BACKEND): onnxruntime serves the same codes and images as torch fp32
through the same API; bad or unavailable backends stop start-up with a clear message. Hub
repo ids as models (downloads monkeypatched: no network in tests)."""

from __future__ import annotations

import base64
import io
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

from service.app import create_app
from service.cli import build_parser, main, settings_from_args
from service.loader import StartupError, check_backend_available, check_models
from service.settings import Settings
from tests.service.helpers import encode_file, make_settings

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MODELS = ["default", "fsq"]  # the tiny VQ and FSQ artifacts of conftest.py


def photo(side: int = 256) -> np.ndarray:
    return skdata.astronaut()[:side, 128 : 128 + side].copy()  # (side, side, 3) uint8


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def clients(artifact_dir: Path, fsq_artifact_dir: Path) -> Iterator[dict[str, TestClient]]:
    """One app per backend, serving the same two artifacts (torch at fp32)."""
    apps = {}
    for backend, precision in (("torch", "fp32"), ("onnxruntime", None)):
        settings = make_settings(
            artifact_dir, backend=backend, precision=precision, torch_threads=1
        )
        settings.models["fsq"] = str(fsq_artifact_dir)
        apps[backend] = TestClient(create_app(settings), raise_server_exceptions=False)
    with apps["torch"], apps["onnxruntime"]:
        yield apps


def tokenize(client: TestClient, model: str, image: np.ndarray) -> np.ndarray:
    files = [("files", ("photo.png", encode_file(image), "image/png"))]
    response = client.post("/v1/tokenize", params={"model": model}, files=files)
    assert response.status_code == 200, response.text
    return np.array(response.json()["results"][0]["codes"])


@pytest.mark.parametrize("model", MODELS)
def test_onnxruntime_tokenizes_a_photo_like_torch_fp32(
    clients: dict[str, TestClient], model: str
) -> None:
    image = photo()
    torch_codes = tokenize(clients["torch"], model, image)
    onnx_codes = tokenize(clients["onnxruntime"], model, image)
    assert onnx_codes.shape == torch_codes.shape == (64, 64)
    # Only (near-)equidistant codes may differ: the two sum the same products in other orders.
    assert float(np.mean(onnx_codes == torch_codes)) >= 0.999


@pytest.mark.parametrize("model", MODELS)
def test_onnxruntime_detokenizes_like_torch_fp32(
    clients: dict[str, TestClient], model: str
) -> None:
    grids = [tokenize(clients["torch"], model, photo()).tolist()]
    grids.append(np.random.default_rng(1).integers(0, 64, size=(5, 7)).tolist())
    images = {}
    for backend, client in clients.items():
        response = client.post("/v1/detokenize/batch", json={"model": model, "batch": grids})
        assert response.status_code == 200, response.text
        images[backend] = [
            np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
            for png in response.json()["images"]
        ]
    for a, b in zip(images["torch"], images["onnxruntime"], strict=True):
        assert a.shape == b.shape
        assert psnr(a, b) >= 50.0


def test_onnxruntime_reports_itself_and_counts_usage(clients: dict[str, TestClient]) -> None:
    client = clients["onnxruntime"]
    info = client.get("/v1/models/default").json()
    assert (info["backend"], info["precision"]) == ("onnxruntime", "fp32")
    assert clients["torch"].get("/v1/models/default").json()["backend"] == "torch"
    before = client.get("/v1/models/default/usage").json()["tokens_seen"]
    tokenize(client, "default", photo(64))
    usage = client.get("/v1/models/default/usage").json()
    assert usage["tokens_seen"] == before + 16 * 16
    assert sum(usage["histogram"]) == usage["window_tokens"] > 0


def test_onnx_graphs_in_the_artifact_directory_are_used(artifact_dir: Path, tmp_path: Path) -> None:
    from train.export import export_onnx_from

    served = tmp_path / "tok"
    shutil.copytree(artifact_dir, served)
    export_onnx_from(served, served)
    settings = make_settings(served, backend="onnxruntime", torch_threads=1)
    with TestClient(create_app(settings)) as client:
        backend = client.app.state.service.models["default"].backend  # type: ignore[attr-defined]
        assert str(served) in backend.source
        assert tokenize(client, "default", photo(32)).shape == (8, 8)


def test_float_input_graphs_are_refused_naming_the_fix(artifact_dir: Path, tmp_path: Path) -> None:
    from train.export import export_onnx_from

    served = tmp_path / "tok"
    shutil.copytree(artifact_dir, served)
    export_onnx_from(served, served, input_dtype="float")
    app = create_app(make_settings(served, backend="onnxruntime"))
    with pytest.raises(StartupError, match="not uint8 images; re-export"), TestClient(app):
        pass


def _swap_encoder(served: Path, foreign: Path, how: str) -> None:
    """Put another model's encoder.onnx into ``served`` by copy or by a link out of it."""
    (served / "encoder.onnx").unlink()
    if how == "copy":
        shutil.copy(foreign / "encoder.onnx", served / "encoder.onnx")
    else:
        (served / "encoder.onnx").symlink_to(foreign / "encoder.onnx")


@pytest.mark.parametrize(
    ("how", "message"),
    [("copy", r"encoder\.onnx is damaged"), ("symlink", r"encoder\.onnx is a symbolic link")],
)
def test_a_foreign_onnx_graph_is_refused(
    artifact_dir: Path, fsq_artifact_dir: Path, tmp_path: Path, how: str, message: str
) -> None:
    from train.export import export_onnx_from

    served, foreign = tmp_path / "tok", tmp_path / "other"
    shutil.copytree(artifact_dir, served)
    export_onnx_from(served, served)
    export_onnx_from(fsq_artifact_dir, foreign)
    _swap_encoder(served, foreign, how)
    app = create_app(make_settings(served, backend="onnxruntime", torch_threads=1))
    with pytest.raises(StartupError, match=message), TestClient(app):
        pass


def test_unlisted_onnx_graphs_need_allow_unverified(artifact_dir: Path, tmp_path: Path) -> None:
    from train.export import export_onnx_from

    served = tmp_path / "tok"
    shutil.copytree(artifact_dir, served)
    export_onnx_from(artifact_dir, tmp_path / "graphs")  # not into the artifact: unrecorded
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(tmp_path / "graphs" / name, served / name)
    app = create_app(make_settings(served, backend="onnxruntime", torch_threads=1))
    unlisted = r"encoder\.onnx is not listed in config\.json"
    with pytest.raises(StartupError, match=unlisted), TestClient(app):
        pass
    settings = make_settings(served, backend="onnxruntime", torch_threads=1, allow_unverified=True)
    with TestClient(create_app(settings)) as client:
        assert tokenize(client, "default", photo(32)).shape == (8, 8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backend": "tensorrt"}, r"backend='tensorrt' is not allowed.*torch.*onnxruntime"),
        ({"backend": "onnxruntime", "precision": "bf16"}, "bf16.*not allowed with backend"),
        ({"backend": "onnxruntime", "device": "cuda"}, "cuda.*not allowed with backend"),
    ],
)
def test_bad_backend_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**overrides)


def test_backend_from_the_environment_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().backend == "torch"
    monkeypatch.setenv("VQ_BACKEND", "ONNXRuntime")
    assert Settings().backend == "onnxruntime"
    args = build_parser().parse_args(["--backend", "torch"])
    assert settings_from_args(args).backend == "torch"  # the flag wins


def test_bad_backend_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--backend", "tensorrt"])
    assert exit_info.value.code == 2
    assert "backend='tensorrt' is not allowed" in capsys.readouterr().err


def test_missing_onnxruntime_stops_start_up_naming_the_fix(
    artifact_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(StartupError, match="pip install onnxruntime"):
        check_backend_available(make_settings(artifact_dir, backend="onnxruntime"))
    check_backend_available(make_settings(artifact_dir))  # torch needs nothing more
    with pytest.raises(SystemExit) as exit_info:
        main(["--backend", "onnxruntime", "--model", f"default={artifact_dir}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "pip install onnxruntime" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- Hub repo ids


def hub_snapshot(artifact_dir: Path, cache: Path) -> Path:
    """The tiny artifact laid out as huggingface_hub's cache keeps a snapshot: the files are
    links to ../../blobs/ (https://huggingface.co/docs/huggingface_hub/guides/manage-cache)."""
    repo = cache / "models--someone--tiny-tokenizer"
    snapshot = repo / "snapshots" / "0123abcd"
    if not snapshot.exists():
        (repo / "blobs").mkdir(parents=True)
        snapshot.mkdir(parents=True)
        for i, file in enumerate(sorted(artifact_dir.iterdir())):
            shutil.copy(file, repo / "blobs" / f"blob{i}")
            (snapshot / file.name).symlink_to(Path("../../blobs") / f"blob{i}")
    return snapshot


@pytest.fixture
def hub(
    monkeypatch: pytest.MonkeyPatch, artifact_dir: Path, tmp_path: Path
) -> list[dict[str, Any]]:
    """snapshot_download replaced: it records its calls and 'downloads' the tiny artifact."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(hub_snapshot(artifact_dir, tmp_path / "hub-cache"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    return calls


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_hub_repo_id_is_served(hub: list[dict[str, Any]], backend: str) -> None:
    settings = Settings(models="default=someone/tiny-tokenizer", backend=backend)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models/default").json()["codebook_size"] == 64
        assert tokenize(client, "default", photo(32)).shape == (8, 8)
    assert {call["repo_id"] for call in hub} == {"someone/tiny-tokenizer"}


def test_vq_serve_fetches_a_hub_id_before_it_starts(
    hub: list[dict[str, Any]], artifact_dir: Path
) -> None:
    check_models(Settings(models=f"default=someone/tiny-tokenizer,local={artifact_dir}"))
    assert [call["repo_id"] for call in hub] == ["someone/tiny-tokenizer"]


def test_a_local_path_that_exists_wins_over_a_repo_id(
    hub: list[dict[str, Any]], artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(artifact_dir, tmp_path / "someone" / "tiny-tokenizer")
    with TestClient(create_app(Settings(models="default=someone/tiny-tokenizer"))) as client:
        assert client.get("/v1/models/default").status_code == 200
    assert hub == []


def test_an_offline_hub_id_stops_start_up_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    # Offline mode is huggingface_hub's own switch: no request leaves the process.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "default=nobody/not-cached"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "model 'default'" in err and "offline and not in the local cache" in err
    assert "Traceback" not in err
    # The same through create_app (no CLI): the lifespan fails with that message.
    with (
        pytest.raises(StartupError, match="offline"),
        TestClient(create_app(Settings(models="default=nobody/not-cached"))),
    ):
        pass
