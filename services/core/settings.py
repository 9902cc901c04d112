"""The typed settings base every service subclasses.

One class per service, each field documented, read from the environment (prefix per
service, e.g. ``UNFRAGILE_VL_PORT``) and overridable from CLI flags. Nothing else in the
code base reads ``os.environ`` for configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings shared by every gRPC service."""

    model_config = SettingsConfigDict(env_prefix="UNFRAGILE_", extra="ignore", protected_namespaces=())

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one (tests).")
    metrics_port: int = Field(
        0, ge=-1, le=65535, description="Prometheus /metrics HTTP port; 0 picks a free one, -1 disables it."
    )
    max_message_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Largest gRPC message accepted or sent (both directions)."
    )
    grace_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM: how long in-flight requests may run before being cancelled."
    )
    max_workers: int = Field(64, gt=0, description="Threads serving RPCs (each open stream holds one).")
    max_concurrent_rpcs: int = Field(
        256, gt=0, description="RPCs in flight beyond which gRPC itself answers RESOURCE_EXHAUSTED."
    )
    models_dir: Path = Field(Path(".models"), description="Where the tiny offline models are built and found.")
    device: str = Field("auto", description='"auto" (cuda if present, else cpu), "cpu", "cuda", "cuda:1", ...')
    dtype: str = Field(
        "auto", description='"auto" (float16 on cuda, float32 on cpu), "float32", "float16", "bfloat16".'
    )
    log_level: str = Field("INFO", description="Python logging level.")
    tls_cert_file: Path | None = Field(None, description="PEM server certificate; set with tls_key_file to serve TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."
    )
    auth_tokens_file: Path | None = Field(
        None, description="File of '<token> <reader|admin> [name]' lines; when set, bearer auth is enforced."
    )
    allow_anonymous_reads: bool = Field(
        True, description="With auth on: let callers without a token use read-only RPCs (admin RPCs never)."
    )

    def resolve_device_dtype(self) -> tuple[Any, Any]:
        """Pick (torch.device, torch.dtype): cuda+fp16 when a GPU is present, else cpu+fp32."""
        import torch

        from common.errors import InvalidArgument

        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if self.device == "auto" else self.device))
        if self.dtype == "auto":
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, self.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise InvalidArgument(f"unknown dtype {self.dtype!r}; use float32, float16 or bfloat16")
        return device, dtype
