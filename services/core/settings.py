"""The typed settings bases every service composes.

Each setting is declared once, with a description, in one of these pydantic models:

- ``ListenerSettings``: what any network server needs (bind address, ports, TLS, logging);
  ``HttpListenerSettings`` adds the base URL of an HTTP one (the gateway, the OpenAI frontend).
- ``GrpcServerSettings``: a ``ListenerSettings`` plus the gRPC server's limits and auth.
- ``ModelSettings``: where models live and which device/dtype runs them.
- Domain configs (an engine's batching knobs, a service's request limits, the MatchGraph
  scoring settings) are plain pydantic models declared next to the code they configure.

A service's ``Settings`` inherits the parts it needs, so every field keeps a flat name
(``--set max_batch_size=8``, ``UNFRAGILE_VL_MAX_BATCH_SIZE=8``), and ``section`` builds a
domain config straight from it: nothing is declared twice or mapped by position.
Nothing else in the code base reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

M = TypeVar("M", bound=BaseModel)


def settings_config(env_prefix: str) -> SettingsConfigDict:
    """The model config of a service's Settings: its env prefix, unknown variables ignored."""
    return SettingsConfigDict(env_prefix=env_prefix, extra="ignore", protected_namespaces=(),
                              validate_default=True)


def section(settings: BaseModel, config_cls: type[M], **extra: Any) -> M:
    """The ``config_cls`` part of ``settings`` (the fields it inherited), plus ``extra`` values."""
    values = {name: getattr(settings, name) for name in config_cls.model_fields if hasattr(settings, name)}
    return config_cls.model_validate({**values, **extra})


def listed(v: Any) -> Any:
    """A list setting given as a string (env vars, ``--set name=a,b``): a JSON list or comma-separated values."""
    if isinstance(v, str):
        text = v.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return v


def describe(settings_cls: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(field, type, default, description) of every field, for ``--help-settings``."""
    rows = []
    for name, info in settings_cls.model_fields.items():
        default = "" if info.is_required() else repr(info.get_default(call_default_factory=True))
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation)
        annotation = annotation.replace("typing.", "").replace("pathlib.", "")
        rows.append((name, annotation, default, info.description or ""))
    return rows


class ListenerSettings(BaseSettings):
    """What every network server of the project needs."""

    model_config = settings_config("UNFRAGILE_")

    host: str = Field("127.0.0.1", description="Address the server binds to.")
    port: int = Field(0, ge=0, le=65535, description="Port the server listens on; 0 picks a free one (tests).")
    metrics_port: int = Field(
        0, ge=-1, le=65535, description="Prometheus /metrics HTTP port; 0 picks a free one, -1 disables it."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    grace_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM: how long in-flight requests may run before being cancelled."
    )
    tls_cert_file: Path | None = Field(None, description="PEM server certificate; set with tls_key_file to serve TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."
    )


class HttpListenerSettings(ListenerSettings):
    """An HTTP server (the gateway, the OpenAI frontend): a listener with an address clients are given."""

    def base_url(self, port: int | None = None) -> str:
        """http(s)://host:port of this server (a wildcard bind address shown as 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "https" if self.tls_cert_file and self.tls_key_file else "http"
        return f"{scheme}://{host}:{port if port is not None else self.port}"


class GrpcServerSettings(ListenerSettings):
    """A gRPC server: listener, message and concurrency limits, drain, bearer auth."""

    max_message_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest gRPC message accepted or sent (both directions)."
    )
    max_workers: int = Field(64, gt=0, description="Threads serving RPCs (each open stream holds one).")
    max_concurrent_rpcs: int = Field(
        256, gt=0, description="RPCs in flight beyond which gRPC itself answers RESOURCE_EXHAUSTED."
    )
    auth_tokens_file: Path | None = Field(
        None, description="File of '<token> <reader|admin> [name]' lines; when set, bearer auth is enforced."
    )
    allow_anonymous_reads: bool = Field(
        True, description="With auth on: let callers without a token use read-only RPCs (admin RPCs never)."
    )


class ModelSettings(BaseSettings):
    """A model server: where models live, and the device and dtype that run them."""

    model_config = settings_config("UNFRAGILE_")

    models_dir: Path = Field(Path(".models"), description="Where the tiny offline models are built and found.")
    device: str = Field("auto", description='"auto" (cuda if present, else cpu), "cpu", "cuda", "cuda:1", ...')
    dtype: str = Field(
        "auto", description='"auto" (float16 on cuda, float32 on cpu), "float32", "float16", "bfloat16".'
    )

    def resolve_device_dtype(self) -> tuple[Any, Any]:
        """Pick (torch.device, torch.dtype): cuda+fp16 when a GPU is present, else cpu+fp32."""
        import torch

        from common.errors import InvalidArgument

        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
        if self.dtype == "auto":
            return device, torch.float16 if device.type == "cuda" else torch.float32
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise InvalidArgument(f"unknown dtype {self.dtype!r}; use float32, float16 or bfloat16")
        return device, dtype
