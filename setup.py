"""Installing the project generates the gRPC stubs (build output, never committed)."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithProtos(build_py):
    """Run protoc (via services.core.protogen) before collecting the packages."""

    def run(self) -> None:
        sys.path.insert(0, str(ROOT))
        from services.core.protogen import generate

        generate(ROOT)
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
