"""Request bodies of the OpenAI API as this frontend accepts them (pydantic, so FastAPI validates
them and a bad field is a 400 naming it).

Fields OpenAI defines that this frontend cannot honour are refused when set to anything but
their neutral value (``unsupported``), never silently dropped. Unknown fields are ignored,
as OpenAI-compatible servers do for fields clients add (``user``, ``metadata``, ...).
Extensions (Kosmos-2 grounding and modes, Stable Diffusion's knobs) are plain extra fields
the SDKs send through ``extra_body``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.openai.errors import invalid


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Body):
    url: str = Field(min_length=1, description="data:image/...;base64,... or (when allowed) an http(s) URL.")
    detail: str | None = Field(None, description="Accepted and ignored: Kosmos-2 always sees 224x224.")


class ContentPart(_Body):
    type: str = Field(description='"text" or "image_url".')
    text: str | None = None
    image_url: ImageURL | str | None = None

    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else (self.image_url.url if self.image_url else "")


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


CaptionMode = Literal["brief", "detailed", "prompt", "question", "phrases"]


class ChatCompletionRequest(_Body):
    model: str = Field(min_length=1, description="An id from GET /v1/models (the VisionLanguage model).")
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # extensions (extra_body)
    grounding: bool | None = Field(None, description="Kosmos-2 grounding: add <grounding> and return "
                                                     "choices[0].message.grounding (phrases, spans, boxes).")
    mode: CaptionMode | None = Field(None, description="Kosmos-2 prompt template; default: brief without text, "
                                                       "prompt with text.")
    phrases: list[str] | None = Field(None, description="mode=phrases: the expressions to locate.")
    language: str | None = Field(None, description="Template/output language (ISO 639-1), default en.")
    top_k: int | None = Field(None, ge=0)
    num_beams: int | None = Field(None, ge=0)
    # defined by OpenAI, not supported: refused unless neutral
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    audio: Any = None
    modalities: list[str] | None = None

    def unsupported(self) -> None:
        """400 for an OpenAI field set to something this frontend cannot do."""
        checks: list[tuple[str, bool, str]] = [
            ("tools", bool(self.tools) or bool(self.functions), "Kosmos-2 does not call tools"),
            ("tool_choice", self.tool_choice not in (None, "none") or self.function_call not in (None, "none"),
             "Kosmos-2 does not call tools"),
            ("logprobs", bool(self.logprobs) or bool(self.top_logprobs), "log probabilities are not returned"),
            ("response_format", (self.response_format or {}).get("type", "text") != "text",
             "only text answers are produced (no JSON mode)"),
            ("frequency_penalty", bool(self.frequency_penalty), "penalties are not supported"),
            ("presence_penalty", bool(self.presence_penalty), "penalties are not supported"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ("audio", self.audio is not None or any(m != "text" for m in self.modalities or []),
             "only text output is produced"),
        ]
        for param, bad, why in checks:
            if bad:
                raise invalid(f"{param} is not supported by this server: {why}", param, "unsupported_parameter")
        if self.n not in (None, 1):
            raise invalid(f"n={self.n} is not supported: this server returns one choice per request (n=1); "
                          "send several requests (with different seeds) for several answers", "n",
                          "unsupported_parameter")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise invalid("max_tokens and max_completion_tokens differ; send one of them", "max_tokens")

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1)
    # A string, a list of strings, or (images) content parts {"type": "image_url", "image_url": {"url": ...}}
    # mixed with strings: one embedding per item, in order. Token-id lists are refused (Kosmos-2's Embed
    # takes text). Parsed in embeddings.py for precise messages.
    input: str | list[Any] | dict[str, Any] | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    # vLLM's multimodal form: {"messages": [{"role": "user", "content": [{"type": "image_url", ...}]}]}
    messages: list[Message] | None = None


class ControlSpec(BaseModel):
    """One control map (extension): the Diffusion service's ``Control``. Its fields are checked strictly (a
    misspelt one is a 400, not silently dropped); the values are checked by the service, whose message
    comes back as the 400."""

    model_config = ConfigDict(extra="forbid")

    controlnet: str = Field(min_length=1, description="A control model name (GET /v1/controlnets).")
    image: str | None = Field(None, description="The control image: a data: URL, plain base64, or (with "
                                                "allow_remote_images) an http(s) URL. Edits may send it as a "
                                                "control_image file part instead.")
    preprocess: str | None = Field(None, description='"none" (the image is the map), "canny", "depth".')
    conditioning_scale: float | None = Field(None, description="[0, 2], default 1; 0 = no effect.")
    guidance_start: float | None = Field(None, description="Fraction of the steps where it starts, [0, 1).")
    guidance_end: float | None = Field(None, description="Fraction of the steps where it stops, (0, 1].")
    kind: Literal["controlnet", "t2i_adapter"] | None = Field(None, description="Unset = the model's own kind.")
    canny_low_threshold: int | None = Field(None, ge=0, le=255, description="Canny thresholds; 0/unset = 100.")
    canny_high_threshold: int | None = Field(None, ge=0, le=255, description="0/unset = 200.")


class ImageGenerationRequest(_Body):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int | None = Field(None, ge=1)
    size: str | None = Field(None, description='"WIDTHxHEIGHT" or "auto" (the model\'s native size).')
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    stream: bool | None = False
    partial_images: int | None = Field(None, ge=0, le=3)
    background: Literal["transparent", "opaque", "auto"] | None = None
    quality: str | None = Field(None, description="Accepted and ignored (steps set the quality: "
                                                  "num_inference_steps).")
    style: str | None = Field(None, description="Accepted and ignored.")
    # extensions (extra_body)
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    scheduler: str | None = None
    adapter: str | list[str] | None = Field(None, description='LoRA adapter "name" or "name:weight" (or a list).')
    controls: list[ControlSpec] | None = Field(None, description="ControlNets / T2I-Adapters steering the "
                                                                 "image (several = multi-ControlNet).")
    ip_adapter: str | None = Field(None, description="IP-Adapter name (GET /v1/controlnets, kind ip_adapter).")
    reference_images: list[str] | None = Field(None, description="The IP-Adapter's reference images (1..4): "
                                                                 "data: URLs, base64 or http(s) URLs.")
    ip_adapter_scale: float | None = Field(None, description="Strength of the image prompt, [0, 2], default 1.")
    return_control_maps: bool | None = Field(None, description="Return each control's map (after "
                                                               "preprocessing) in control_maps.")
