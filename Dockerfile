# diffres-serve inference image (docs/DEPLOY.md).
#
# GPU (default): CUDA 13 + cuDNN 9 runtime on Ubuntu 24.04 (Python 3.12), onnxruntime-gpu,
# and torch (PyPI's Linux build of torch 2.13 is the CUDA 13 one) for the TorchScript backend.
#   docker build -t diffres-serve:gpu .
# CPU: any Debian/Ubuntu base with python3 >= 3.11; onnxruntime, no torch.
#   docker build -t diffres-serve:cpu --build-arg VARIANT=cpu \
#       --build-arg BASE_IMAGE=debian:bookworm-slim .
# Air-gapped: pip installs only from a wheelhouse in the build context (see
# deploy/image_requirements.py download), never from an index:
#   docker build ... --build-arg WHEELHOUSE=wheelhouse .
#
# Build args: BASE_IMAGE, VARIANT (gpu|cpu), WHEELHOUSE (a directory of the context; the
# default one holds no wheel, which means "use the index"), TORCH_SPEC (gpu; "" for an
# ONNX-only GPU image), TORCH_INDEX_URL (gpu; e.g. a PyTorch wheel index), PIP_INDEX_URL /
# PIP_EXTRA_INDEX_URL (a mirror). Every stage starts from BASE_IMAGE, so a build needs no
# other image, with BuildKit or the legacy builder.

ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# --- python-base: the system Python and tini, shared by both stages below -----------------
FROM ${BASE_IMAGE} AS python-base
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# --- builder: a venv at /opt/venv with the serving dependencies and the package ------------
FROM python-base AS builder
ARG DEBIAN_FRONTEND=noninteractive
ARG VARIANT=gpu
ARG WHEELHOUSE=deploy/no-wheelhouse
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first: this layer is rebuilt only when pyproject.toml or the wheelhouse change.
COPY pyproject.toml /src/pyproject.toml
COPY deploy/image_requirements.py /src/deploy/image_requirements.py
COPY ${WHEELHOUSE}/ /wheelhouse/
RUN set -eu; \
    case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 2;; esac; \
    if [ -n "$(find /wheelhouse -name '*.whl' -print -quit)" ]; then \
        echo "pip: offline, from the wheelhouse $WHEELHOUSE"; \
        export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; \
    else \
        echo "pip: from ${PIP_INDEX_URL:-the default index}"; \
    fi; \
    python3 /src/deploy/image_requirements.py print --variant "$VARIANT" > /tmp/requirements.txt; \
    pip install -r /tmp/requirements.txt; \
    if [ "$VARIANT" = gpu ] && [ -n "$TORCH_SPEC" ]; then \
        if [ -n "$TORCH_INDEX_URL" ] && [ -z "${PIP_NO_INDEX:-}" ]; then \
            pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
        else \
            pip install "$TORCH_SPEC"; \
        fi; \
    fi; \
    if [ "$VARIANT" = cpu ] && python -c "import torch" 2>/dev/null; then \
        echo "the cpu image must not contain torch" >&2; exit 1; \
    fi; \
    rm -rf /wheelhouse /tmp/requirements.txt

COPY service/ /src/service/
RUN pip install --no-deps --no-build-isolation /src \
    && python -c "import service.serving.http.app, onnxruntime; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

# --- runtime: the venv, the model store, a non-root user -----------------------------------
FROM python-base AS runtime
ARG VARIANT=gpu
LABEL org.opencontainers.image.title="diffres-serve" \
      org.opencontainers.image.description="DiffRes audio classifiers behind a batching inference service" \
      io.diffres.variant="${VARIANT}"
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin diffres
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY deploy/healthcheck.py /app/healthcheck.py
# Baked in, read-only for the service user; mount a volume on /app/model_store to replace it.
COPY model_store/ /app/model_store/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DIFFRES_HOST=0.0.0.0 \
    DIFFRES_PORT=8000 \
    DIFFRES_MODEL_STORE=/app/model_store \
    DIFFRES_LOG_JSON=true
USER 10001:10001
EXPOSE 8000
# tini (PID 1) forwards SIGTERM to the server, which drains (DIFFRES_DRAIN_GRACE_S, default
# 5 s, then up to DIFFRES_DRAIN_TIMEOUT_S, default 30 s) and exits 0; give `docker stop` /
# compose a longer grace period than the two together.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "service"]
CMD ["serve"]
