"""`make run` end to end: the demo starts three real service processes, seeds the graph,
generates and captions an image over gRPC, prints the comparison page, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from services.core.images import decode_image

ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_page_saves_png_and_shuts_down_cleanly(tmp_path, tiny_models_dir):
    out = tmp_path / "out"
    log = tmp_path / "demo.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "demo", "--models-dir", str(tiny_models_dir),
             "--data-dir", str(tmp_path / "var"), "--out-dir", str(out), "--free-ports"],
            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 240
            while "stack is up" not in log.read_text(errors="replace"):
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "demo did not come up in 240 s"
                time.sleep(1)
            url = re.search(r"the comparison page on the web: (\S+)", log.read_text()).group(1)
            page = urllib.request.urlopen(url, timeout=30).read().decode()
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "seeded the match graph with the catalogue: " in text
    assert "# Kosmos-2 vs Stable Diffusion" in text
    assert "## Verdict" in text and "| UnfragileRank |" in text
    assert "caption of that image" in text
    # the page rests on sourced, dated readings: Stable Diffusion leads adoption (about ten times the downloads)
    verdict = text[text.index("## Verdict"):text.index("## Need something different?")]
    assert re.search(r"Stable Diffusion( [0-9.]+)? leads on [a-z ,]*adoption", verdict), verdict
    # a captioner and an image generator: quality is not comparable, and the test models' probes are not cited
    assert "Quality is not comparable: Kosmos-2 is image-to-text, Stable Diffusion" in verdict
    assert "leads on quality" not in verdict and "Quality not measured on the real model" in verdict
    rows = text[text.index("## Readings and their sources"):text.index("## What the quality probes ran on")]
    for line in rows.splitlines():
        if line.startswith("| ") and not line.startswith(("| Reading ", "|---")):
            for cell in line.split(" | ")[1:]:  # every figure links its source and date, or says there is none
                assert "](http" in cell or cell.strip(" |") == "no reading", line
    # the probes ran on the tiny random-weight models, and the printed page and the web page say so
    assert "(random-weight test model)" in text and "## What the quality probes ran on" in text
    assert "says nothing about the real models" in text and "random-weight test model" in page
    assert "Verdict" in page and "Kosmos-2" in page and "Readings and their sources" in page
    assert "stopped: {'visionlanguage': 0, 'diffusion': 0, 'matchgraph': 0, 'gateway': 0, 'openai': 0}" in text
    assert re.search(r"openai\s+http://127\.0\.0\.1:\d+/v1 \(OpenAI-compatible API\)", text)
    png = (out / "demo.png").read_bytes()
    assert decode_image(png).size == (64, 64)
