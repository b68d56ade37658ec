"""A small Python client for the vq-tokenizer service (httpx).

    from service.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.tokenize(["cat.png"], fit="crop")[0]     # TokenizedImage
        png = client.detokenize(result.codes)                     # PNG bytes

Errors from the service raise ``ServiceError`` with its status, code and message.
Any ``httpx.Client`` can be passed as ``http`` (FastAPI's TestClient is one). A service that
requires a key (setting api_keys) takes it as ``Client(url, api_key=...)``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from PIL import Image

ImageInput = bytes | str | os.PathLike[str] | Image.Image | np.ndarray
Fit = Literal["reject", "crop", "pad", "resize"]


class ServiceError(RuntimeError):
    def __init__(self, status_code: int, code: str, detail: str) -> None:
        super().__init__(f"{status_code} {code}: {detail}")
        self.status_code = status_code
        self.code = code
        self.detail = detail


def service_error(response: httpx.Response) -> ServiceError:
    """The service's JSON error body (``{"code", "detail"}``) of a failed response."""
    try:
        body = response.json()
        code, detail = str(body.get("code", "error")), str(body.get("detail", body))
    except ValueError:
        code, detail = "error", response.text
    return ServiceError(response.status_code, code, detail)


@dataclass(frozen=True)
class TokenizedImage:
    codes: list[list[int]]  # [h][w] code ids
    grid: tuple[int, int]  # (h, w)
    image_size: tuple[int, int]  # (H, W) as sent

    def as_array(self) -> np.ndarray:
        return np.asarray(self.codes, dtype=np.int64)  # (h, w)


def image_name(image: ImageInput, index: int) -> str:
    """How errors name an image: its path when it was given as one, else ``image<index>``."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return f"image{index}"


def image_bytes(image: ImageInput) -> bytes:
    """File bytes for ``image``: bytes as they are, paths read, PIL images and (H, W, 3)
    uint8 arrays encoded as PNG."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | os.PathLike):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise ValueError(
        f"image of type {type(image).__name__} is not supported; give bytes, a path, "
        "a PIL image or an (H, W, 3) uint8 array"
    )


def _with_name(label: str, names: Sequence[str], index: int) -> str:
    if 0 <= index < len(names) and names[index] != f"image{index}":
        return f"{label} ({names[index]})"
    return label


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
        api_key: str | None = None,
    ) -> None:
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout)
        # Sent with each request, so that a passed-in http client is left as it was.
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        raise service_error(response)

    def tokenize(
        self,
        images: Sequence[ImageInput],
        *,
        model: str = "default",
        fit: Fit = "reject",
        as_json: bool = False,
    ) -> list[TokenizedImage]:
        """One ``TokenizedImage`` per image, in order. ``as_json`` sends base64 JSON
        instead of multipart."""
        params = {"model": model, "fit": fit}
        names = [image_name(image, i) for i, image in enumerate(images)]
        blobs = [image_bytes(image) for image in images]
        if as_json:
            payload = {"images": [base64.b64encode(b).decode("ascii") for b in blobs]}
            response = self.http.post(
                "/v1/tokenize", params=params, json=payload, headers=self._headers
            )
        else:
            # The file's base name travels with the part (the service's errors say
            # "files[0] (cat.png)"); the local folders stay on this machine.
            files = [
                ("files", (os.path.basename(n), b, "application/octet-stream"))
                for n, b in zip(names, blobs, strict=True)
            ]
            response = self.http.post(
                "/v1/tokenize", params=params, files=files, headers=self._headers
            )
        try:
            body = self._check(response).json()
        except ServiceError as exc:
            if as_json:  # JSON entries have no names: the service says "images[i]"; add the path
                pattern, label = r"\bimages\[(\d+)\]", lambda i: f"images[{i}]"
            else:  # the service says "files[i] (base name)"; give the local path back
                pattern, label = r"\bfiles\[(\d+)\] \([^)]*\)", lambda i: f"files[{i}]"
            detail = re.sub(
                pattern,
                lambda m: _with_name(label(int(m.group(1))), names, int(m.group(1))),
                exc.detail,
            )
            raise ServiceError(exc.status_code, exc.code, detail) from None
        return [
            TokenizedImage(r["codes"], tuple(r["grid"]), tuple(r["image_size"]))
            for r in body["results"]
        ]

    def detokenize(self, codes: Any, *, model: str = "default") -> bytes:
        """One [h][w] grid (nested lists or an int array) -> PNG bytes."""
        payload = {"model": model, "codes": np.asarray(codes).tolist()}
        return self._check(
            self.http.post("/v1/detokenize", json=payload, headers=self._headers)
        ).content

    def detokenize_batch(self, grids: Sequence[Any], *, model: str = "default") -> list[bytes]:
        payload = {"model": model, "batch": [np.asarray(g).tolist() for g in grids]}
        body = self._check(
            self.http.post("/v1/detokenize/batch", json=payload, headers=self._headers)
        ).json()
        return [base64.b64decode(s) for s in body["images"]]

    def models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self._check(
            self.http.get("/v1/models", headers=self._headers)
        ).json()["models"]
        return models

    def model(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self._check(
            self.http.get(f"/v1/models/{name}", headers=self._headers)
        ).json()
        return info

    def usage(self, name: str = "default") -> dict[str, Any]:
        usage: dict[str, Any] = self._check(
            self.http.get(f"/v1/models/{name}/usage", headers=self._headers)
        ).json()
        return usage

    def metrics(self, *, key: str | None = None) -> str:
        """/metrics; ``key``: its own key, where the service sets metrics_keys."""
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return self._check(self.http.get("/metrics", headers=headers)).text

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Poll /readyz until 200; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready after {timeout} s")
            time.sleep(interval)
