"""PyTriton serving the bench models (run with the PyTriton virtual environment's python).

PyTriton starts the real Triton Inference Server binary and binds Python inference
callables to it; Triton's dynamic batcher (``max_batch_size``,
``max_queue_delay_microseconds``) forms the batches, and the ``@batch`` decorator hands
them to the callable as numpy arrays, as PyTriton's documentation shows.

``python -m benchmarks.peers.pytriton_server vl --model DIR --check-model DIR --http-port P ...``
binds ``kosmos2`` (and ``kosmos2_check``); ``... diffusion --model DIR ...`` binds ``sd``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peers.workloads import ImageRequest, Kosmos2Captioner, StableDiffusionGenerator, server_arguments


def caption_fn(captioner: Kosmos2Captioner) -> Callable[..., dict[str, np.ndarray]]:
    @batch
    def infer(image: np.ndarray, max_new_tokens: np.ndarray) -> dict[str, np.ndarray]:
        captions = captioner.caption([bytes(row[0]) for row in image], [int(n[0]) for n in max_new_tokens])
        width = max(1, max(len(c.token_ids) for c in captions))
        ids = np.full((len(captions), width), -1, dtype=np.int64)  # -1 pads rows shorter than the longest
        for i, c in enumerate(captions):
            ids[i, :len(c.token_ids)] = c.token_ids
        text = np.array([[c.text.encode()] for c in captions], dtype=np.object_)
        return {"token_ids": ids, "text": text}

    return infer


def generate_fn(generator: StableDiffusionGenerator) -> Callable[..., dict[str, np.ndarray]]:
    @batch
    def infer(prompt: np.ndarray, seed: np.ndarray, steps: np.ndarray, size: np.ndarray,
              guidance: np.ndarray) -> dict[str, np.ndarray]:
        requests = [ImageRequest(bytes(p[0]).decode(), int(s[0]), int(n[0]), int(z[0]), float(g[0]))
                    for p, s, n, z, g in zip(prompt, seed, steps, size, guidance)]
        pngs = generator.generate(requests)
        return {"image": np.array([[png] for png in pngs], dtype=np.object_)}

    return infer


def _config(max_batch_size: int, delay_us: int) -> ModelConfig:
    return ModelConfig(max_batch_size=max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us))


def bind_vl(triton: Triton, name: str, model_dir: str, threads: int, config: ModelConfig) -> None:
    triton.bind(
        model_name=name, infer_func=caption_fn(Kosmos2Captioner(model_dir, threads)),
        inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,)),
                Tensor(name="max_new_tokens", dtype=np.int32, shape=(1,))],
        outputs=[Tensor(name="token_ids", dtype=np.int64, shape=(-1,)),
                 Tensor(name="text", dtype=np.bytes_, shape=(1,))],
        config=config, strict=True)


def bind_diffusion(triton: Triton, model_dir: str, threads: int, config: ModelConfig) -> None:
    triton.bind(
        model_name="sd", infer_func=generate_fn(StableDiffusionGenerator(model_dir, threads)),
        inputs=[Tensor(name="prompt", dtype=np.bytes_, shape=(1,)), Tensor(name="seed", dtype=np.int64, shape=(1,)),
                Tensor(name="steps", dtype=np.int32, shape=(1,)), Tensor(name="size", dtype=np.int32, shape=(1,)),
                Tensor(name="guidance", dtype=np.float32, shape=(1,))],
        outputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
        config=config, strict=True)


def main(argv: list[str] | None = None) -> None:
    p = server_arguments("vl: a second Kosmos-2 bound as kosmos2_check")
    for port in ("--http-port", "--grpc-port", "--metrics-port"):
        p.add_argument(port, type=int, required=True)
    p.add_argument("--queue-delay-us", type=int, required=True)
    p.add_argument("--workspace", required=True, help="Triton's model store and working files")
    a = p.parse_args(argv)
    config: Any = TritonConfig(http_address="127.0.0.1", http_port=a.http_port, grpc_address="127.0.0.1",
                               grpc_port=a.grpc_port, metrics_port=a.metrics_port, allow_metrics=False, log_verbose=0)
    with Triton(config=config, workspace=a.workspace) as triton:
        if a.kind == "vl":
            bind_vl(triton, "kosmos2", a.model, a.threads, _config(a.max_batch_size, a.queue_delay_us))
            if a.check_model:
                bind_vl(triton, "kosmos2_check", a.check_model, a.threads, _config(a.max_batch_size, a.queue_delay_us))
        else:
            bind_diffusion(triton, a.model, a.threads, _config(a.max_batch_size, a.queue_delay_us))
        triton.serve()


if __name__ == "__main__":
    main()
