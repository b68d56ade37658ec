"""Tokenizer artifacts: a directory with ``config.json`` and ``model.safetensors``.

The artifact is how a trained tokenizer leaves training and the only thing the service
loads (docs/design.md, "Architecture"): JSON plus safetensors, so loading never unpickles and
never imports Lightning. ``load_tokenizer`` checks every file before trusting it and
raises ``ArtifactError`` naming what is wrong.

config.json (format_version 1):
    format_version  1
    model           VQVAEConfig.to_dict(): enough to rebuild the network
    quantizer       summary for readers: kind, codebook_size, code_dim, levels,
                    grad_estimator, codebook
    f, in_channels  downsampling factor and image channels
    image_range     [-1, 1], the float range the network sees (uint8 maps linearly onto it)
    versions        vq-tokenizer, torch, safetensors that wrote the artifact
    created         UTC timestamp, ISO 8601
    metrics         optional, e.g. {"psnr": ..., "ssim": ..., "epoch_usage": ...}
    extra           optional, anything JSON the caller wants to keep
    recommended_precision  optional, "fp32" to keep the Tokenizer off bf16 by default

The ``Tokenizer`` that ``load_tokenizer`` returns lives in ``vq.tokenizer``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vq.model import VQVAE, VQVAEConfig
from vq.pixels import IMAGE_RANGE
from vq.precision import check_precision
from vq.tokenizer import Tokenizer

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ArtifactError(ValueError):
    """A tokenizer artifact is missing, unreadable, or does not match its own config."""


def _package_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with tensor / numpy scalars turned into Python numbers; ValueError if it
    cannot be written as strict JSON (NaN and infinity are not JSON)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}={value} is not finite and cannot be stored in config.json")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(
        f"{where} has type {type(value).__name__}; config.json takes numbers, strings, "
        "booleans, None, lists and dicts"
    )


def _write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename: a crash mid-write
    leaves the previous file (or none), never a half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 files; artifacts are read by other users (a service account,
        # a container's non-root user), so give them the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def artifact_config(
    model: VQVAE,
    *,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config.json content for ``model`` (see the module docstring)."""
    cfg = model.config
    q = cfg.quantizer
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
        "quantizer": {
            "kind": q.kind,
            "codebook_size": model.codebook_size,
            "code_dim": cfg.resolved_code_dim,
            "levels": None if q.levels is None else list(q.levels),
            "grad_estimator": q.grad_estimator if q.kind == "vq" else None,
            "codebook": q.codebook if q.kind == "vq" else None,
        },
        "f": cfg.f,
        "in_channels": cfg.in_channels,
        "image_range": list(IMAGE_RANGE),
        "versions": {
            "vq_tokenizer": _package_version("vq-tokenizer"),
            "torch": torch.__version__,
            "safetensors": _package_version("safetensors"),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if metrics is not None:
        data["metrics"] = _jsonable(dict(metrics), "metrics")
    if extra is not None:
        data["extra"] = _jsonable(dict(extra), "extra")
    return data


def save_tokenizer(
    model: VQVAE,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an artifact directory (created if needed); returns its path.

    All persistent buffers are saved with the parameters, SimVQ's frozen codebook C
    included: it is random at construction, so a model rebuilt without it would
    produce other codes.
    """
    out = Path(out_dir)
    config = artifact_config(model, metrics=metrics, extra=extra)
    # safetensors wants contiguous tensors that share no storage; the copies are small.
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "format_version": str(FORMAT_VERSION)}
    _write_atomically(
        out / WEIGHTS_NAME, lambda p: safetensors.torch.save_file(state, p, metadata=meta)
    )
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    _write_atomically(out / CONFIG_NAME, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return out


def _read_config(root: Path) -> dict[str, Any]:
    path = root / CONFIG_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing: an artifact holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, found {type(data).__name__}")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
        raise ArtifactError(
            f"{path} has format_version={version!r}; this vq-tokenizer reads format_version "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}"
        )
    return data


def _parse_model_config(data: dict[str, Any], path: Path) -> VQVAEConfig:
    if "model" not in data:
        raise ArtifactError(f"{path} has no 'model' section describing the network")
    try:
        cfg = VQVAEConfig.from_dict(data["model"])
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path} 'model' section is invalid: {exc}") from None
    # The top-level summary is what readers (the service's /v1/models) show: it must agree
    # with the config the network is built from.
    for key, value in (("f", cfg.f), ("in_channels", cfg.in_channels)):
        if key in data and data[key] != value:
            raise ArtifactError(
                f"{path} says {key}={data[key]!r} but its model config has {key}={value}"
            )
    return cfg


def _read_weights(root: Path) -> dict[str, torch.Tensor]:
    path = root / WEIGHTS_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{path} is missing: an artifact holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ArtifactError(
            f"{path} could not be read as safetensors (truncated or corrupt file?): {exc}"
        ) from None


def _check_state(state: Mapping[str, torch.Tensor], model: VQVAE, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("shape mismatches", mismatched),
    ):
        if items:
            shown = ", ".join(items[:5]) + (
                f", ... ({len(items)} in all)" if len(items) > 5 else ""
            )
            problems.append(f"{label}: {shown}")
    if problems:
        raise ArtifactError(f"{path} does not match its {CONFIG_NAME}: " + "; ".join(problems))


def load_tokenizer(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    precision: str | None = None,
) -> Tokenizer:
    """Load an artifact directory written by ``save_tokenizer``; ArtifactError if it is
    missing, unreadable, of an unknown format version, or its weights do not fit its config.

    ``precision``: "fp32" or "bf16" (``vq.precision``); None picks bf16 where ``device`` runs
    it natively unless config.json recommends fp32. ``Tokenizer.precision`` says which."""
    if precision is not None:
        check_precision(precision)
    root = Path(path)
    if not root.exists():
        raise ArtifactError(f"artifact directory {root} does not exist")
    if not root.is_dir():
        raise ArtifactError(
            f"{root} is not a directory; an artifact is a directory with {CONFIG_NAME}"
        )
    data = _read_config(root)
    cfg = _parse_model_config(data, root / CONFIG_NAME)
    state = _read_weights(root)
    model = VQVAE(cfg)
    _check_state(state, model, root / WEIGHTS_NAME)
    model.load_state_dict(state, strict=True)
    return Tokenizer(model, data, device, precision)
