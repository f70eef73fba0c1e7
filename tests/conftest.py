"""Shared fixtures: real speech (piper, espeak-ng), one loaded Whisper model, a live service."""

from __future__ import annotations

import os

# Models come from installed packages only; a hub download must fail, not hang.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from tests.speech import Speech, make_speech
from voiceai.app import create_app
from voiceai.config import Settings
from voiceai.engines.stt import WhisperSTT
from voiceai.engines.tts import build_tts


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return make_speech(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def stt() -> Iterator[WhisperSTT]:
    engine = WhisperSTT("auto", workers=2)
    yield engine
    asyncio.run(engine.aclose())


@pytest.fixture(scope="session")
def tts() -> Any:
    """Offline voices shared by every test service (edge-tts' cloud is not reachable here)."""
    return build_tts(Settings(tts="piper"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningService:
    http: str
    ws: str
    settings: Settings

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.http + path, timeout=10, **kwargs)

    def wait_for_call(self, call_id: str, status: str = "ended", timeout: float = 60) -> dict:
        """The call's record once it reaches `status` (records are written asynchronously)."""
        token = self.settings.api_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.get(f"/api/calls/{call_id}", headers=headers)
            if response.status_code == 200 and response.json()["status"] == status:
                return response.json()
            time.sleep(0.1)
        raise AssertionError(f"call {call_id} never reached {status}")


@pytest.fixture
def service_factory(tmp_path: Path, stt: WhisperSTT) -> Iterator[Any]:
    """Starts the real app under uvicorn on a free port, in a thread, per test."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(*, tts_engine: Any = None, **overrides: Any) -> RunningService:
        port = free_port()
        values: dict[str, Any] = {
            "port": port,
            "database_url": f"sqlite:///{tmp_path}/calls-{port}.db",
            "media_dir": tmp_path / "media",
        }
        values.update(overrides)
        settings = Settings(**values)
        app = create_app(settings, stt=stt, tts=tts_engine)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=1024 * 1024
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("service did not start")
            time.sleep(0.02)
        servers.append((server, thread))
        return RunningService(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", settings)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def service(service_factory: Any) -> RunningService:
    return service_factory()


def words(text: str) -> set[str]:
    cleaned = "".join(ch.lower() if ch.isalnum() or ch.isspace() else " " for ch in text)
    return set(cleaned.split())


def white_noise(seconds: float, rate: int, amplitude: float = 3000.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(int(seconds * rate)) * amplitude
    return noise.clip(-32768, 32767).astype(np.int16)
