"""Hugging Face Hub conventions for artifacts: a model card and repo-id loading.

An artifact directory (config.json + model.safetensors) is laid out as a Hub model repository
already; ``write_model_card`` adds the ``README.md`` whose YAML front matter the Hub reads
(https://huggingface.co/docs/hub/model-cards#model-card-metadata: ``library_name``, ``tags``,
``license``, ``metrics``). ``resolve_artifact`` turns a Hub repo id into a local snapshot with
``huggingface_hub.snapshot_download``; ``push_artifact`` uploads a directory with
``huggingface_hub``. huggingface_hub is imported only inside those two functions, so
``vq`` works without it (and never touches the network unless asked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"
LIBRARY_NAME = "vq-tokenizer"
# Files a tokenizer repository needs; a snapshot downloads nothing else.
REPO_FILES = ("config.json", "model.safetensors", CARD_NAME)
# "owner/name" as the Hub spells repo ids (letters, digits, "-", "_", "."; no "..").
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


class HubError(ValueError):
    """A Hub repo id cannot be resolved (offline, not found, huggingface_hub missing)."""


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def model_card(config: Mapping[str, Any], *, license: str = "mit", note: str | None = None) -> str:
    """README.md text for an artifact's ``config`` (the config.json content)."""
    model = config.get("model", {})
    q = config.get("quantizer", {})
    kind = q.get("kind", "vq")
    arch = config.get("architecture", model.get("architecture", "vqvae"))
    metrics = config.get("metrics") or {}
    tags = ["image-tokenizer", "vector-quantization", arch, kind]
    if q.get("codebook_norm") == "l2":
        tags.append("l2-normalized-codebook")
    front = [
        "---",
        f"library_name: {LIBRARY_NAME}",
        f"license: {license}",
        "tags:",
        *(f"- {t}" for t in tags),
        "metrics:",
        *(f"- {m}" for m in ("psnr", "ssim")),
        "---",
    ]
    body = [
        "",
        f"# Image tokenizer ({arch}, {kind}, {q.get('codebook_size')} codes, f={config.get('f')})",
        "",
        *([note, ""] if note else []),
        "Images (uint8, sides multiples of f) <-> integer code grids of shape (H/f, W/f).",
        "",
        "```python",
        "import vq",
        "",
        'tok = vq.load_tokenizer("path/or/hub-id")  # a local directory or a Hub repo id',
        "codes = tok.encode(images)  # uint8 (B, 3, H, W) -> int64 (B, H/f, W/f)",
        "images = tok.decode(codes)",
        "```",
        "",
        "Serve it: `vq-serve --model NAME=DIR` (DIR: this folder, or NAME=owner/repo for a Hub",
        "repo id; see the vq-tokenizer docs).",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(model, indent=2),
        "```",
    ]
    if metrics:
        body += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        body += [f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, int | float)]
    return "\n".join(front + body) + "\n"


def write_model_card(
    out_dir: str | Path, *, license: str = "mit", base_model_note: str | None = None
) -> Path:
    """Write README.md (the Hub model card) into the artifact ``out_dir``; returns its path."""
    root = Path(out_dir)
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    path = root / CARD_NAME
    path.write_text(model_card(config, license=license, note=base_model_note), encoding="utf-8")
    return path


# The tokenizers shipped in the checkout's models/ (an editable install, as the README's), so
# that "models/default" names the shipped model from any working directory, not a Hub repo.
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"


def shipped_model(name: str) -> Path | None:
    """``SHIPPED_MODELS/<x>`` for ``name`` = "models/<x>" when that artifact exists."""
    parts = Path(name).parts
    if len(parts) != 2 or parts[0] != "models" or Path(name).is_absolute():
        return None
    path = SHIPPED_MODELS / parts[1]
    return path if (path / "config.json").is_file() else None


def resolve_artifact(name: str | Path, revision: str | None = None) -> Path:
    """A local artifact directory for ``name``: the path itself when it exists, else a shipped
    model (``models/default`` from any working directory), else the snapshot of the Hub repo
    ``name`` ("owner/repo"). HubError when the Hub cannot be asked or answers no; ValueError
    (the ``HubError`` base) naming the folder when ``name`` is no repo id and does not exist."""
    path = Path(name)
    if path.exists():
        return path
    shipped = shipped_model(str(name))
    if shipped is not None:
        return shipped
    if not looks_like_repo_id(str(name)):
        raise HubError(
            f"artifact directory {str(name)!r} does not exist (relative paths are read from the "
            f"working directory, {Path.cwd()}); a Hugging Face Hub repo id looks like "
            "'owner/name', without ./, ../ or a leading /"
        )
    try:
        import huggingface_hub  # lazy: an optional dependency, only for Hub ids
    except ImportError:
        raise HubError(
            f"{str(name)!r} is not a local directory and looks like a Hub repo id, but "
            "huggingface_hub is not installed (pip install huggingface_hub)"
        ) from None
    try:
        local = huggingface_hub.snapshot_download(
            repo_id=str(name), revision=revision, allow_patterns=list(REPO_FILES)
        )
    except Exception as exc:  # offline, not found, gated: huggingface_hub has many types
        # LocalEntryNotFoundError: offline (HF_HUB_OFFLINE=1 or no network) and not cached.
        offline = type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
        offline = offline or "connect" in type(exc).__name__.lower()
        hint = (
            " (offline and not in the local cache: fetch it once with network access, or "
            "pass a local artifact directory)"
            if offline
            else ""
        )
        raise HubError(
            f"{str(name)!r} is not a local directory (under the working directory, "
            f"{Path.cwd()}) and could not be fetched from the Hugging Face Hub{hint}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return Path(local)


def push_artifact(out_dir: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload the artifact directory to the Hub repo ``repo_id`` (created if needed); returns
    the commit URL. Authentication is huggingface_hub's (``hf auth login`` / HF_TOKEN)."""
    import huggingface_hub

    api = huggingface_hub.HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(out_dir), repo_type="model")
    return str(info)
