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

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # Request limits (bad input gets a 4xx, see docs/api.md).
    max_upload_bytes: int = Field(default=20 * MiB, ge=1)  # whole request body; 413 beyond
    max_image_side: int = Field(default=4096, ge=1)  # pixels, either side, checked before decoding
    max_images_per_request: int = Field(default=64, ge=1)
    max_grid_side: int = Field(default=512, ge=1)  # detokenize: code grid rows/columns

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
    torch_threads: int | None = Field(default=None, ge=1)  # None: torch's default
    usage_window: int = Field(default=65536, ge=1)  # tokens in the served-usage window

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> dict[str, str]:
        return parse_model_specs(value)

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
