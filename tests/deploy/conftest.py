"""Fixtures for the deploy/ checks: paths, and the helper module beside this file.

pytest runs with --import-mode=importlib, which puts no test folder on sys.path; the
helpers (deploy_support.py, kustomize_lite.py) are plain modules next to this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
