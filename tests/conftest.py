"""Shared test set-up: offline hub, and where the shared test data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may download weights or data at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite runs on the smaller embedded model (half the size of the default Gemma 3 270M, and
# the one these tests' model behaviour was written against); tests of Gemma name it explicitly.
os.environ.setdefault("GUARDRAIL_EMBEDDED", "smollm2-135m")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (a user's checkout has none)")
    return SHARED_DATA
