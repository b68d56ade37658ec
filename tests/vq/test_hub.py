"""Hugging Face conventions: the model card, Hub-id loading (downloads monkeypatched; no
network in tests), a clear offline error, and push_to_hub handed to huggingface_hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import vq
from vq.hub import model_card, write_model_card

huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = vq.VQVAEConfig(f=4, widths=(8, 8, 8), quantizer=vq.QuantizerConfig(codebook_size=16))
    out = tmp_path_factory.mktemp("hub") / "tok"
    vq.save_tokenizer(vq.VQVAE(cfg), out, metrics={"psnr": 21.5})
    write_model_card(out)
    return out


def front_matter(text: str) -> dict[str, Any]:
    assert text.startswith("---\n")
    data: dict[str, Any] = yaml.safe_load(text.split("---\n")[1])
    return data


def test_model_card_has_the_metadata_the_hub_reads(artifact: Path) -> None:
    meta = front_matter((artifact / "README.md").read_text())
    assert meta["library_name"] == "vq-tokenizer"
    assert meta["license"] == "mit"
    assert {"image-tokenizer", "vqvae", "vq"} <= set(meta["tags"])
    assert meta["metrics"] == ["psnr", "ssim"]
    assert "| psnr | 21.5 |" in (artifact / "README.md").read_text()
    assert (
        "l2-normalized-codebook"
        in front_matter(model_card({"quantizer": {"kind": "vq", "codebook_norm": "l2"}}))["tags"]
    )


def test_load_tokenizer_takes_a_hub_repo_id(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(artifact)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    tok = vq.load_tokenizer("someone/tiny-tokenizer", precision="fp32")
    assert tok.codebook_size == 16
    assert calls[0]["repo_id"] == "someone/tiny-tokenizer"
    assert set(calls[0]["allow_patterns"]) == {"config.json", "model.safetensors", "README.md"}
    # A local directory is never looked up on the Hub.
    calls.clear()
    vq.load_tokenizer(artifact)
    assert calls == []


def test_offline_hub_id_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offline mode is huggingface_hub's own switch: no request leaves the process.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(vq.ArtifactError, match="offline and not in the local cache"):
        vq.load_tokenizer("nobody/not-cached")


def test_missing_local_path_that_is_no_repo_id_stays_a_local_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw))
    monkeypatch.chdir(tmp_path)
    for name in (tmp_path / "a" / "b" / "c", "./models/mine", "../x/y", "runs/a/artifact"):
        with pytest.raises(
            vq.ArtifactError, match=r"does not exist .*working directory.*'owner/name'"
        ):
            vq.load_tokenizer(name)
    assert calls == []  # none was taken for a Hub repo id


def test_shipped_model_loads_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's ``vq.load_tokenizer("models/default")`` outside the checkout's root loads
    the shipped model, not the Hub repo "models/default"."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw))
    monkeypatch.chdir(tmp_path)
    tok = vq.load_tokenizer("models/default", precision="fp32")
    assert tok.codebook_size == 15360 and calls == []
    # A folder of that name in the working directory wins over the shipped one.
    (tmp_path / "models" / "default").mkdir(parents=True)
    with pytest.raises(vq.ArtifactError, match=r"models/default.*config\.json"):
        vq.load_tokenizer("models/default")


def test_save_tokenizer_push_to_hub_uses_huggingface_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    class FakeApi:
        def create_repo(self, **kwargs: Any) -> None:
            seen["create"] = kwargs

        def upload_folder(self, **kwargs: Any) -> str:
            seen["upload"] = kwargs
            seen["files"] = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            return "commit-url"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    cfg = vq.VQVAEConfig(f=4, widths=(8, 8, 8), quantizer=vq.QuantizerConfig(codebook_size=16))
    vq.save_tokenizer(vq.VQVAE(cfg), tmp_path / "out", push_to_hub="me/tok")
    assert seen["create"]["repo_id"] == "me/tok" and seen["create"]["exist_ok"]
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"]
