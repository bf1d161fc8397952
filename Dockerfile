# One image for every service: each service is a different command (see compose.yaml).
#
#   DOCKER_BUILDKIT=1 docker build --network host -t atomic-guide:latest .
#   ... --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt   behind a TLS-intercepting proxy
#   ... --build-arg BASE=local/python-base:bookworm             without a registry (ops/images)
#
# The CA bundle is a BuildKit secret: mounted for the pip steps of the builder stage only, so it
# is in no layer of either stage. The runtime stage gets the venv and nothing else from the build.
ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120
# `python3 -m venv` works on both bases: python:3.11-slim and Debian's python3 (+ python3-venv).
RUN python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone: a source change does not re-download them.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt

# Then the project itself, as a regular (non-editable) install: /src stays in this stage.
# (pyproject.toml names README.md as the readme; an empty one stands in if it is missing.)
COPY . ./
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && if [ ! -f README.md ]; then : > README.md; fi \
 && /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools \
 && /opt/venv/bin/python -c 'import services.gateway.app, services.chat.service, ops.cli'


FROM ${BASE} AS app
# A fixed uid so volume ownership is predictable; no login shell, no home to write into.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin app \
 && mkdir -p /data \
 && chown app:app /data
COPY --from=builder /opt/venv /opt/venv
# The browser side the gateway serves: the JS client (/client/) and the demo page (/demo/).
COPY clients/js/src /opt/atomic-guide/clients/js/src
COPY clients/demo /opt/atomic-guide/clients/demo
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AG_DATA_DIR=/data \
    AG_WEB_ROOT=/opt/atomic-guide \
    AG_GATEWAY_HOST=0.0.0.0
USER app
WORKDIR /data
EXPOSE 8000
CMD ["python", "-m", "services.gateway"]
