"""Fixtures of the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from train.cli import silence_third_party_noise


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch on one thread for the test: tiny models on a shared 2-core machine are many
    times faster without OpenMP threads spinning against other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _quiet_lightning() -> None:
    """The filters ``vq-train`` installs for third-party noise, for tests that build
    Trainers directly (pytest restores the warning filters after each test)."""
    silence_third_party_noise()
