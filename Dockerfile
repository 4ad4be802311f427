# syntax=docker/dockerfile:1
# One image for every elastiserve process, chosen by subcommand:
#   elastiserve run         the operator (kopf)
#   elastiserve serve       the ONNX Runtime model server
#   elastiserve activator   the scale-from-zero proxy
#
#   docker build -t elastiserve:0.1.0 .
#
# tests/integration/test_clean_install.py repeats the install steps of the build stage (same build
# context per .dockerignore, same pip command, same smoke checks) in a clean virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: a self-contained virtualenv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The repository root is the `elastiserve` package (pyproject maps it with package-dir), so the
# context is the root; .dockerignore lets through only the package's folders and pyproject.toml.
COPY . .
# Not from /src: `python -m`/`-c` put the working directory first on sys.path, where the package's
# own `operator/` folder would shadow the standard library's `operator` module.
WORKDIR /
RUN python -m venv /opt/elastiserve \
 && /opt/elastiserve/bin/pip install --no-cache-dir /src \
 && /opt/elastiserve/bin/elastiserve --help \
 && /opt/elastiserve/bin/elastiserve crd > /dev/null \
 && /opt/elastiserve/bin/python -c "import onnxruntime, elastiserve.operator.main, elastiserve.serving.activator"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="elastiserve" \
      org.opencontainers.image.description="Autoscaler for model-serving workloads on Kubernetes: operator, ONNX Runtime model server and activator in one image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

RUN groupadd --system --gid 10001 elastiserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/elastiserve --create-home \
        --shell /usr/sbin/nologin elastiserve

COPY --from=build /opt/elastiserve /opt/elastiserve

# Read-only root filesystem in Kubernetes: caches go to /tmp (an emptyDir in the chart).
# `elastiserve serve` defaults to 127.0.0.1 (for a developer's shell); in a container it must listen on
# every address, or probes, Services and `docker run -p` cannot reach it.
ENV PATH=/opt/elastiserve/bin:$PATH \
    ELASTISERVE_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache

USER 10001:10001
WORKDIR /home/elastiserve
# 8080: model server and activator traffic (and their /metrics); 9090: operator metrics; 8081: kopf liveness.
EXPOSE 8080 8081 9090
ENTRYPOINT ["elastiserve"]
CMD ["--help"]
