"""Fine-tune job states on disk, so a restarted server still answers for jobs it lost."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from services.diffusion.events import JobSnapshot
from services.diffusion.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job

log = logging.getLogger(__name__)

STATE_NAMES: dict[int, str] = {QUEUED: "queued", RUNNING: "running", SUCCEEDED: "succeeded", FAILED: "failed",
               CANCELLED: "cancelled"}


class JobJournal:
    """Fine-tune job states on disk, ``<adapters_dir>/.jobs/<job id>.json`` (one small file each).

    Why: jobs live in memory, so a process killed mid-training (kill -9, OOM killer, node
    loss) would otherwise forget them, and a client watching by id would get NOT_FOUND
    after the restart. On start, every job the journal still shows as queued or running is
    marked FAILED (with the step it reached) and registered again, so WatchJob/CancelJob
    answer for it; the adapter itself is only ever published by an atomic rename, so a
    killed job never leaves a half-written adapter behind.
    """

    def __init__(self, root: Path, keep: int = 1000) -> None:
        self.dir = Path(root) / ".jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def write(self, job: Job, snap: JobSnapshot | None = None) -> None:
        snap = snap or job.snapshot
        data = {"job_id": snap.job_id, "adapter_name": snap.adapter_name, "owner": job.owner,
                "state": STATE_NAMES.get(snap.state, "unknown"), "message": snap.message, "step": snap.step,
                "total_steps": snap.total_steps}
        tmp = self.dir / f".{snap.job_id}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.dir / f"{snap.job_id}.json")
        except OSError:  # a full disk must not fail the training itself
            log.warning("could not journal fine-tune job %s", snap.job_id, exc_info=True)

    def recover(self) -> list[Job]:
        """Jobs of earlier processes, newest ``keep``; unfinished ones become FAILED."""
        files = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.keep)]:
            old.unlink(missing_ok=True)
        codes = {name: code for code, name in STATE_NAMES.items()}
        jobs = []
        for path in files[-self.keep:]:
            try:
                rec = json.loads(path.read_text())
                job = Job("finetune", adapter_name=str(rec["adapter_name"]), owner=str(rec["owner"]),
                          job_id=str(rec["job_id"]))
            except (OSError, ValueError, KeyError):
                continue
            state, step, total = rec.get("state"), int(rec.get("step", 0)), int(rec.get("total_steps", 0))
            if state in ("queued", "running"):
                message = (f"the server stopped while this job was {state} (step {step} of {total}); no adapter "
                           f"was saved: start the fine-tune again")
                job.update(state=FAILED, message=message, step=step, total_steps=total)
                self.write(job)
            else:
                job.update(state=codes.get(state, FAILED), message=str(rec.get("message", "")), step=step,
                           total_steps=total)
            jobs.append(job)
        return jobs
