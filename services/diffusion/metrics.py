"""Diffusion-specific Prometheus metrics (request counts/latency come from the core interceptor).

Names follow vLLM/TGI conventions with the ``unfragile_diffusion_`` prefix. ``mode`` is
one of txt2img, img2img, inpaint, style.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.core.metrics import LATENCY_BUCKETS

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

QUEUE_TIME = Histogram(
    "unfragile_diffusion_queue_duration_seconds", "Time a generation job waited in the queue before running.",
    ["mode"], buckets=LATENCY_BUCKETS)
FIRST_PREVIEW = Histogram(
    "unfragile_diffusion_time_to_first_preview_seconds", "Accepted -> first preview sent (jobs with previews).",
    ["mode"], buckets=LATENCY_BUCKETS)
STEP_TIME = Histogram(
    "unfragile_diffusion_step_duration_seconds", "Wall time of one denoising step of a UNet batch.",
    ["mode"], buckets=_STEP_BUCKETS)
E2E_TIME = Histogram(
    "unfragile_diffusion_e2e_request_latency_seconds", "Accepted -> final images ready, per generation job.",
    ["mode"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram(
    "unfragile_diffusion_batch_size", "Images in each UNet batch (cross-request batching).",
    ["mode"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
IMAGES = Counter("unfragile_diffusion_images_generated_total", "Images returned to clients.", ["mode"])
JOBS_FINISHED = Counter(
    "unfragile_diffusion_jobs_finished_total", "Generation jobs by final state.", ["mode", "state"])
RUNNING = Gauge("unfragile_diffusion_num_requests_running", "Generation jobs being denoised now.")
WAITING = Gauge("unfragile_diffusion_num_requests_waiting", "Generation jobs waiting in the queue.")
FINETUNE_JOBS = Gauge(
    "unfragile_diffusion_finetune_jobs", "Fine-tune jobs by state (queued, running, succeeded, failed, cancelled).",
    ["state"])
FINETUNE_LOSS = Gauge("unfragile_diffusion_finetune_loss", "Loss of the last training step.", ["adapter"])
FINETUNE_STEP_TIME = Histogram(
    "unfragile_diffusion_finetune_step_duration_seconds", "Wall time of one LoRA training step.",
    buckets=_STEP_BUCKETS)
