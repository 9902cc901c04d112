"""Every error as the SDK's own exception class, in OpenAI's shape; API keys; client disconnects
cancelling the generation upstream."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from services.core import metrics as core_metrics
from services.openai import metrics as oa_metrics
from services.openai.server import start
from services.visionlanguage import metrics as vl_metrics
from tests.openai.conftest import OpenAIStack, data_url, image_message
from tests.vl.vlhelpers import png


def _value(metric, *labels: str) -> float:
    return metric.labels(*labels)._value.get() if labels else metric._value.get()


def _wait(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_bad_input_is_400_with_the_service_message_in_openai_shape(stack: OpenAIStack) -> None:
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as err:  # the VisionLanguage service's own message
        client.chat.completions.create(model=stack.vl_model, messages=image_message(data_url(b"not an image")))
    assert "not a decodable image" in err.value.message
    assert err.value.body["type"] == "invalid_request_error" and err.value.code == "invalid_argument"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=stack.vl_model, messages=image_message(data_url(png())), n=2)
    assert err.value.param == "n" and "n=1" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=stack.vl_model, messages=[{"role": "user", "content": "hi"}])
    assert "exactly one image" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=stack.vl_model, messages=image_message(data_url(png())),
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    assert err.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as err:  # the Diffusion service's own message
        client.images.generate(prompt="x", size="60x64")
    assert "multiple of 8" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(prompt="x", size="big")
    assert err.value.param == "size"
    raw = httpx.post(f"{stack.base_url}/chat/completions", headers={"Authorization": "Bearer sk-test-key"},
                     json={"model": stack.vl_model, "messages": "nope"})
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert raw.json()["error"]["param"] == "messages"


def test_unknown_model_is_404(stack: OpenAIStack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        stack.client().chat.completions.create(model="gpt-4o", messages=image_message(data_url(png())))
    assert err.value.code == "model_not_found" and stack.vl_model in err.value.message
    with pytest.raises(openai.NotFoundError):
        stack.client().images.generate(model="dall-e-3", prompt="x")
    with pytest.raises(openai.NotFoundError):
        stack.client().models.retrieve("dall-e-3")


def test_api_keys_guard_v1_only_and_are_never_echoed(stack: OpenAIStack) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        stack.client(api_key="sk-wrong").models.list()
    assert "sk-wrong" not in json.dumps(err.value.body)
    missing = httpx.get(f"{stack.base_url}/models")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{stack.frontend.url}/health").status_code == 200
    metrics = httpx.get(f"{stack.frontend.url}/metrics")
    assert metrics.status_code == 200 and "unfragile_openai_requests_total" in metrics.text
    assert "sk-test-key" not in metrics.text
    ready = httpx.get(f"{stack.frontend.url}/readyz").json()
    assert ready["services"] == {"visionlanguage": "SERVING", "diffusion": "SERVING"}


def test_body_and_image_over_the_limits_are_413(stack: OpenAIStack) -> None:
    big = data_url(b"\x89PNG" + bytes(300 * 1024))  # over max_image_bytes (256 KiB), under the body limit
    with pytest.raises(openai.APIStatusError) as err:
        stack.client().chat.completions.create(model=stack.vl_model, messages=image_message(big))
    assert err.value.status_code == 413 and err.value.code == "image_too_large"
    huge = data_url(bytes(1100 * 1024))  # over max_body_bytes (1 MiB)
    with pytest.raises(openai.APIStatusError) as err:
        stack.client().chat.completions.create(model=stack.vl_model, messages=image_message(huge))
    assert err.value.status_code == 413 and err.value.code == "request_too_large"

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(12):
            yield bytes(100 * 1024)

    streamed = httpx.post(f"{stack.base_url}/embeddings", content=chunks(),
                          headers={"Authorization": "Bearer sk-test-key", "Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_queue_full_is_429_with_retry_after(stack: OpenAIStack) -> None:
    """The Diffusion service holds one waiting job (max_queue=1): with one running and one waiting,
    the next is RESOURCE_EXHAUSTED, which the SDK raises as RateLimitError. The running job has 999
    steps, so it outlasts the test on a loaded machine; closing its stream cancels it."""
    client = stack.client()
    running = client.images.generate(prompt="slow", size="64x64", stream=True, partial_images=3,
                                     extra_body={"num_inference_steps": 999, "seed": 1})
    waiting: dict[str, object] = {}
    try:
        next(iter(running))  # a partial image: the job is running
        thread = threading.Thread(target=lambda: waiting.update(r=_try(client, "queued")), daemon=True)
        thread.start()
        engine = stack.diffusion.service.servicer.engine
        _wait(lambda: engine.waiting >= 1)  # this stack's queue: other engines in the process reset the gauge
        with pytest.raises(openai.RateLimitError) as err:
            client.images.generate(prompt="refused", size="64x64", extra_body={"num_inference_steps": 1})
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert err.value.code == "resource_exhausted"
    finally:
        running.close()  # the client leaves: the running job is cancelled upstream
    thread.join(120)
    assert "r" in waiting and not isinstance(waiting["r"], Exception), waiting


def test_steps_past_the_schedulers_training_timesteps_are_400_not_a_server_error(stack: OpenAIStack) -> None:
    """max_steps (1000 here) allows 1000, but the tiny model's DDIM scheduler has 1000 training timesteps:
    the request is refused with the range this model takes, instead of failing inside the scheduler."""
    with pytest.raises(openai.BadRequestError) as err:
        stack.client().images.generate(prompt="many steps", size="64x64", extra_body={"num_inference_steps": 1000})
    assert "1000 training timesteps" in err.value.message and "1..999 steps" in err.value.message


def _try(client: openai.OpenAI, prompt: str) -> object:
    try:
        return client.images.generate(prompt=prompt, size="64x64", extra_body={"num_inference_steps": 1})
    except Exception as exc:  # reported to the test thread
        return exc


def test_service_down_is_503_and_deadline_is_504(stack: OpenAIStack) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    down = start(stack.frontend_settings(visionlanguage_target=dead))
    slow = start(stack.frontend_settings(chat_timeout_s=0.3))
    try:
        client = openai.OpenAI(base_url=f"{down.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=stack.vl_model, messages=image_message(data_url(png())))
        assert err.value.status_code == 503 and "retry-after" in err.value.response.headers
        assert client.images.generate(prompt="x", size="64x64", extra_body={"num_inference_steps": 1}).data
        stack.runner.delay_s = 0.05
        client = openai.OpenAI(base_url=f"{slow.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            client.chat.completions.create(model=stack.vl_model, messages=image_message(data_url(png())),
                                           max_tokens=200)
        assert err.value.status_code == 504 and err.value.code == "deadline_exceeded"
    finally:
        stack.runner.delay_s = 0.0
        down.stop()
        slow.stop()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
def test_client_disconnect_cancels_the_generation_upstream(stack: OpenAIStack, stream: bool) -> None:
    """The client leaves mid-generation: the gRPC call is cancelled, the service stops decoding."""
    rpc = "StreamCaption" if stream else "Caption"
    cancelled = _value(vl_metrics.FINISHED, "cancelled")
    grpc_cancelled = _value(core_metrics.GRPC_REQUESTS, "visionlanguage", rpc, "CANCELLED")
    frontend_cancelled = _value(oa_metrics.UPSTREAM_CANCELLED, rpc)
    tokens = _value(vl_metrics.TOKENS)
    stack.runner.delay_s = 0.02  # 256 tokens would take > 5 s
    stack.runner.set_script(" a snowman" * 200)  # never </s> before 256 tokens: only a cancel ends it early
    body = {"model": stack.vl_model, "messages": image_message(data_url(png())), "max_tokens": 256,
            "stream": stream}
    headers = {"Authorization": "Bearer sk-test-key"}
    try:
        if stream:
            with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, headers=headers) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        break  # a token arrived: generation is under way; leave
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=headers, timeout=1.0)
        _wait(lambda: _value(vl_metrics.FINISHED, "cancelled") > cancelled)
    finally:
        stack.runner.delay_s = 0.0
        stack.runner.set_script(None)
    _wait(lambda: _value(core_metrics.GRPC_REQUESTS, "visionlanguage", rpc, "CANCELLED") > grpc_cancelled)
    assert _value(oa_metrics.UPSTREAM_CANCELLED, rpc) == frontend_cancelled + 1
    assert _value(vl_metrics.TOKENS) - tokens < 200  # decoding stopped long before max_tokens
