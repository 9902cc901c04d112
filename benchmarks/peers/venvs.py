"""The peers' virtual environments: ``.peers/<name>``, built on first use from pinned requirements.

Each peer gets its own environment (PyTriton pins ``numpy<2``; the project needs
``numpy>=2``), never the project's ``.venv``. torch comes first from ``TORCH_SPEC``
(default ``torch==2.13.0``, the CPU build, like ``make setup``), then every other
package from ``requirements-<name>.txt``, all pinned. A stamp records what an
environment was built from, so a changed pin rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS_DIR = ROOT / ".peers"
NAMES = ("litserve", "pytriton")
DEFAULT_TORCH_SPEC = "torch==2.13.0"


class PeerEnvError(RuntimeError):
    """A peer environment could not be built (no registry, a missing pin, ...)."""


def _torch_spec() -> str:
    return os.environ.get("TORCH_SPEC", DEFAULT_TORCH_SPEC)


def _fingerprint(name: str) -> str:
    req = (HERE / f"requirements-{name}.txt").read_bytes()
    return hashlib.sha256(req + _torch_spec().encode() + sys.version.encode()).hexdigest()


def python(name: str) -> Path:
    return PEERS_DIR / name / "bin" / "python"


def is_ready(name: str) -> bool:
    stamp = PEERS_DIR / name / ".installed"
    return python(name).exists() and stamp.exists() and stamp.read_text().strip() == _fingerprint(name)


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PeerEnvError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def ensure(name: str, log: bool = True) -> Path:
    """The python of peer ``name``'s environment, building it first when missing or out of date."""
    if name not in NAMES:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(NAMES)}")
    if is_ready(name):
        return python(name)
    target = PEERS_DIR / name
    if log:
        print(f"building the {name} peer environment in {target} (pinned, ~1-2 min)", file=sys.stderr, flush=True)
    shutil.rmtree(target, ignore_errors=True)
    # sys._base_executable: the interpreter this process's own venv was made from.
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(target)], f"creating the {name} venv")
    pip = [str(python(name)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + _torch_spec().split(), f"installing {_torch_spec()} into the {name} venv")
    _run(pip + ["-r", str(HERE / f"requirements-{name}.txt")], f"installing the {name} requirements")
    (target / ".installed").write_text(_fingerprint(name) + "\n")
    return python(name)


def runtime_env(name: str) -> dict[str, str]:
    """Environment for a peer server process.

    Triton's Python backend stub links the system's ``libpython3.x.so``; when the venv's
    interpreter is another build of the same version (pyenv, conda), its standard library
    must be paired with that build's own shared library, found in its ``LIBDIR``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)  # the peer servers import benchmarks.peers.* from the checkout
    if name == "pytriton":
        query = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
        libdir = subprocess.run([str(python(name)), "-c", query],
                                capture_output=True, text=True, check=True).stdout.strip()
        if libdir:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    return env
