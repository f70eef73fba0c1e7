"""Shared fixtures: real speech (piper, espeak-ng), one loaded Whisper model, a live service."""

from __future__ import annotations

import os

# Models come from installed packages only; a hub download must fail, not hang.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
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
class PostgresServer:
    """A PostgreSQL server of the test session; each test takes a database of its own."""

    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Runs one statement as the server's superuser, outside any transaction."""
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=database, autocommit=True
        ) as db:
            cursor = db.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def new_database(self) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name


def _postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries, the newest major version installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (Debian's `postgresql`), made in a temporary folder for the
    session: its own port and socket folder, trust auth, fsync off; stopped and removed after."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (`just setup` installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="voiceai-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's postgres
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()

    def run(*args: str | Path) -> None:
        subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True, timeout=60)

    try:
        run(bindir / "initdb", "-D", data, "-U", "voiceai", "--auth=trust", "-E", "UTF8", "-N")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode()}") from exc
    try:
        yield PostgresServer("127.0.0.1", port, "voiceai")
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database for call records: each test using it runs on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calls.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url(server.new_database())


@dataclass
class RunningService:
    http: str
    ws: str
    settings: Settings
    app: Any = None
    loop: asyncio.AbstractEventLoop | None = None  # the one the service runs on

    def publish(self, event: Any) -> None:
        """Publishes an event on the service's bus, as a call does, from the test's thread."""
        assert self.loop is not None
        bus = self.app.state.services.bus
        self.loop.call_soon_threadsafe(bus.publish, event)

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

    def start(
        *,
        tts_engine: Any = None,
        server_options: dict[str, Any] | None = None,
        own_stt: bool = False,  # the app loads the STT its settings name, not the shared one
        **overrides: Any,
    ) -> RunningService:
        port = free_port()
        values: dict[str, Any] = {
            "port": port,
            "database_url": f"sqlite:///{tmp_path}/calls-{port}.db",
            "media_dir": tmp_path / "media",
        }
        values.update(overrides)
        settings = Settings(**values)
        app = create_app(settings, stt=None if own_stt else stt, tts=tts_engine)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws_max_size=1024 * 1024,
            **(server_options or {}),  # e.g. voiceai serve's: voiceai.api.guards
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
        loop = server.servers[0].get_loop()
        http, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        return RunningService(http, ws, settings, app, loop)

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


# Real talkers of ../shared/speech/real that the babble tests reverse into a wordless crowd
# (voiceai.sim.babble); none of them is a caller in those tests.
BABBLE_TALKERS = (
    "en_harvard_spk2_snt5",
    "en_libritts_260_123286_000003_000002",
    "en_harvard_spk1_snt2",
    "en_cmd_add_apples_to_my_shopping_list",
    "en_pisets_neural_networks",
    "en_harvard_spk2_snt1",
)


def white_noise(seconds: float, rate: int, amplitude: float = 3000.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(int(seconds * rate)) * amplitude
    return noise.clip(-32768, 32767).astype(np.int16)
