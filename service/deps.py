"""Shared dependencies as ``Annotated`` aliases, so handlers declare what they use."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.settings import Settings, get_settings
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ServiceState, Depends(get_state)]
