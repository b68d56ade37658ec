"""The app factory. ``create_app`` only builds the app; models load in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from service.auth import digests_of, key_check
from service.errors import ErrorResponse, install_error_handlers
from service.images import set_pixel_limit
from service.limits import (
    BodyLimitMiddleware,
    ConcurrencyMiddleware,
    DrainMiddleware,
    SlowBodyMiddleware,
)
from service.loader import load_models, load_or_report
from service.metrics import RequestMetricsMiddleware
from service.routes import dashboard, detokenize, health, metrics, models, tokenize
from service.settings import Settings, get_settings
from service.state import ServiceState

logger = logging.getLogger("service")

DOCS_ASSETS_URL = "/static-docs"  # Swagger UI's and ReDoc's files (fastapi-offline)


def _include(app: FastAPI, router: APIRouter, digests: list[bytes], setting: str) -> None:
    """``router``'s routes, each behind a key check (401 without one of ``digests``) when
    there are keys."""
    if not digests:
        app.include_router(router)
        return
    app.include_router(
        router,
        dependencies=[Depends(key_check(digests, setting))],
        responses={401: {"model": ErrorResponse}},
    )


def create_app(
    settings: Settings | None = None,
    *,
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the service. ``settings`` defaults to the environment (``get_settings``).

    ``on_load_failure``: load the models in the background once the server listens, so that
    /healthz answers and /readyz says 503 ``loading`` meanwhile (``vq-serve`` does this); a
    load that fails calls it with a one-line message. None: the lifespan waits for the
    models and raises what loading raised (an embedding app, the tests' TestClient).
    """
    settings = settings if settings is not None else get_settings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        set_pixel_limit(settings.max_image_pixels)
        loading: asyncio.Task[None] | None = None
        try:
            if on_load_failure is None:
                await load_models(state)
            else:
                loading = asyncio.create_task(load_or_report(state, on_load_failure))
            yield
        finally:
            if loading is not None:
                loading.cancel()
            await state.close()

    # /docs (Swagger UI) and /redoc with their scripts and styles served from the installed
    # fastapi-offline package, not a CDN: they work with no network. validatorUrl=None: no
    # badge fetched from Swagger's online validator.
    app = FastAPIOffline(
        title="vq-tokenizer",
        summary="Images <-> discrete code grids, with live codebook usage",
        version="0.1.0",
        lifespan=lifespan,
        static_url=DOCS_ASSETS_URL,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.service = state
    # Every handler reads settings through SettingsDep: point it at this app's settings.
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)
    # API keys (service/auth.py), when set: on everything that spends compute or tells about
    # the models; the probes and the dashboard page stay open, /metrics has its own keys.
    api_digests = digests_of(settings.api_keys, settings.api_key_file)
    for module in (tokenize, detokenize, models):
        _include(app, module.router, api_digests, "setting api_keys")
    _include(app, metrics.router, digests_of(settings.metrics_keys, None), "setting metrics_keys")
    for module in (health, dashboard):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    # Each add wraps the ones before: the drain refusal (innermost) reads bodies through the
    # size and speed limits; metrics (outermost) see every response, the 413 and 408 included.
    app.add_middleware(DrainMiddleware, draining=lambda: state.draining)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(
        SlowBodyMiddleware,
        timeout_s=settings.body_timeout_s,
        grace_s=settings.body_grace_s,
        min_rate=settings.min_body_rate,
    )
    app.add_middleware(
        ConcurrencyMiddleware,
        limit=settings.max_concurrent_requests,
        max_reading=settings.max_reading_bodies,
        on_shed=state.metrics.shed.labels("*", "*", "concurrency").inc,
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics, routes=app.router.routes)
    return app
