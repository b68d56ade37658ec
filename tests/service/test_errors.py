"""The state raises domain errors and knows no HTTP; service.errors maps each to its one
ErrorCode; an error response cannot carry a code outside the enum."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import APIError, ErrorCode, error_body, serving_error
from service.state import (
    InvalidCodes,
    NotReady,
    ServiceState,
    ServingError,
    ShuttingDown,
    UnknownModel,
)
from tests.service.helpers import make_settings

EXPECTED = {
    UnknownModel: ErrorCode.UNKNOWN_MODEL,
    NotReady: ErrorCode.NOT_READY,
    ShuttingDown: ErrorCode.SHUTTING_DOWN,
    InvalidCodes: ErrorCode.INTERNAL_ERROR,
}


def test_every_domain_error_has_its_code() -> None:
    assert set(ServingError.__subclasses__()) == set(EXPECTED)
    for kind, code in EXPECTED.items():
        error = serving_error(kind("what happened"))
        assert error.code is code and error.status_code == code.status
        assert "what happened" in error.detail
        retry = (error.headers or {}).get("Retry-After")
        assert (retry is not None) == (code.status == 503), (kind, error.headers)


def test_the_state_raises_domain_errors(tmp_path: Path) -> None:
    state = ServiceState(make_settings(tmp_path))
    with pytest.raises(NotReady, match="loading"):
        state.get("default")
    with pytest.raises(NotReady):
        _ = state.budget
    state.ready = True
    with pytest.raises(UnknownModel, match="'nope' is not served; known models: none"):
        state.get("nope")
    state.begin_drain()
    with pytest.raises(ShuttingDown, match="shutting down"):
        state.get("nope")


def test_an_error_takes_only_an_error_code() -> None:
    """A code outside the enum cannot reach a response: the two ways to make one refuse it."""
    assert APIError(ErrorCode.TIMEOUT, "late").status_code == 503
    assert error_body(ErrorCode.TIMEOUT, "late")["code"] == "timeout"
    for build in (APIError, error_body):
        with pytest.raises(TypeError, match="ErrorCode"):
            build("timeout", "late")
