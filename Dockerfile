# syntax=docker/dockerfile:1
# One image, two entry points: taskcreds-operator (default) and taskcreds-sidecar (injected).
#   docker build -t ghcr.io/taskcreds/taskcreds:0.1.0 .
# Both stages use the same pinned base so the wheels built here install there unchanged.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY taskcreds ./taskcreds
COPY operator ./operator
COPY sidecar ./sidecar
# the project and every dependency as wheels: the runtime stage needs no compiler and no network
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels taskcreds \
    && groupadd --system --gid 65532 taskcreds \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin taskcreds
# non-root by number, so runAsNonRoot can verify it without reading /etc/passwd
USER 65532:65532
WORKDIR /
EXPOSE 8443 8444 8080 9090
CMD ["taskcreds-operator"]
