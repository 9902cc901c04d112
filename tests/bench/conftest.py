"""Benchmark plumbing tests (no timing is asserted here)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "peers: starts LitServe / PyTriton servers from their environments under "
                                       ".peers/ (skipped when those are not built)")
