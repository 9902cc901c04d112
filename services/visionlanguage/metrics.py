"""VisionLanguage-specific Prometheus metrics, named like vLLM/TGI's.

Request counts and RPC latency by code come from the core interceptor; these add what
a generation server needs: queue time, time to first token, inter-token latency,
end-to-end latency, batch sizes, tokens, running/waiting requests, feature-cache hits.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_P = "unfragile_vl_"
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

QUEUE_TIME = Histogram(_P + "request_queue_duration_seconds", "Time a request waited in the scheduler queue.",
                       buckets=_SLOW)
TTFT = Histogram(_P + "time_to_first_token_seconds", "Request accepted -> first generated token.", buckets=_SLOW)
ITL = Histogram(_P + "inter_token_latency_seconds", "Time between consecutive generated tokens of one request.",
                buckets=_FAST)
E2E = Histogram(_P + "e2e_request_latency_seconds", "Request accepted -> result ready, by kind of work.",
                ["kind"], buckets=_SLOW)
BATCH_SIZE = Histogram(_P + "batch_size", "Sequences in each decode step (continuous batching).",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
PREFILL_BATCH = Histogram(_P + "prefill_batch_size", "Sequences prefilled together when they join.",
                          buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
TOKENS = Counter(_P + "generation_tokens_total", "Tokens generated.")
PROMPT_TOKENS = Counter(_P + "prompt_tokens_total", "Prompt tokens prefilled (image slots included).")
RUNNING = Gauge(_P + "num_requests_running", "Sequences in the running decode batch.")
WAITING = Gauge(_P + "num_requests_waiting", "Work items waiting in the queue.")
CACHE = Counter(_P + "image_feature_cache_total", "Image-feature cache lookups by result.", ["result"])
PREFIX_CACHE = Counter(_P + "prefix_cache_total", "Image-prefix KV cache lookups ('<s><image>[slots]</image>', "
                       "reused across prompts of the same image) by result.", ["result"])
FINISHED = Counter(_P + "request_success_total", "Finished sequences by finish reason (length, eos, stop, "
                   "cancelled, error).", ["finish_reason"])
REJECTED = Counter(_P + "requests_rejected_total", "Requests refused because the queue was full.")
EMBED_BATCH = Histogram(_P + "embed_batch_requests", "Embed and Similarity requests combined into one model batch.",
                        buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
OUT_OF_MEMORY = Counter(_P + "out_of_memory_total", "Model calls that ran out of device memory, by stage (prefill, "
                        "decode, task, embed); the requests they hit got RESOURCE_EXHAUSTED or were retried smaller.",
                        ["stage"])
for _stage in ("prefill", "decode", "task", "embed"):  # every series exists at 0 before the first one
    OUT_OF_MEMORY.labels(_stage)
BATCH_LIMIT = Gauge(_P + "batch_limit", "Sequences the scheduler admits now: max_batch_size, lowered after running "
                    "out of memory and grown back step by step.")
PREPROCESS_TIME = Histogram(_P + "image_preprocess_seconds", "Resizing and normalising one request image (on the "
                            "preprocessing workers, off the scheduler thread).", buckets=_FAST)
