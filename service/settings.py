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
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    """Everything the service can be told. Environment: ``VQ_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="VQ_", extra="ignore")

    # Artifact directories (config.json + model.safetensors) by serving name. Relative paths
    # are resolved against the current directory when the service starts.
    # Env: VQ_MODELS="default=models/default,fsq=/srv/tokenizers/fsq" (or a JSON object).
    models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"default": "models/default"}
    )
    # Serve artifacts without checksums (config.json with no "files" list, ONNX graphs it does
    # not list): off, they are refused at start-up; on, each is loaded with a logged warning.
    allow_unverified: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # Request limits (bad input gets a 4xx, see docs/api.md).
    max_upload_bytes: int = Field(default=20 * MiB, ge=1)  # whole request body; 413 beyond
    # The side limits are checked on the image header / grid shape before any work; the
    # defaults keep one maximal request of the default model to 1.2 GB (bf16; 2.1 GB fp32)
    # and well inside request_timeout_s on 2 busy cores (docs/operations.md has the
    # measurements). Memory itself is policed by memory_budget below.
    max_image_side: int = Field(default=2048, ge=1)  # pixels, either side, checked before decoding
    max_images_per_request: int = Field(default=64, ge=1)
    max_grid_side: int = Field(default=256, ge=1)  # detokenize: code grid rows/columns

    # Memory admission control (service/budget.py): the process's total memory, in bytes or
    # with a binary unit ("12G"). None: half of the machine's (or cgroup's) memory. Requests
    # reserve their predicted peak before decoding; one that can never fit gets 413, others
    # wait for room (up to request_timeout_s).
    memory_budget: Annotated[int | None, NoDecode] = None
    memory_probe_side: int = Field(default=256, ge=1)  # probe image side for the measurement
    # Load shedding: at most max_queue items (images or grids) wait per model and direction;
    # beyond that 503 + Retry-After at once. A request not answered within
    # request_timeout_s gets 503 and its queued items never run.
    max_queue: int = Field(default=256, ge=1)
    # At most this many tokenize/detokenize requests processed at once (counted from when
    # their body is complete); 503 beyond. Bodies still arriving count only against
    # max_reading_bodies, so slow uploads cannot keep other requests out.
    max_concurrent_requests: int = Field(default=64, ge=1)
    max_reading_bodies: int = Field(default=256, ge=1)
    # A connection must send a request's complete header within header_timeout_s of
    # opening (or of its first byte after an idle keep-alive); it is closed otherwise.
    header_timeout_s: float = Field(default=10.0, gt=0.0)
    request_timeout_s: float = Field(default=60.0, gt=0.0)
    # Slow clients: a body must arrive within body_timeout_s and, after its first
    # body_grace_s, at min_body_rate bytes/s on average; 408 otherwise.
    body_timeout_s: float = Field(default=60.0, gt=0.0)
    body_grace_s: float = Field(default=5.0, ge=0.0)
    min_body_rate: int = Field(default=16 * 1024, ge=0)
    # SIGTERM: readiness turns 503 and new requests get 503 + "Connection: close" for
    # shutdown_delay_s (so balancers and keep-alive clients move away without a request
    # racing a closing connection); then the listener closes and in-flight requests get
    # drain_timeout_s to finish.
    shutdown_delay_s: float = Field(default=2.0, ge=0.0)
    drain_timeout_s: float = Field(default=70.0, ge=0.0)
    # Nice value of the inference thread (and the torch threads it starts): above the event
    # loop's, so that probes, parsing and shedding stay responsive while compute saturates
    # the cores. 0 turns it off.
    inference_nice: int = Field(default=5, ge=0, le=19)

    # Micro-batching: concurrent requests for one model share a forward pass of up to
    # max_batch_size images, waiting at most batch_wait_ms for company. batching=False (or
    # max_batch_size=1) runs every image on its own.
    batching: bool = True
    max_batch_size: int = Field(default=32, ge=1)
    batch_wait_ms: float = Field(default=2.0, ge=0.0)
    # Also caps a batch's total pixels (memory: activations grow with N * H * W); the
    # default takes 32 images of 256 x 256, 8 of 512 x 512, and big images one at a time.
    max_batch_pixels: int = Field(default=32 * 256 * 256, ge=1)

    device: Literal["cpu", "cuda"] = "cpu"
    # fp32 or bf16 (vq/precision.py); None ("auto"): bf16 where the device runs it natively
    # (unless the artifact recommends fp32), else fp32. The start-up log says which and why.
    precision: Precision | None = None
    # What runs the encoder and decoder (service/backends.py): torch (the Tokenizer, at
    # `precision`) or onnxruntime (the vq.onnx_export graphs, float32, CPU; the measured
    # trade-off is in docs/operations.md, "Backend").
    backend: BackendName = "torch"
    # Intra-op threads of torch, or of the onnxruntime sessions. None: the library's default.
    torch_threads: int | None = Field(default=None, ge=1)
    usage_window: int = Field(default=65536, ge=1)  # tokens in the served-usage window

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> dict[str, str]:
        return parse_model_specs(value)

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
