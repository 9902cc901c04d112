"""A SIGTERM reaches the drain whichever thread the OS hands it to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The signal is sent to a thread other than the main one (the OS may pick any thread that does not block
# it: grpc's pollers, torch's workers). Python runs handlers only in the main thread, which a wait with no
# timeout never wakes: before the fix this process waited for the next signal (the timeout below).
SCRIPT = """
import signal, threading
from services.core.server import RunningServer

r = RunningServer.__new__(RunningServer)  # only its stop flag: what wait() blocks on
r._stopped = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: r._stopped.set())
threading.Timer(0.3, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGTERM)).start()
r.wait()
print("stopped")
"""


def test_sigterm_delivered_to_another_thread_ends_the_wait() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "stopped", out.stderr[-2000:]
