"""LitServe serving the bench models (run with the LitServe virtual environment's python).

``python -m benchmarks.peers.litserve_server vl --model DIR --check-model DIR --port P``
serves Kosmos-2 captions at ``/caption`` (and the check model at ``/caption-check``);
``... diffusion --model DIR --port P`` serves text-to-image at ``/generate``;
``... openai --model DIR --check-model DIR --port P`` serves Kosmos-2 through LitServe's
own ``OpenAISpec`` at ``/v1/chat/completions`` (the check model at
``/check/v1/chat/completions``: the SDK's ``base_url`` ends in ``/check/v1``). Batching is
LitServe's own (``max_batch_size``, ``batch_timeout``), and ``predict`` runs one batched
model call the way LitServe's batching documentation shows (``batch``/``unbatch``).

With ``OpenAISpec`` LitServe parses the chat request (pydantic: unknown fields such as
``seed``, ``stream_options``, ``logprobs`` or ``extra_body`` extensions are dropped before
the LitAPI sees the request) and assembles the response; everything else is the LitAPI's:
the ``image_url`` part arrives as the client's string, so ``ChatAPI`` decodes the data URL
itself (it fetches nothing), reads ``max_tokens``, and captions greedily whatever
``temperature`` says. The spec streams internally (``predict`` and ``encode_response`` must
be generators); with batching, each step yields one message per request, as LitServe's
own batched OpenAI example does, because the spec's default ``encode_response`` cannot
encode a batch. LitServe decodes every request of a batch inside one ``try``: a request
``decode_request`` refuses (HTTP 400) fails the other requests batched with it too.
"""

# No ``from __future__ import annotations``: LitServe builds its FastAPI endpoint from the
# evaluated annotation of ``decode_request``'s argument (the pydantic request body).
import base64
from collections.abc import Iterator
from typing import Any

import litserve as ls
from fastapi import HTTPException
from litserve.specs.openai import ChatCompletionRequest, ChatMessage, OpenAISpec
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


def data_url_image(messages: list[ChatMessage]) -> bytes:
    """The one image of the user messages, from its base64 data URL (the part LitServe leaves to the LitAPI)."""
    urls: list[str] = []
    for m in messages:
        if m.role != "user" or m.content is None:
            continue
        for part in [m.content] if isinstance(m.content, str) else m.content:
            url = getattr(part, "image_url", None)
            if url is None:
                raise HTTPException(400, "this server captions an image: send image_url content parts only")
            urls.append(url if isinstance(url, str) else url.url)
    if len(set(urls)) != 1:
        raise HTTPException(400, f"expected exactly one image in the user messages, got {len(set(urls))}")
    header, sep, payload = urls[0].partition(",")
    if not (sep and header.startswith("data:image/") and header.endswith(";base64")):
        raise HTTPException(400, "image_url must be a data URL (data:image/png;base64,...); URLs are not fetched")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise HTTPException(400, f"image_url is not valid base64: {exc}") from exc


class ChatAPI(ls.LitAPI):
    """Greedy brief captions as chat completions (``OpenAISpec``), batched: needs ``max_batch_size`` > 1."""

    def __init__(self, model_dir: str, threads: int, max_batch_size: int, batch_timeout: float,
                 path: str = "/v1/chat/completions") -> None:
        spec = OpenAISpec()
        spec.api_path = path  # LitServe checks paths for collisions before the spec reads the LitAPI's
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=path, spec=spec)
        self.model_dir, self.threads = model_dir, threads

    def setup(self, device: str) -> None:
        self.captioner = Kosmos2Captioner(self.model_dir, self.threads)

    def decode_request(self, request: ChatCompletionRequest) -> tuple[bytes, int]:
        return data_url_image(request.messages), request.max_completion_tokens or request.max_tokens or 32

    def batch(self, inputs: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        return list(inputs)

    def predict(self, batch: list[tuple[bytes, int]]) -> Iterator[list[dict[str, Any]]]:
        captions = self.captioner.caption([img for img, _ in batch], [n for _, n in batch])
        yield [{"role": "assistant", "content": c.completion, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": len(c.token_ids), "total_tokens": c.prompt_tokens + len(c.token_ids)}
               for c in captions]

    def unbatch(self, output: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
        return output

    def encode_response(self, output: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
        yield from output


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
    p = server_arguments("vl, openai: a second Kosmos-2 at /caption-check, /check/v1/chat/completions",
                         ("vl", "diffusion", "openai"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch-timeout-ms", type=float, required=True)
    a = p.parse_args(argv)
    timeout = a.batch_timeout_ms / 1000
    apis: list[ls.LitAPI]
    if a.kind == "vl":
        apis = [CaptionAPI(a.model, a.threads, a.max_batch_size, timeout, "/caption")]
        if a.check_model:
            apis.append(CaptionAPI(a.check_model, a.threads, a.max_batch_size, timeout, "/caption-check"))
    elif a.kind == "openai":
        apis = [ChatAPI(a.model, a.threads, a.max_batch_size, timeout)]
        if a.check_model:
            apis.append(ChatAPI(a.check_model, a.threads, a.max_batch_size, timeout, "/check/v1/chat/completions"))
    else:
        apis = [GenerateAPI(a.model, a.threads, a.max_batch_size, timeout)]
    server = ls.LitServer(apis, accelerator="cpu", devices=1, workers_per_device=1, timeout=600)
    server.run(host="127.0.0.1", port=a.port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
