"""The real service for the benchmarks: on a free port, in a thread, wired to the FreeSWITCH and
Ollama emulators, on the settings every benchmark shares (piper, no greeting, a temp folder)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from voiceai.app import create_app
from voiceai.config import Settings
from voiceai.engines.stt import SpeechToText
from voiceai.sim.demo import free_port
from voiceai.sim.simulate import wait_ready

ESL_PASSWORD = "bench"  # the emulators' EslServer(ESL_PASSWORD)


@contextlib.asynccontextmanager
async def local_service(
    esl_port: int, ollama_url: str, work: Path, stt: SpeechToText, **overrides: Any
) -> AsyncIterator[tuple[Settings, str]]:
    """Yields the settings and the service's websocket base URL once it has the event socket."""
    port = free_port()
    settings = Settings(
        **{
            "port": port,
            "esl_port": esl_port,
            "esl_password": ESL_PASSWORD,
            "llm": "ollama",
            "ollama_url": ollama_url,
            "tts": "piper",
            "greeting": "",
            "database_url": f"sqlite:///{work}/calls.db",
            "media_dir": work / "media",
            **overrides,
        }
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, stt=stt), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        if not await wait_ready(f"http://127.0.0.1:{port}", None):
            raise SystemExit("the service did not connect to the event socket emulator")
        yield settings, f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15)
