"""LitServe serving the bench models (run with the LitServe virtual environment's python).

``python -m benchmarks.peers.litserve_server vl --model DIR --check-model DIR --port P``
serves Kosmos-2 captions at ``/caption`` (and the check model at ``/caption-check``);
``... diffusion --model DIR --port P`` serves text-to-image at ``/generate``. Batching is
LitServe's own (``max_batch_size``, ``batch_timeout``), and ``predict`` runs one batched
model call the way LitServe's batching documentation shows (``batch``/``unbatch``).
"""

# No ``from __future__ import annotations``: LitServe builds its FastAPI endpoint from the
# evaluated annotation of ``decode_request``'s argument (the pydantic request body).
import base64
from typing import Any

import litserve as ls
from pydantic import BaseModel

from benchmarks.peers.workloads import ImageRequest, Kosmos2Captioner, StableDiffusionGenerator, server_arguments


class CaptionBody(BaseModel):
    image: str  # base64
    max_new_tokens: int


class GenerateBody(BaseModel):
    prompt: str
    seed: int
    steps: int
    size: int
    guidance: float


class CaptionAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, max_batch_size: int, batch_timeout: float, path: str) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=path)
        self.model_dir, self.threads = model_dir, threads

    def setup(self, device: str) -> None:
        self.captioner = Kosmos2Captioner(self.model_dir, self.threads)

    def decode_request(self, request: CaptionBody) -> tuple[bytes, int]:
        return base64.b64decode(request.image), request.max_new_tokens

    def batch(self, inputs: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        return list(inputs)

    def predict(self, batch: list[tuple[bytes, int]]) -> list[dict[str, Any]]:
        captions = self.captioner.caption([img for img, _ in batch], [n for _, n in batch])
        return [{"token_ids": c.token_ids, "text": c.text} for c in captions]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class GenerateAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/generate")
        self.model_dir, self.threads = model_dir, threads

    def setup(self, device: str) -> None:
        self.generator = StableDiffusionGenerator(self.model_dir, self.threads)

    def decode_request(self, request: GenerateBody) -> ImageRequest:
        return ImageRequest(request.prompt, request.seed, request.steps, request.size, request.guidance)

    def batch(self, inputs: list[ImageRequest]) -> list[ImageRequest]:
        return list(inputs)

    def predict(self, batch: list[ImageRequest]) -> list[bytes]:
        return self.generator.generate(batch)

    def unbatch(self, output: list[bytes]) -> list[bytes]:
        return output

    def encode_response(self, output: bytes) -> dict[str, str]:
        return {"image": base64.b64encode(output).decode()}


def main(argv: list[str] | None = None) -> None:
    p = server_arguments("vl: a second Kosmos-2 served at /caption-check")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch-timeout-ms", type=float, required=True)
    a = p.parse_args(argv)
    timeout = a.batch_timeout_ms / 1000
    apis: list[ls.LitAPI]
    if a.kind == "vl":
        apis = [CaptionAPI(a.model, a.threads, a.max_batch_size, timeout, "/caption")]
        if a.check_model:
            apis.append(CaptionAPI(a.check_model, a.threads, a.max_batch_size, timeout, "/caption-check"))
    else:
        apis = [GenerateAPI(a.model, a.threads, a.max_batch_size, timeout)]
    server = ls.LitServer(apis, accelerator="cpu", devices=1, workers_per_device=1, timeout=600)
    server.run(host="127.0.0.1", port=a.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
