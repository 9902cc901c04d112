"""The frontend's only way to the models: async gRPC channels to VisionLanguage and Diffusion.

One ``grpc.aio`` channel per service, opened in the app's lifespan (it belongs to the
serving loop), round robin over every address the target resolves to. Every failed call
leaves here as ``APIError`` with the service's status mapped to HTTP and its message kept.
``models()`` asks each service's ModelInfo (cached ``model_info_ttl_s``) so ``/v1/models``
lists ids exactly as the services report them, and requests name those ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from services.core.client import bearer, channel
from services.core.names import full_name
from services.openai import metrics
from services.openai.errors import APIError, from_grpc
from services.openai.settings import Settings
from unfragile.common.v1 import common_pb2 as cpb
from unfragile.diffusion.v1 import diffusion_pb2_grpc as df_grpc
from unfragile.visionlanguage.v1 import visionlanguage_pb2_grpc as vl_grpc

VL, DIFFUSION = "visionlanguage", "diffusion"


@dataclass(frozen=True)
class ServedModel:
    """One entry of GET /v1/models: the id a service reports, and which service serves it."""

    id: str
    service: str
    architecture: str


class Upstreams:
    """Channels and stubs of both services, with their ModelInfo cached."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metadata = bearer(settings.upstream_token.get_secret_value()) or None
        self.channels: dict[str, grpc.aio.Channel] = {}
        for name, target in ((VL, settings.visionlanguage_target), (DIFFUSION, settings.diffusion_target)):
            if target:
                self.channels[name] = channel(
                    target, settings.max_message_bytes, root_ca=settings.upstream_root_ca,
                    client_cert=settings.upstream_client_cert, client_key=settings.upstream_client_key,
                    balance=True, aio=True)
        self.vl = vl_grpc.VisionLanguageStub(self.channels[VL]) if VL in self.channels else None
        self.diffusion = df_grpc.DiffusionStub(self.channels[DIFFUSION]) if DIFFUSION in self.channels else None
        self._models: dict[str, tuple[float, ServedModel | None]] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ models
    async def _model_info(self, service: str) -> ServedModel | None:
        """The model ``service`` serves (None when it is not configured or does not answer)."""
        now = time.monotonic()
        cached = self._models.get(service)
        if cached is not None and now - cached[0] < self.settings.model_info_ttl_s and cached[1] is not None:
            return cached[1]
        stub: Any = self.vl if service == VL else self.diffusion
        if stub is None:
            return None
        try:
            info = await stub.ModelInfo(cpb.ModelInfoRequest(), timeout=5.0, metadata=self.metadata)
        except grpc.aio.AioRpcError:
            self._models[service] = (now, None)
            return None
        model = ServedModel(info.model_id, service, info.architecture)
        self._models[service] = (now, model)
        return model

    async def models(self) -> list[ServedModel]:
        async with self._lock:
            found = [await self._model_info(s) for s in (VL, DIFFUSION)]
        return [m for m in found if m is not None]

    async def resolve(self, model: str | None, service: str, param: str = "model") -> str:
        """The model id to use on ``service``: ``model`` must be the id it reports (404 otherwise);
        None or "" means the one it serves."""
        if service not in self.channels:
            raise APIError(404, f"model {model!r} does not exist here: this frontend serves no {service} model; "
                                "GET /v1/models lists the models", param=param, code="model_not_found")
        async with self._lock:
            served = await self._model_info(service)
        if served is None:
            raise APIError(503, f"the {service} service is unavailable (its ModelInfo call failed); retry shortly",
                           code="unavailable", retry_after_s=1.0)
        if model and model != served.id:
            others = [m.id for m in await self.models()]
            raise APIError(404, f"model {model!r} does not exist here; this endpoint serves {served.id!r} "
                                f"(GET /v1/models lists: {', '.join(others)})", param=param, code="model_not_found")
        return served.id

    # ------------------------------------------------------------------ calls
    def stub(self, service: str) -> Any:
        stub = self.vl if service == VL else self.diffusion
        if stub is None:
            raise APIError(404, f"no {service} service is configured on this frontend", code="model_not_found")
        return stub

    async def unary(self, service: str, rpc: str, request: Any, timeout: float) -> Any:
        """One unary call; failures become APIError. Cancelling the awaiting task cancels the RPC."""
        start = time.perf_counter()
        code = "OK"
        call = getattr(self.stub(service), rpc)(request, timeout=timeout, metadata=self.metadata)
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            code = err.code().name
            raise from_grpc(err, service) from None
        except asyncio.CancelledError:
            code = "CANCELLED"
            call.cancel()
            metrics.UPSTREAM_CANCELLED.labels(rpc).inc()
            raise
        finally:
            metrics.UPSTREAM_CALLS.labels(rpc, code).inc()
            metrics.UPSTREAM_LATENCY.labels(rpc).observe(time.perf_counter() - start)

    async def stream(self, service: str, rpc: str, request: Any, timeout: float) -> AsyncIterator[Any]:
        """A server-streaming call as an async iterator. Leaving the iteration early (client gone,
        task cancelled, generator closed) cancels the RPC upstream."""
        start = time.perf_counter()
        code, left = "OK", False
        call = getattr(self.stub(service), rpc)(request, timeout=timeout, metadata=self.metadata)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as err:
            code = err.code().name
            raise from_grpc(err, service) from None
        except (asyncio.CancelledError, GeneratorExit):
            left = True
            raise
        finally:
            if not call.done():
                left = True
                call.cancel()
            if left:
                code = "CANCELLED"
                metrics.UPSTREAM_CANCELLED.labels(rpc).inc()
            metrics.UPSTREAM_CALLS.labels(rpc, code).inc()
            metrics.UPSTREAM_LATENCY.labels(rpc).observe(time.perf_counter() - start)

    async def ready(self) -> dict[str, str]:
        """grpc.health.v1 status of each configured service."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        out = {}
        for name, ch in self.channels.items():
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(service=full_name(name)), timeout=2.0)
                out[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.aio.AioRpcError as err:
                out[name] = f"UNREACHABLE ({err.code().name})"
        return out

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()
