"""HTTP gateway and server-rendered pages in front of the MatchGraph gRPC service.

Browsers and search frontends speak HTTP, not gRPC. This package turns HTTP requests
into MatchGraph RPCs and the answers into JSON (with an OpenAPI document) or HTML
pages. It holds no ranking or verdict logic of its own: every number and sentence it
shows comes from the service.
"""
