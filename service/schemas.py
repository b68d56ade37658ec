"""Request and response bodies (pydantic), shared by the routes and the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

# Code grids arrive as JSON; strict ints refuse 1.5, "3" and true instead of coercing them.
# The schema states the shape rules; ids in [0, codebook_size), equal row lengths and the
# grid-side limit depend on the model and settings and are checked once, in
# routes/detokenize.check_grid.
# Two integers, e.g. [H, W]: a fixed-length array (plain JSON Schema; tuple types would
# produce prefixItems, which OpenAPI 3.0 tools misread).
Pair = Annotated[list[int], Field(min_length=2, max_length=2)]
CodeRow = Annotated[list[StrictInt], Field(min_length=1)]
CodeGrid = Annotated[list[CodeRow], Field(min_length=1, description="[h][w] code ids")]


class TokenizeJSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        description="Base64 image files (PNG, JPEG, WebP, BMP, GIF); a data: URL prefix is allowed",
        min_length=1,
    )


class TokenizeResult(BaseModel):
    codes: list[list[int]] = Field(description="Code ids, shape [h][w]")
    grid: Pair = Field(description="[h, w] = image size after fit / f")
    image_size: Pair = Field(description="[H, W] of the image as sent")


class TokenizeResponse(BaseModel):
    model: str
    codebook_size: int
    results: list[TokenizeResult] = Field(description="One per image, in request order")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    codes: CodeGrid = Field(description="One grid [h][w] of code ids -> an image/png response")


class DetokenizeBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    batch: list[CodeGrid] = Field(
        min_length=1, description="Several grids -> JSON with one base64 PNG per grid"
    )


class DetokenizeBatchResponse(BaseModel):
    model: str
    images: list[str] = Field(description="Base64 PNGs, one per grid, in request order")
    image_size: list[Pair] = Field(description="[H, W] of each image")


class ModelInfo(BaseModel):
    name: str
    kind: str = Field(description="Quantizer kind: vq or fsq")
    codebook_size: int
    f: int = Field(description="Downsampling factor: the code grid is H/f x W/f")
    code_dim: int
    levels: list[int] | None = Field(default=None, description="FSQ levels (kind=fsq)")
    codebook: str | None = Field(default=None, description="plain or linear (SimVQ), kind=vq")
    grad_estimator: str | None = Field(default=None, description="ste or rotation, kind=vq")
    image_range: list[float] = Field(description="Float range the network sees")
    format_version: int | None = None
    created: str | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="config.json's metrics: vq-train's validation at export, on the run's "
        "held-out crops (not full images)",
    )
    card: bool = Field(
        default=False, description="Whether GET /v1/models/{name}/card serves a model card"
    )
    device: str
    backend: str = Field(description="torch or onnxruntime: what runs the encoder and decoder")
    precision: str = Field(description="fp32 or bf16: what the encoder and decoder run at")


class ModelList(BaseModel):
    models: list[ModelInfo]


class UsageResponse(BaseModel):
    model: str
    codebook_size: int
    process: str = Field(
        description="host:pid of the process these figures describe; every vq-serve process "
        "(worker or replica) counts its own traffic"
    )
    window: int = Field(description="Capacity of the usage window, in tokens")
    window_tokens: int = Field(description="Tokens in the window now (min(tokens_seen, window))")
    tokens_seen: int = Field(description="Tokens counted since the service started")
    window_usage: float = Field(description="Fraction of codes hit in the window")
    perplexity: float = Field(description="exp(entropy) of the window histogram")
    dead_codes: int = Field(
        description="Codes with no hit in the full window; 0 while the window is filling"
    )
    unseen_codes: int = Field(
        description="Codes with no hit yet while the window is filling (window_tokens < "
        "window); 0 once it is full, when they count as dead_codes"
    )
    histogram: list[int] = Field(description="Hits per code id over the window")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready (200), loading or draining (503)")
    models: list[str]


class UsageHistoryPoint(BaseModel):
    t: float = Field(description="Seconds since the model was loaded")
    tokens_seen: int
    window_usage: float
    perplexity: float


class UsageHistoryResponse(BaseModel):
    model: str
    codebook_size: int
    spacing_s: float = Field(description="Seconds between points now (doubles as uptime grows)")
    points: list[UsageHistoryPoint] = Field(description="Oldest first; the last is the latest")
