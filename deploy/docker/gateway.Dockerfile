# gateway (HTTP: JSON API + pages in front of MatchGraph) image.
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t unfragile/gateway:cpu .
# No torch: the image installs only the gateway's extras (`unfragile[gateway,mcp]`: mcp serves /mcp).
# Runs as a non-root user (uid 10001); health-checked on GET /healthz.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY . /app
RUN pip install grpcio-tools==1.85.1 \
    && python -m services.core.protogen \
    && pip install "/app[gateway,mcp]" \
    && pip uninstall -y grpcio-tools \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/unfragile unfragile

ENV PYTHONPATH=/app \
    UNFRAGILE_GATEWAY_HOST=0.0.0.0 \
    UNFRAGILE_GATEWAY_PORT=8080 \
    UNFRAGILE_GATEWAY_MATCHGRAPH_TARGET=matchgraph:50053

USER 10001:10001
EXPOSE 8080
# Liveness only: /readyz also needs MatchGraph, which is the orchestrator's business.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
# `unfragile serve gateway`: uvicorn on the bound socket; SIGTERM -> drain -> exit 0.
# Metrics are on the HTTP port at /metrics.
ENTRYPOINT ["python", "-m", "services.cli", "serve", "gateway"]
