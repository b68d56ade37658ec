"""Request and response bodies (pydantic), shared by the routes and the OpenAPI docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

# Code grids arrive as JSON; strict ints refuse 1.5, "3" and true instead of coercing them.
CodeGrid = list[list[StrictInt]]


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong and what is allowed")
    code: str = Field(description="Machine-readable error kind, e.g. invalid_image")


class TokenizeJSONRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        description="Base64 image files (PNG, JPEG, WebP, BMP, GIF); a data: URL prefix is allowed",
        min_length=1,
    )


class TokenizeResult(BaseModel):
    codes: list[list[int]] = Field(description="Code ids, shape [h][w]")
    grid: tuple[int, int] = Field(description="[h, w] = image size after fit / f")
    image_size: tuple[int, int] = Field(description="[H, W] of the image as sent")


class TokenizeResponse(BaseModel):
    model: str
    codebook_size: int
    results: list[TokenizeResult] = Field(description="One per image, in request order")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "default"
    codes: CodeGrid | None = Field(
        default=None, description="One grid [h][w] of code ids -> an image/png response"
    )
    batch: list[CodeGrid] | None = Field(
        default=None, description="Several grids -> JSON with one base64 PNG per grid"
    )

    @model_validator(mode="after")
    def _one_of(self) -> DetokenizeRequest:
        if (self.codes is None) == (self.batch is None):
            raise ValueError("give exactly one of 'codes' (one grid) or 'batch' (a list of grids)")
        return self


class DetokenizeBatchResponse(BaseModel):
    model: str
    images: list[str] = Field(description="Base64 PNGs, one per grid, in request order")
    image_size: list[tuple[int, int]] = Field(description="[H, W] of each image")


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
    metrics: dict[str, Any] = Field(default_factory=dict, description="From the model card")
    device: str


class ModelList(BaseModel):
    models: list[ModelInfo]


class UsageResponse(BaseModel):
    model: str
    codebook_size: int
    window: int = Field(description="Capacity of the usage window, in tokens")
    window_tokens: int = Field(description="Tokens in the window now (min(tokens_seen, window))")
    tokens_seen: int = Field(description="Tokens counted since the service started")
    window_usage: float = Field(description="Fraction of codes hit in the window")
    perplexity: float = Field(description="exp(entropy) of the window histogram")
    dead_codes: int = Field(description="Codes with no hit in the window")
    histogram: list[int] = Field(description="Hits per code id over the window")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
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
