"""The OpenAI-compatible frontend's typed settings (env prefix ``UNFRAGILE_OPENAI_``).

Kept apart from ``app.py`` so the server runner, ``unfragile serve openai --help-settings``
and the tests can import them without building an application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from services.core.client import DEFAULT_MAX_MESSAGE_BYTES
from services.core.settings import HttpListenerSettings, listed, settings_config


class RemoteImages(BaseModel):
    """Fetching ``image_url`` values that are http(s) URLs (off by default: a server-side fetch
    of a client-chosen URL is an SSRF risk; see docs/openai.md)."""

    allow_remote_images: bool = Field(
        False, description="Fetch http(s) image URLs in chat and embedding requests. Off: only data: URLs.")
    remote_image_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https", "http"], description="URL schemes that may be fetched (allowlist).")
    remote_image_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Allowlist of "host" or "host:port" entries; when set, nothing else is fetched. Listed '
                    "entries are trusted even when they resolve to private or loopback addresses (an internal "
                    "image store); every other host must resolve to public addresses only.")
    remote_image_timeout_s: float = Field(10.0, gt=0, description="Whole download of one remote image, "
                                                                  "redirects included.")
    remote_image_max_redirects: int = Field(3, ge=0, le=10, description="Redirect hops followed (each re-checked).")

    @field_validator("remote_image_schemes", "remote_image_hosts", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return listed(v)

    @field_validator("remote_image_schemes")
    @classmethod
    def _schemes(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s.lower() not in ("http", "https")]
        if bad:
            raise ValueError(f"remote_image_schemes may only hold http and https, got {bad}")
        return [s.lower() for s in v]


class Settings(RemoteImages, HttpListenerSettings):
    """OpenAI-compatible HTTP frontend settings. ``port`` is its HTTP port.

    Inherited ``tls_cert_file``/``tls_key_file``/``tls_client_ca_file`` make it serve HTTPS.
    It holds no model: every request becomes a call to the VisionLanguage (chat, embeddings)
    or Diffusion (images) gRPC service.
    """

    model_config = settings_config("UNFRAGILE_OPENAI_")

    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one (tests).")
    metrics_port: int = Field(
        -1, ge=-1, le=65535, description="Extra Prometheus port (0 = any free, -1 = none); the metrics are always "
                                         "on /metrics of the HTTP port too.")
    visionlanguage_target: str = Field(
        "127.0.0.1:50051", description="host:port of the VisionLanguage service (chat, embeddings); \"\" = none "
                                       "(dns:///vl-headless:50051 spreads calls over replicas).")
    diffusion_target: str = Field(
        "127.0.0.1:50052", description="host:port of the Diffusion service (images); \"\" = none.")
    upstream_root_ca: Path | None = Field(None, description="PEM CA to verify TLS upstreams (unset = plaintext).")
    upstream_client_cert: Path | None = Field(None, description="PEM client certificate for mutual TLS upstream.")
    upstream_client_key: Path | None = Field(None, description="PEM key of upstream_client_cert.")
    upstream_token: SecretStr = Field(
        SecretStr(""), description="Bearer token sent to the gRPC services when their auth is on (\"\" = none).")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, gt=0,
                                   description="Largest gRPC message sent to or accepted from a service.")
    chat_timeout_s: float = Field(120.0, gt=0, description="Deadline of each chat or embeddings call; past it "
                                                           "the answer is 504.")
    image_timeout_s: float = Field(600.0, gt=0, description="Deadline of each image generation or edit; past it "
                                                            "the answer is 504.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys accepted as 'Authorization: Bearer <key>' (JSON list or "
                                          "comma-separated). Empty together with api_keys_file = no auth.")
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one per line ('#' comments); added to api_keys.")
    max_body_bytes: int = Field(
        40 * 1024 * 1024, gt=0, description="Largest request body accepted; more is 413.")
    max_image_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Largest single image (decoded data: URL, upload or download); "
                                            "more is 413.")
    model_info_ttl_s: float = Field(30.0, ge=0, description="How long the services' ModelInfo (GET /v1/models, "
                                                            "model checks) is cached.")
    owned_by: str = Field("unfragile", description="owned_by of every entry of GET /v1/models.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> Any:
        return listed(v)

    def all_api_keys(self) -> list[bytes]:
        """Every accepted key: ``api_keys`` plus the lines of ``api_keys_file``."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            for raw in Path(self.api_keys_file).read_text().splitlines():
                line = raw.split("#", 1)[0].strip()
                if line:
                    keys.append(line)
        return [k.encode() for k in keys if k]
