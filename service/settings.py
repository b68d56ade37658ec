"""Service settings: pydantic-settings with the ``VQ_`` prefix.

Every field can come from an environment variable (``VQ_PORT=9000``) or, for ``vq-serve``,
from a command-line flag, which wins. ``get_settings`` builds them once, on first use, never
at import time; the app reads them through the ``SettingsDep`` dependency so tests (and
``create_app(settings)``) can substitute their own.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliToggleFlag, NoDecode, SettingsConfigDict

from service.backends import BackendName, check_backend
from vq.precision import Precision, check_precision

MiB = 1024 * 1024
GiB = 1024 * MiB
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_bytes(value: Any) -> int | None:
    """``12G``, ``512MiB``, ``3.5GB`` (binary units, 1G = 2**30) or a plain byte count -> bytes."""
    if value is None or isinstance(value, int):
        return value
    match = _BYTES.match(str(value))
    if match is None:
        raise ValueError(
            f"memory_budget={value!r} is not a size; give bytes or a number with K, M, G or T "
            "(binary units), e.g. 12G"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_model_specs(value: Any) -> dict[str, str]:
    """``name=path`` pairs -> {name: path}.

    Accepts a dict, a list of ``"name=path"`` strings, a comma-separated string
    (``"default=models/default,fsq=/srv/fsq"``) or a JSON object string. A bare path
    (no ``=``) is served under the name ``default``.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"models={value!r} is not a valid JSON object: {exc}") from None
        else:
            value = [part for part in text.split(",") if part.strip()]
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        pairs = []
        for spec in value:
            if not isinstance(spec, str):
                raise ValueError(f"model spec {spec!r} must be a string 'name=path'")
            name, sep, path = spec.strip().partition("=")
            pairs.append((name.strip(), path.strip()) if sep else ("default", name.strip()))
    else:
        raise ValueError(
            f"models={value!r} is not allowed; give 'name=path' pairs, e.g. 'default=models/default'"
        )
    models: dict[str, str] = {}
    for name, path in pairs:
        if not _MODEL_NAME.match(name):
            raise ValueError(
                f"model name {name!r} is not allowed; use 1-64 letters, digits, '_', '.', '-'"
            )
        if not path:
            raise ValueError(f"model {name!r} has an empty path; expected 'name=path'")
        if name in models:
            raise ValueError(f"model name {name!r} is given twice")
        models[name] = path
    if not models:
        raise ValueError("models is empty; give at least one 'name=path' pair")
    return models


class Settings(BaseSettings):
    """Everything the service can be told. Environment: ``VQ_<FIELD>`` (case-insensitive);
    ``vq-serve``'s command line: ``--<field>`` in kebab case (``service.cli``).

    The attribute docstrings are the flags' help."""

    model_config = SettingsConfigDict(
        env_prefix="VQ_",
        extra="ignore",
        use_attribute_docstrings=True,
        # How the command line is made from the fields, when service.cli asks for one (never
        # here: Settings() reads no sys.argv).
        cli_kebab_case=True,
        cli_shortcuts={"models": "model", "api-keys": "api-key", "metrics-keys": "metrics-key"},
        cli_hide_none_type=True,
        cli_show_env_vars=True,
    )

    # pydantic copies a mutable default for each instance.
    models: Annotated[dict[str, str], NoDecode] = {"default": "models/default"}
    """Artifact directory (config.json + model.safetensors) or Hugging Face Hub repo id
    (owner/name) to serve under NAME; repeat for several models. Relative paths are resolved against the current directory at start-up; a local path that
    exists wins over a Hub id. Env: comma-separated pairs or a JSON object."""
    # CliToggleFlag: one flag, which sets the value that is not the default.
    allow_unverified: CliToggleFlag[bool] = False
    """Serve artifacts without checksums (no 'files' list in config.json, ONNX graphs it does
    not list), each with a logged warning; refused otherwise."""
    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port to listen on."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the service's and uvicorn's logs."""

    # API keys (service/auth.py): off unless given. SecretStr: never shown in a repr or log.
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    """Require 'Authorization: Bearer KEY' on the tokenize, detokenize and model routes;
    repeat for several keys. Env: comma-separated. /healthz and /readyz stay open."""
    api_key_file: Path | None = None
    """A file of key digests, one 'sha256:<64 hex digits>' per line (the SHA-256 of each
    key), accepted beside api_keys: the keys themselves need not be on the server."""
    metrics_keys: Annotated[list[SecretStr], NoDecode] = []
    """Require one of these keys (its own, e.g. the Prometheus scraper's) as a bearer token
    on /metrics; open without. Env: comma-separated."""

    # Request limits (bad input gets a 4xx, see docs/api.md). The side limits are checked on
    # the image header / grid shape before any work; the defaults keep one maximal request of
    # the default model well inside request_timeout_s on 2 busy cores (docs/operations.md has
    # the measurements). Memory itself is policed by memory_budget.
    max_upload_bytes: int = Field(default=20 * MiB, ge=1)
    """Whole request body; 413 beyond."""
    max_image_side: int = Field(default=2048, ge=1)
    """Pixels, either side, checked from the image header before decoding; 413 beyond."""
    max_images_per_request: int = Field(default=64, ge=1)
    """Images per tokenize request, grids per detokenize batch."""
    max_grid_side: int = Field(default=256, ge=1)
    """Detokenize: rows / columns of a code grid."""

    memory_budget: Annotated[int | None, NoDecode] = None
    """The process's memory, bytes or with a binary unit, e.g. 8G (default: half of the
    machine's or cgroup's memory). Requests reserve their predicted peak before decoding
    (service/budget.py); one that can never fit gets 413, others wait for room (up to
    request_timeout_s)."""
    memory_probe_side: int = Field(default=256, ge=1)
    """Side of the probe image with which the memory per pixel is measured at start-up."""
    max_queue: int = Field(default=256, ge=1)
    """Items (images or grids) waiting per model and direction; beyond, 503 + Retry-After at
    once."""
    max_concurrent_requests: int = Field(default=64, ge=1)
    """Tokenize/detokenize requests processed at once (counted from when their body is
    complete); 503 beyond. Bodies still arriving count only against max_reading_bodies, so
    slow uploads cannot keep other requests out."""
    max_reading_bodies: int = Field(default=256, ge=1)
    """Request bodies still arriving at once; 503 beyond."""
    header_timeout_s: float = Field(default=10.0, gt=0.0)
    """A connection must send a request's complete header within this long of opening (or of
    its first byte after an idle keep-alive); it is closed otherwise."""
    request_timeout_s: float = Field(default=60.0, gt=0.0)
    """503 for a request not answered in time; its queued items never run."""
    body_timeout_s: float = Field(default=60.0, gt=0.0)
    """Slow clients: a body must arrive within this long and, after its first body_grace_s,
    at min_body_rate bytes/s on average; 408 otherwise."""
    body_grace_s: float = Field(default=5.0, ge=0.0)
    min_body_rate: int = Field(default=16 * 1024, ge=0)
    shutdown_delay_s: float = Field(default=2.0, ge=0.0)
    """On SIGTERM, readiness turns 503 and new requests get 503 + 'Connection: close' for
    this long (so balancers and keep-alive clients move away without a request racing a
    closing connection); then the listener closes."""
    drain_timeout_s: float = Field(default=70.0, ge=0.0)
    """After shutdown_delay_s, how long in-flight requests may finish."""
    inference_nice: int = Field(default=5, ge=0, le=19)
    """Nice value of the inference thread (and the torch threads it starts): above the event
    loop's, so that probes, parsing and shedding stay responsive while compute saturates the
    cores. 0 turns it off."""

    batching: CliToggleFlag[bool] = True
    """Turn micro-batching off: one image per forward pass. On (the default), concurrent
    requests for one model share a forward pass of up to max_batch_size images, waiting at
    most batch_wait_ms for company."""
    max_batch_size: int = Field(default=32, ge=1)
    """Images per forward pass."""
    batch_wait_ms: float = Field(default=2.0, ge=0.0)
    """Longest wait for a batch to fill."""
    max_batch_pixels: int = Field(default=32 * 256 * 256, ge=1)
    """Total pixels of a batch (activations grow with N * H * W): the default takes 32
    images of 256 x 256, 8 of 512 x 512, and big images one at a time."""
    lane_split_pixels: int = Field(default=512 * 512, ge=0)
    """Images (or grids decoding to) of at most this many pixels run in the small lane, on
    an inference thread of their own beside the large lane's, so a small request never
    waits for a large image's pass (docs/operations.md, "Fairness"). 0: one lane for all."""
    small_lane_threads: int | None = Field(default=None, ge=1)
    """Intra-op torch threads of the small lane (default: half of the large lane's, which
    has torch_threads or torch's default; at least 1), so the two lanes together do not
    crowd the cores much beyond torch_threads. The onnxruntime backend's sessions have one
    thread pool for both lanes."""

    device: Literal["cpu", "cuda"] = "cpu"
    """Where the models run."""
    precision: Precision | None = None
    """fp32, bf16 or auto (vq/precision.py): bf16 where the device runs it natively (unless
    the artifact recommends fp32), else fp32. The start-up log says which and why."""
    backend: BackendName = "torch"
    """What runs the encoder and decoder (service/backends.py): torch (the Tokenizer, at
    precision) or onnxruntime (the vq.onnx_export graphs, float32, CPU; needs pip install
    onnxruntime; docs/operations.md, "Backend")."""
    torch_threads: int | None = Field(default=None, ge=1)
    """Intra-op threads of torch, or of the onnxruntime sessions (default: the library's)."""
    usage_window: int = Field(default=65536, ge=1)
    """Tokens in the served-usage window."""

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> dict[str, str]:
        return parse_model_specs(value)

    @field_validator("api_keys", "metrics_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("api_key_file")
    @classmethod
    def _check_key_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            # Here, not at the top: service.auth imports the error layer, which imports this.
            from service.auth import read_key_file

            try:
                read_key_file(value)
            except OSError as exc:
                raise ValueError(f"api_key_file {value}: {exc.strerror or exc}") from None
        return value

    @property
    def requires_key(self) -> bool:
        return bool(self.api_keys) or self.api_key_file is not None

    @field_validator("precision", mode="before")
    @classmethod
    def _check_precision(cls, value: Any) -> Precision | None:
        if value is None or (isinstance(value, str) and value.lower() in ("", "auto")):
            return None
        return check_precision(value)

    @field_validator("backend", mode="before")
    @classmethod
    def _check_backend(cls, value: Any) -> BackendName:
        return check_backend(value)

    @model_validator(mode="after")
    def _backend_fits(self) -> Settings:
        if self.backend == "onnxruntime":
            if self.precision == "bf16":
                raise ValueError(
                    "precision='bf16' is not allowed with backend='onnxruntime' (its graphs "
                    "run float32); use precision fp32 or auto, or backend torch"
                )
            if self.device != "cpu":
                raise ValueError(
                    f"device={self.device!r} is not allowed with backend='onnxruntime' (it runs "
                    "on the CPU here); use device cpu, or backend torch"
                )
        return self

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> int | None:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        budget = parse_bytes(value)
        if budget is not None and budget < 64 * MiB:
            raise ValueError(f"memory_budget={value!r} is below the minimum of 64 MiB")
        return budget

    @property
    def effective_batch_size(self) -> int:
        return self.max_batch_size if self.batching else 1

    @property
    def max_image_pixels(self) -> int:
        return self.max_image_side * self.max_image_side


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment, built on first call."""
    return Settings()
