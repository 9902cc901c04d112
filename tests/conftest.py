"""Fixtures shared across test areas."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """The tiny Kosmos-2 and Stable Diffusion folders, built once per test session."""
    from services.cli import build_tiny

    out = tmp_path_factory.mktemp("models")
    build_tiny(out)
    return out
