# syntax=docker/dockerfile:1
# The splatops operator image (also runs the CLI and the REST gateway): no torch, no gsplat.
# Build: docker build -t ghcr.io/splatops/operator:0.1.0 .

# --- web: the gateway page's scripts from the npm registry (web/package-lock.json), bundled -----
FROM node:20-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/build.mjs ./
COPY web/src/ src/
RUN npm run build

# --- build: a wheel of the project (build tools stay in this stage) ------------------------------
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer_image/ trainer_image/
COPY --from=web /src/operator/splatops/gateway/static/dist/ operator/splatops/gateway/static/dist/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels "$(ls /wheels/splatops-*.whl)[operator]"

# --- runtime: the wheels installed into a venv, nothing else -----------------------------------
FROM python:3.12-slim-bookworm
LABEL org.opencontainers.image.title="splatops-operator" \
      org.opencontainers.image.description="Kubernetes operator that trains 3D Gaussian Splatting models" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/splatops/bin:$PATH
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/splatops \
 && /opt/splatops/bin/pip install --no-index --find-links /wheels "splatops[operator]" \
 && groupadd --system --gid 10001 splatops \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin splatops
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["splatops"]
CMD ["operator"]
