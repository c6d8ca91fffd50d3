"""Shared fixtures: the reference folder beside the repository, small torch settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference; its absence is a failure, not a skip."""
    assert REFERENCE.is_dir(), f"{REFERENCE} missing: the tests need ../shared/reference beside the repository"
    return REFERENCE


GOLDEN = Path(__file__).parent / "data" / "golden_small.pt"  # a copy of ../shared/reference/golden_small.pt


@pytest.fixture(scope="session")
def golden() -> dict:
    """The reference golden vectors (weights-only load) from the project's test data."""
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)
