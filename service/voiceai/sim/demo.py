"""`just demo`: a whole conversation on embedded defaults, no phone line needed.

This process plays FreeSWITCH (event socket + mod_audio_fork) and the caller; the service
runs as it would in production, in its own process, on the packaged models.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import tempfile
from pathlib import Path

from voiceai.audio.pcm import decode_file
from voiceai.config import load_settings
from voiceai.sim.fork_client import CallAudio
from voiceai.sim.freeswitch import EslServer
from voiceai.sim.simulate import simulate_call
from voiceai.sim.voices import synthesize_caller

CALLER_LINES = [
    "Hello, I would like to book a table for two people tomorrow evening.",
    "Do you have anything available around seven?",
]
RATE = 8000  # PCMU, what a RingCentral call carries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="voiceai-demo-"))
    port = os.environ.get("VOICEAI_DEMO_PORT") or str(free_port())
    password = secrets.token_urlsafe(12)
    switch = EslServer(password)
    await switch.start()
    env = dict(
        os.environ,
        VOICEAI_HOST="127.0.0.1",
        VOICEAI_PORT=port,
        VOICEAI_ESL_HOST="127.0.0.1",
        VOICEAI_ESL_PORT=str(switch.port),
        VOICEAI_ESL_PASSWORD=password,
        VOICEAI_DATABASE_URL=f"sqlite:///{work}/calls.db",
        VOICEAI_MEDIA_DIR=str(work / "media"),
        VOICEAI_LOG_LEVEL=os.environ.get("VOICEAI_LOG_LEVEL", "warning"),
    )
    print("the caller will say:", *(f"  {line!r}" for line in CALLER_LINES), sep="\n")
    wavs = [
        synthesize_caller(line, work / f"caller-{i}.wav") for i, line in enumerate(CALLER_LINES)
    ]
    audio = CallAudio([decode_file(wav, RATE) for wav in wavs])
    print("starting the service (loading speech, language and voice models)...", flush=True)
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "voiceai", "serve", env=env)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("VOICEAI_")})
        settings = load_settings()
        http = f"http://127.0.0.1:{port}"
        return await simulate_call(
            settings,
            http,
            f"ws://127.0.0.1:{port}",
            audio,
            RATE,
            None,
            work / "call.wav",
            switch,
            ready_limit_s=600,  # the first start compiles nothing but loads three models
        )
    finally:
        if server.returncode is None:
            server.terminate()
            await asyncio.wait_for(server.wait(), 30)
        await switch.stop()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
