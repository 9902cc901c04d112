# visionlanguage (cuda) image.
# Build from the repository root:
#   docker build -f deploy/docker/visionlanguage.cuda.Dockerfile -t unfragile/visionlanguage:cuda .
# CUDA 12.8 build of torch; its wheels bundle the CUDA runtime, so the
# host only needs the NVIDIA driver and the NVIDIA container toolkit.
# Runs as a non-root user (uid 10001); health-checked over the gRPC health protocol.
# Device: UNFRAGILE_VL_DEVICE=auto picks cuda + float16 when a GPU is visible.

FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# torch first, from the build-specific index, so the project's `torch>=2.4` is already
# satisfied and this heavy layer is cached across code changes.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cu128"
RUN pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX"

WORKDIR /app
COPY . /app
# Generate the gRPC stubs (build output, never committed) into /app/unfragile, then
# install the project and its pinned dependencies. PYTHONPATH=/app keeps the generated
# stubs importable whatever the wheel packs.
RUN pip install grpcio-tools==1.85.1 \
    && python -m services.core.protogen \
    && pip install "/app[visionlanguage]" \
    && pip uninstall -y grpcio-tools \
    && install -m 0755 deploy/docker/grpc_health_check.py /usr/local/bin/grpc-health \
    && install -m 0755 deploy/docker/fetch_model.py /usr/local/bin/fetch-model \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/unfragile unfragile \
    && mkdir -p /models /data \
    && chown unfragile:unfragile /models /data

ENV PYTHONPATH=/app \
    HF_HOME=/models/hf-cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    UNFRAGILE_VL_HOST=0.0.0.0 \
    UNFRAGILE_VL_PORT=50051 \
    UNFRAGILE_VL_METRICS_PORT=9101 \
    UNFRAGILE_VL_MODELS_DIR=/models \
    UNFRAGILE_VL_DEVICE=auto

USER 10001:10001
VOLUME ["/models", "/data"]
EXPOSE 50051 9101
# Models load before the service reports SERVING: give real checkpoints time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["grpc-health", "127.0.0.1:50051", "unfragile.visionlanguage.v1.VisionLanguage"]
ENTRYPOINT ["python", "-m", "services.cli", "serve", "visionlanguage"]
