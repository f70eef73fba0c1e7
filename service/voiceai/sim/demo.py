"""`just demo`: start the service on embedded defaults, place a simulated call, print it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from voiceai.sim.voices import synthesize_caller

CALLER_LINES = [
    "Hello, I would like to book a table for two people tomorrow evening.",
    "Could you also tell me what time you open on Sunday?",
]


def wait_healthy(url: str, server: subprocess.Popen[bytes], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited at start (code {server.returncode})")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not become healthy in time")


def main() -> int:
    port = os.environ.get("VOICEAI_DEMO_PORT", "8089")
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="voiceai-demo-"))
    env = dict(
        os.environ,
        VOICEAI_PORT=port,
        VOICEAI_HOST="127.0.0.1",
        VOICEAI_DATABASE_URL=f"sqlite:///{work}/calls.db",
        VOICEAI_MEDIA_DIR=str(work / "media"),
    )
    print(f"caller audio: {', '.join(repr(line) for line in CALLER_LINES)}")
    wavs = [
        synthesize_caller(line, work / f"caller-{i}.wav") for i, line in enumerate(CALLER_LINES)
    ]
    server = subprocess.Popen([sys.executable, "-m", "voiceai", "serve"], env=env)
    try:
        wait_healthy(url, server)
        return subprocess.call(
            [
                sys.executable,
                "-m",
                "voiceai",
                "simulate",
                *map(str, wavs),
                "--url",
                url,
                "--rate",
                "8k",
            ],
            env=env,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
