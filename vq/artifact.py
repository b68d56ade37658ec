"""Tokenizer artifacts: a directory with ``config.json`` and ``model.safetensors``.

The artifact is how a trained tokenizer leaves training and the only thing the service
loads (docs/design.md, "Architecture"): JSON plus safetensors, so loading never unpickles and
never imports Lightning. ``load_tokenizer`` checks every file before trusting it and
raises ``ArtifactError`` naming what is wrong.

config.json (format_version 1):
    format_version  1
    model           VQVAEConfig.to_dict(): enough to rebuild the network
    quantizer       summary for readers: kind, codebook_size, code_dim, levels,
                    grad_estimator, codebook, codebook_norm
    f, in_channels  downsampling factor and image channels
    architecture    "vqvae" or "vqgan" (absent in older files: "vqvae")
    image_range     [-1, 1], the float range the network sees (uint8 maps linearly onto it)
    versions        vq-tokenizer, torch, safetensors that wrote the artifact
    created         UTC timestamp, ISO 8601
    metrics         optional, e.g. {"psnr": ..., "ssim": ..., "epoch_usage": ...}
    extra           optional, anything JSON the caller wants to keep
    recommended_precision  optional, "fp32" to keep the Tokenizer off bf16 by default
    files           {"model.safetensors": {"sha256": hex digest, "bytes": size}, and
                    "encoder.onnx" / "decoder.onnx" when ``vq.onnx_export`` wrote them into the
                    artifact}. Required: an artifact without it (written before checksums, or
                    with the list removed) is refused unless the caller passes
                    ``allow_unverified=True``, which logs a warning.

model.safetensors metadata: ``model_config_sha256``, the sha256 of the ``model`` section it
was saved with (canonical JSON), so an edit of config.json that still fits the tensor
shapes (a permuted FSQ level list) is refused too; required like ``files``. Every tensor
must have the dtype the model holds (float32 weights; fp16 is refused).

Each listed file is read once into memory, checked against its sha256 and used from those
bytes: the file cannot change between the check and the use.

The ``Tokenizer`` that ``load_tokenizer`` returns lives in ``vq.tokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from vq.atomic import atomic_write_bytes, fsync_path
from vq.config import FSQConfig, VQConfig
from vq.hub import SHIPPED_MODELS
from vq.model import VQVAE, VQVAEConfig
from vq.pixels import IMAGE_RANGE
from vq.precision import check_precision
from vq.tokenizer import Tokenizer

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FILES_KEY = "files"  # config.json: {file name: {"sha256", "bytes"}} of the other files
# model.safetensors metadata: sha256 of the canonical JSON of config.json's "model" section,
# so an edit of the architecture that still fits the tensor shapes is detected.
MODEL_HASH_KEY = "model_config_sha256"
UNVERIFIED_FIX = (
    "re-export it with vq-export (or save_tokenizer) to record checksums, or pass "
    "allow_unverified=True (vq-serve --allow-unverified) to load it unchecked"
)

logger = logging.getLogger(__name__)


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


def quantizer_summary(model: VQVAE) -> dict[str, Any]:
    """config.json's "quantizer" section: what readers (the service's /v1/models) show."""
    cfg = model.config
    q = cfg.quantizer
    vq = q if isinstance(q, VQConfig) else None
    return {
        "kind": q.kind,
        "codebook_size": model.codebook_size,
        "code_dim": cfg.code_dim,
        "levels": list(q.levels) if isinstance(q, FSQConfig) else None,
        "grad_estimator": vq.grad_estimator if vq else None,
        "codebook": vq.codebook if vq else None,
        "codebook_norm": vq.codebook_norm if vq else None,
    }


def artifact_config(
    model: VQVAE,
    *,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    recommended_precision: str | None = None,
) -> dict[str, Any]:
    """The config.json content for ``model`` (see the module docstring)."""
    cfg = model.config
    data: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
        "quantizer": quantizer_summary(model),
        "f": cfg.f,
        "in_channels": cfg.in_channels,
        "architecture": cfg.architecture,
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
    if recommended_precision is not None:
        data["recommended_precision"] = check_precision(recommended_precision)
    return data


def save_tokenizer(
    model: VQVAE,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    recommended_precision: str | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """Write ``model`` as an artifact directory; returns its path.

    ``push_to_hub``: a Hub repo id ("owner/name") to upload the directory to afterwards, with
    its model card (``vq.hub``; needs huggingface_hub and a login).

    All persistent buffers are saved with the parameters, SimVQ's frozen codebook C
    included: it is random at construction, so a model rebuilt without it would
    produce other codes.

    The directory is written whole or not at all (``_replace_dir``): the files go to a
    temporary directory next to ``out_dir``, config.json records their sha256
    (``files``), and the finished directory is renamed into place. A crash at any moment
    leaves the previous artifact, or none, never a half-written one that loads. Files of an
    existing ``out_dir`` that the artifact does not write (a model card) are kept.
    """
    out = Path(out_dir)
    config = artifact_config(
        model, metrics=metrics, extra=extra, recommended_precision=recommended_precision
    )
    # safetensors wants contiguous tensors that share no storage; the copies are small.
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": "pt",
        "format_version": str(FORMAT_VERSION),
        MODEL_HASH_KEY: model_config_sha256(config["model"]),
    }

    def write(tmp: Path) -> None:
        safetensors.torch.save_file(state, tmp / WEIGHTS_NAME, metadata=meta)
        config[FILES_KEY] = {WEIGHTS_NAME: _file_record(tmp / WEIGHTS_NAME)}
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")

    _replace_dir(out, write, written=(CONFIG_NAME, WEIGHTS_NAME))
    if push_to_hub is not None:
        _push(out, push_to_hub)
    return out


def _push(out: Path, repo_id: str) -> None:
    """Upload an artifact with its model card (written if absent) to the Hub."""
    from vq.hub import CARD_NAME, push_artifact, write_model_card

    if not (out / CARD_NAME).exists():
        write_model_card(out)
    push_artifact(out, repo_id)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _replace_dir(out: Path, write: Any, written: tuple[str, ...]) -> None:
    """Build a directory with ``write(tmp)`` and put it at ``out`` in one rename.

    POSIX cannot exchange two directories atomically, so an existing ``out`` is first
    renamed aside and then removed: between the two renames ``out`` is absent (a crash
    there leaves the complete old artifact in ``.NAME.old-*`` next to it), but it is never
    half-written. Leftover temporary directories of crashed saves are removed first.
    """
    out = out.absolute()
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp-"))
    try:
        write(tmp)
        if out.is_dir():
            for kept in out.iterdir():  # e.g. card.md next to the weights
                if kept.name not in written and kept.is_file() and not kept.is_symlink():
                    shutil.copy2(kept, tmp / kept.name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; artifacts are read by others
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
            fsync_path(f)
        fsync_path(tmp)
        old: Path | None = None
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        fsync_path(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_config_sha256(model_section: Mapping[str, Any]) -> str:
    """sha256 of a ``VQVAEConfig.to_dict()`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(model_section, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _regular_file(root: Path, name: str, inside: Path | None = None) -> Path:
    """``root / name`` if it is a regular file inside the artifact; ArtifactError otherwise.

    A symbolic link is followed only when it stays inside the artifact directory (or
    ``inside``: a Hub snapshot's files link to its cache folder's blobs): one pointing
    elsewhere (another model's weights, /dev/zero, a file of the host) is refused.
    """
    path = root / name
    try:
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to((inside or root).resolve()):
                raise ArtifactError(
                    f"{path} is a symbolic link to {target}, outside the artifact directory; "
                    "an artifact's files must lie inside it (copy the file instead of linking it)"
                )
        if not path.exists():
            raise ArtifactError(
                f"{path} is missing: an artifact holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        mode = path.stat().st_mode
    except (OSError, RuntimeError) as exc:  # a link loop, a dangling link, no permission
        raise ArtifactError(
            f"{path} cannot be opened ({exc}); replace it with the regular file it should be"
        ) from None
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{path} is not a regular file")
    return path


def _read_config(root: Path, inside: Path | None = None) -> dict[str, Any]:
    path = _regular_file(root, CONFIG_NAME, inside)
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
    return cfg


def _file_records(
    root: Path, data: Mapping[str, Any], allow_unverified: bool
) -> dict[str, dict[str, Any]] | None:
    """config.json's ``files`` list, checked for shape; None for an artifact without one,
    which only ``allow_unverified`` lets through (with a warning)."""
    config = root / CONFIG_NAME
    files = data.get(FILES_KEY)
    if files is None:
        if not allow_unverified:
            raise ArtifactError(
                f"{config} has no '{FILES_KEY}' checksum list, so its files cannot be "
                f"verified; {UNVERIFIED_FIX}"
            )
        logger.warning("loading %s UNVERIFIED: config.json lists no checksums", root)
        return None
    if not isinstance(files, dict) or WEIGHTS_NAME not in files:
        raise ArtifactError(
            f"{config} '{FILES_KEY}' must map each file name to its sha256 and list {WEIGHTS_NAME}"
        )
    for name, record in files.items():
        if name in (".", "..", CONFIG_NAME) or Path(name).name != name:
            raise ArtifactError(
                f"{config} '{FILES_KEY}' lists {name!r}: expected a file name of the artifact"
            )
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise ArtifactError(f"{config} '{FILES_KEY}' has no sha256 for {name!r}")
    return files


def _read_checked(
    root: Path, name: str, record: Mapping[str, Any] | None, inside: Path | None = None
) -> bytes:
    """The bytes of ``root / name``, read once and checked against ``record`` (size and
    sha256; None: unchecked); ArtifactError naming the file and what is wrong."""
    path = _regular_file(root, name, inside)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path} could not be read: {exc.strerror or exc}") from None
    if record is None:
        return blob
    expected = record.get("bytes", len(blob))
    if expected != len(blob):
        raise ArtifactError(
            f"{path} is damaged: {len(blob)} bytes where {CONFIG_NAME} records "
            f"{expected} (truncated or replaced after export)"
        )
    actual = hashlib.sha256(blob).hexdigest()
    if actual != record["sha256"]:
        raise ArtifactError(
            f"{path} is damaged: its sha256 is {actual} where {CONFIG_NAME} records "
            f"{record['sha256']} (changed after export)"
        )
    return blob


def read_artifact_file(
    root: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    name: str,
    *,
    allow_unverified: bool = False,
) -> bytes:
    """The bytes of another file of a loaded artifact (``encoder.onnx``), checked against the
    ``files`` record of ``metadata`` (the config.json that ``load_tokenizer`` read, so the
    list cannot change in between). A file the list does not name is refused unless
    ``allow_unverified``: it was not written with these weights (a graph of another model)."""
    root = Path(root)
    files = metadata.get(FILES_KEY)
    record = files.get(name) if isinstance(files, dict) else None
    if record is None:
        if not allow_unverified:
            raise ArtifactError(
                f"{root / name} is not listed in {CONFIG_NAME} '{FILES_KEY}', so it cannot be "
                "verified as this artifact's; re-export it with vq-export --onnx ARTIFACT "
                "ARTIFACT (which records it), remove it, or pass allow_unverified=True "
                "(vq-serve --allow-unverified)"
            )
        logger.warning("using %s UNVERIFIED: config.json lists no checksum for it", root / name)
    return _read_checked(root, name, record)


def record_files(root: str | os.PathLike[str], names: tuple[str, ...], model: VQVAE) -> bool:
    """Add ``names`` (files just written into the artifact ``root``) to its config.json
    ``files`` list, if ``model`` is the artifact's own model (same config and weights); False
    (nothing recorded) otherwise, so that loading refuses the files as foreign."""
    root = Path(root)
    try:
        own = load_tokenizer(root, precision="fp32").model
    except ArtifactError:
        return False
    mine = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    theirs = own.state_dict()
    if own.config.to_dict() != model.config.to_dict() or mine.keys() != theirs.keys():
        return False
    if not all(torch.equal(mine[k].to(theirs[k].dtype), theirs[k]) for k in mine):
        return False
    config = root / CONFIG_NAME
    data = json.loads(config.read_text(encoding="utf-8"))
    data[FILES_KEY].update({name: _file_record(root / name) for name in names})
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(config, text.encode("utf-8"))
    return True


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its header: 8-byte length, then JSON)."""
    try:
        n = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + n])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _read_weights(path: Path, blob: bytes) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(blob)
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ArtifactError(
            f"{path} could not be read as safetensors (truncated or corrupt file?): {exc}"
        ) from None


def _check_model_hash(root: Path, cfg: VQVAEConfig, blob: bytes, allow_unverified: bool) -> None:
    """The weights' metadata records the model config they were saved with: the ``model``
    section must still be that one. Without the record only ``allow_unverified`` loads."""
    recorded = _safetensors_metadata(blob).get(MODEL_HASH_KEY)
    if recorded is None:
        if not allow_unverified:
            raise ArtifactError(
                f"{root / WEIGHTS_NAME} has no '{MODEL_HASH_KEY}' record of the config it was "
                f"saved with, so config.json's 'model' section cannot be verified; "
                f"{UNVERIFIED_FIX}"
            )
        logger.warning("loading %s UNVERIFIED: its weights record no model config", root)
        return
    if recorded != model_config_sha256(cfg.to_dict()):
        raise ArtifactError(
            f"{root / CONFIG_NAME} 'model' section is not the one {WEIGHTS_NAME} was saved "
            "with (edited after export?): the weights would run as another architecture"
        )


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Weights with NaN or infinity would make every code invalid: refuse them at load."""
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ArtifactError(
                    f"{path}: tensor {name!r} has {bad} non-finite value(s) (NaN or infinity) "
                    f"of {tensor.numel()}; a model with them cannot produce valid codes"
                )


def _check_derived(data: Mapping[str, Any], model: VQVAE, path: Path) -> None:
    """Every field of config.json derived from the model config (the ``quantizer`` summary,
    ``f``, ``in_channels``, ``image_range``; what readers such as the service's /v1/models
    show) must be what the config it is built from derives: an edit of one side alone is
    refused, naming the field."""
    expected = artifact_config(model)
    for key in ("quantizer", "f", "in_channels", "image_range"):
        if key not in data:
            continue
        found, want = data[key], expected[key]
        if isinstance(want, dict) and isinstance(found, dict):
            wrong = [
                f"{key}.{k}={found.get(k)!r} (the model section gives {want.get(k)!r})"
                for k in sorted(set(want) | set(found))
                if found.get(k) != want.get(k)
            ]
        else:
            wrong = [] if found == want else [f"{key}={found!r} (the model section gives {want!r})"]
        if wrong:
            raise ArtifactError(
                f"{path} does not agree with its own 'model' section: " + "; ".join(wrong)
            )


def _check_state(state: Mapping[str, torch.Tensor], model: VQVAE, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    wrong_dtype = [
        f"{k}: file {state[k].dtype} vs model {expected[k].dtype}"
        for k in sorted(set(expected) & set(state))
        if state[k].dtype != expected[k].dtype
    ]
    problems = []
    for label, items in (
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("shape mismatches", mismatched),
        ("dtype mismatches", wrong_dtype),
    ):
        if items:
            shown = ", ".join(items[:5]) + (
                f", ... ({len(items)} in all)" if len(items) > 5 else ""
            )
            problems.append(f"{label}: {shown}")
    if problems:
        raise ArtifactError(f"{path} does not match its {CONFIG_NAME}: " + "; ".join(problems))


def _local_artifact(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, a shipped model, or the local snapshot of the Hub repo id it names
    (``vq.hub``)."""
    from vq.hub import HubError, resolve_artifact

    try:
        return resolve_artifact(os.fspath(path))
    except HubError as exc:
        raise ArtifactError(str(exc)) from None


def load_tokenizer(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    precision: str | None = None,
    *,
    allow_unverified: bool = False,
) -> Tokenizer:
    """Load an artifact directory written by ``save_tokenizer``, or a Hugging Face Hub repo
    id ("owner/name", downloaded with huggingface_hub when no such local path exists);
    ``models/default`` (and the checkout's other ``models/``) load from any working directory;
    ArtifactError if it is missing, unreachable, unreadable, of an unknown format version,
    damaged (a file fails its recorded sha256 or size), tampered with (a file linked from
    outside the directory, a config edited so it no longer derives its summary fields or no
    longer matches the weights' record of it), or its weights do not fit its config (shape or
    dtype) or hold NaN/infinity. Nothing is unpickled.

    ``allow_unverified``: load an artifact without checksums (no ``files`` list in
    config.json, no model-config record in the weights), logging a warning; refused otherwise.

    ``precision``: "fp32" or "bf16" (``vq.precision``); None picks bf16 where ``device`` runs
    it natively unless config.json recommends fp32. ``Tokenizer.precision`` says which."""
    if precision is not None:
        check_precision(precision)
    root = _local_artifact(path)
    if not root.exists():
        raise ArtifactError(f"artifact directory {root} does not exist")
    if not root.is_dir():
        raise ArtifactError(
            f"{root} is not a directory; an artifact is a directory with {CONFIG_NAME}"
        )
    # A Hub snapshot (snapshots/<revision>/ in the cache) links its files to ../../blobs/.
    snapshot = root != Path(path) and root.parent != SHIPPED_MODELS
    inside = root.resolve().parent.parent if snapshot else None
    data = _read_config(root, inside)
    files = _file_records(root, data, allow_unverified)
    # The weights are checked here; other listed files (ONNX graphs) by read_artifact_file,
    # when and if something uses them.
    weights = _read_checked(root, WEIGHTS_NAME, files[WEIGHTS_NAME] if files else None, inside)
    cfg = _parse_model_config(data, root / CONFIG_NAME)
    state = _read_weights(root / WEIGHTS_NAME, weights)
    model = VQVAE(cfg)
    _check_state(state, model, root / WEIGHTS_NAME)
    _check_derived(data, model, root / CONFIG_NAME)
    _check_model_hash(root, cfg, weights, allow_unverified)
    _check_finite(state, root / WEIGHTS_NAME)
    model.load_state_dict(state, strict=True)
    return Tokenizer(model, data, device, precision)
