# matchgraph (cpu) image.
# Build from the repository root:
#   docker build -f deploy/docker/matchgraph.Dockerfile -t unfragile/matchgraph:cpu .
# No torch: MatchGraph runs no model; the image installs only `unfragile[matchgraph]`.
# Runs as a non-root user (uid 10001); health-checked over the gRPC health protocol.

FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY . /app
# Generate the gRPC stubs (build output, never committed) into /app/unfragile, then
# install the project and its pinned dependencies. PYTHONPATH=/app keeps the generated
# stubs importable whatever the wheel packs.
RUN pip install grpcio-tools==1.85.1 \
    && python -m services.core.protogen \
    && pip install "/app[matchgraph]" \
    && pip uninstall -y grpcio-tools \
    && install -m 0755 deploy/docker/grpc_health_check.py /usr/local/bin/grpc-health \
    && install -m 0755 deploy/docker/fetch_model.py /usr/local/bin/fetch-model \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/unfragile unfragile \
    && mkdir -p /models /data \
    && chown unfragile:unfragile /models /data

ENV PYTHONPATH=/app \
    HF_HOME=/models/hf-cache \
    UNFRAGILE_GRAPH_HOST=0.0.0.0 \
    UNFRAGILE_GRAPH_PORT=50053 \
    UNFRAGILE_GRAPH_METRICS_PORT=9103 \
    UNFRAGILE_GRAPH_DB_URL=sqlite:////data/matchgraph.db

USER 10001:10001
VOLUME ["/models", "/data"]
EXPOSE 50053 9103
# Models load before the service reports SERVING: give real checkpoints time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["grpc-health", "127.0.0.1:50053", "unfragile.matchgraph.v1.MatchGraph"]
ENTRYPOINT ["python", "-m", "services.cli", "serve", "matchgraph"]
