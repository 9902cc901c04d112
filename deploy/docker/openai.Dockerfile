# OpenAI-compatible HTTP API (chat, embeddings, images over the model services' gRPC) image.
# Build from the repository root:
#   docker build -f deploy/docker/openai.Dockerfile -t unfragile/openai:cpu .
# No torch: the image installs only the frontend's extra (`unfragile[openai]`); every request
# becomes a call to the VisionLanguage or Diffusion service.
# Runs as a non-root user (uid 10001); health-checked on GET /health.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY . /app
RUN pip install grpcio-tools==1.85.1 \
    && python -m services.core.protogen \
    && pip install "/app[openai]" \
    && pip uninstall -y grpcio-tools \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/unfragile unfragile

ENV PYTHONPATH=/app \
    UNFRAGILE_OPENAI_HOST=0.0.0.0 \
    UNFRAGILE_OPENAI_PORT=8000 \
    UNFRAGILE_OPENAI_VISIONLANGUAGE_TARGET=visionlanguage:50051 \
    UNFRAGILE_OPENAI_DIFFUSION_TARGET=diffusion:50052

USER 10001:10001
EXPOSE 8000
# Liveness only: /readyz also needs a model service, which is the orchestrator's business.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]
# `unfragile serve openai`: uvicorn on the bound socket; SIGTERM -> drain -> exit 0.
# Metrics are on the HTTP port at /metrics.
ENTRYPOINT ["python", "-m", "services.cli", "serve", "openai"]
