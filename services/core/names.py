"""The project's gRPC services and their names, read from the compiled proto descriptors."""

from __future__ import annotations

import importlib
from functools import cache

# Short names, as used by `unfragile serve NAME`, in start order (the model services first).
GRPC_SERVICES = ("visionlanguage", "diffusion", "matchgraph")


@cache
def full_name(service: str) -> str:
    """The proto full name of ``service`` (e.g. ``unfragile.matchgraph.v1.MatchGraph``)."""
    module = importlib.import_module(f"unfragile.{service}.v1.{service}_pb2")
    (descriptor,) = module.DESCRIPTOR.services_by_name.values()
    return str(descriptor.full_name)
