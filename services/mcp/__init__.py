"""The match graph for agents: a Model Context Protocol server (the official ``mcp`` SDK).

Tools (search, compare, trust_passport, resolve_capability, feedback) and model-page resources, each a
MatchGraph gRPC call or two whose answer is shaped by the gateway's own JSON functions (``passport``,
``matching``, ``schemas``), so agents read exactly what the HTTP API answers. Two transports: stdio
(``unfragile serve mcp --stdio``, its own gRPC channels) and streamable HTTP at ``/mcp`` of the gateway
(``unfragile serve gateway`` mounts it, sharing the gateway's channels). No ``graph`` imports.
"""
