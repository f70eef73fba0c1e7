"""Two service replicas as real processes (`python -m voiceai serve`) on one real PostgreSQL and
one FreeSWITCH emulator: one call list and one live view across them, control of a call from
the replica that does not have it, and a killed replica's calls ended as lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import PostgresServer, free_port
from voiceai import cluster, events
from voiceai.sim.freeswitch import EslServer
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import FORK_BUG, PhoneCall

ESL_PASSWORD = "replicas-esl-pw"
TOKEN = "replicas-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT_S = 3  # VOICEAI_REPLICA_TIMEOUT_S: a killed replica is noticed within seconds
T = TypeVar("T")


@dataclass
class Replica:
    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Site:
    """The replicas, the switch they share (its loop runs in a thread of its own: the emulator
    and the calls live there), and the LLM emulator."""

    loop: asyncio.AbstractEventLoop
    switch: EslServer
    postgres: PostgresServer
    database: str
    replicas: dict[str, Replica] = field(default_factory=dict)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


def start_replica(name: str, env: dict[str, str], workdir: Path) -> Replica:
    port = free_port()
    log = workdir / f"{name}.log"
    values = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOICEAI_")},
        **env,
        "HF_HUB_OFFLINE": "1",
        "VOICEAI_PORT": str(port),
        "VOICEAI_REPLICA_ID": name,
        "VOICEAI_MEDIA_DIR": str(workdir / name / "media"),
    }
    (workdir / name).mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "voiceai", "serve"],
            env=values,
            cwd=workdir / name,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(name, port, log, process)


def wait_ready(replica: Replica, timeout_s: float = 60) -> None:
    """Until /readyz says 200: the event socket is connected and the records can be written."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert replica.process.poll() is None, f"{replica.name} stopped:\n{replica.log_text()}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(replica.http + "/readyz", timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{replica.name} not ready:\n{replica.log_text()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def site(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("replicas")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    switch = EslServer(ESL_PASSWORD)
    asyncio.run_coroutine_threadsafe(switch.start(), loop).result(10)
    here = Site(loop, switch, postgres, postgres.new_database())
    with OllamaEmulator(reply=lambda messages: "Certainly.") as ollama:
        env = {
            "VOICEAI_DATABASE_URL": postgres.url(here.database),
            "VOICEAI_REPLICA_TIMEOUT_S": str(TIMEOUT_S),
            "VOICEAI_API_TOKEN": TOKEN,
            "VOICEAI_ESL_HOST": "127.0.0.1",
            "VOICEAI_ESL_PORT": str(switch.port),
            "VOICEAI_ESL_PASSWORD": ESL_PASSWORD,
            "VOICEAI_LLM": "ollama",
            "VOICEAI_OLLAMA_URL": ollama.url,
            "VOICEAI_TTS": "espeak",
            "VOICEAI_VAD": "webrtc",
            "VOICEAI_TURN_MODEL": "off",
            "VOICEAI_STT_WORKERS": "1",
            "VOICEAI_PARTIAL_TRANSCRIPTS": "false",
        }
        try:
            for name in ("replica-a", "replica-b"):  # both start at once
                here.replicas[name] = start_replica(name, env, workdir)
            for replica in here.replicas.values():
                wait_ready(replica)
            yield here
        finally:
            for replica in here.replicas.values():
                if replica.process.poll() is None:
                    replica.process.terminate()
            for replica in here.replicas.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    replica.process.wait(timeout=20)
            asyncio.run_coroutine_threadsafe(switch.stop(), loop).result(20)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)


class Live:
    """A /ws/live viewer of one replica: its snapshot, then every event it is sent."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.snapshot: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Live:
        self._socket = await connect(f"{self.replica.ws}/ws/live", additional_headers=AUTH)
        self.snapshot = json.loads(await self._socket.recv())
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None and self._socket is not None
        self._reader.cancel()
        await self._socket.close()

    async def _read(self) -> None:
        assert self._socket is not None
        async for raw in self._socket:
            self.events.append(json.loads(raw))

    def of(self, type_: str, call_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_ and e["call_id"] == call_id]

    async def wait(self, type_: str, call_id: str, timeout_s: float = 20) -> dict[str, Any]:
        await until(lambda: bool(self.of(type_, call_id)), f"{type_} of {call_id}", timeout_s)
        return self.of(type_, call_id)[0]


async def until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def api(replica: Replica, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=replica.http, headers=AUTH, timeout=30) as client:
        return await client.request(method, path, **kwargs)


async def record_until(
    replica: Replica, call_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await api(replica, "GET", f"/api/calls/{call_id}")
        if response.status_code == 200 and done(response.json()):
            return response.json()
        assert time.monotonic() < deadline, f"record of {call_id}: {response.text}"
        await asyncio.sleep(0.1)


def active_calls(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("voiceai_active_calls "))
    return float(line.split()[1])


def test_calls_on_both_replicas_show_in_one_list_and_one_live_stream_on_either(
    site: Site,
) -> None:
    a, b = site.replicas["replica-a"], site.replicas["replica-b"]

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Live(a) as on_a, Live(b) as on_b:
            here = PhoneCall(site.switch, a.ws, token=TOKEN, caller="+15550101")
            there = PhoneCall(site.switch, b.ws, token=TOKEN, caller="+15550102")
            async with here, there:
                await here.dial()
                await there.dial()
                for live in (on_a, on_b):
                    for call in (here, there):
                        await live.wait(events.CALL_STARTED, call.call_id)
                await on_a.wait(events.BOT_SAID, there.call_id)  # B's greeting, seen on A
                listed = [(await api(r, "GET", "/api/calls?status=active")).json() for r in (a, b)]
                out["listed"] = listed
                async with Live(a) as late_on_a:  # a viewer that comes in mid-call
                    out["snapshot"] = late_on_a.snapshot
                out["metrics"] = [(await api(r, "GET", "/metrics")).text for r in (a, b)]
                out["ids"] = here.call_id, there.call_id
                await here.end()
                await there.end()
                for call in (here, there):
                    await on_a.wait(events.CALL_ENDED, call.call_id)
                    await on_b.wait(events.CALL_ENDED, call.call_id)
            out["there_record"] = await record_until(
                a, there.call_id, lambda r: r["status"] == "ended"
            )
            out["there_on_a"] = on_a.of(events.CALL_STARTED, there.call_id)
        return out

    out = site.run(scenario(), timeout_s=60)
    here_id, there_id = out["ids"]
    for listed in out["listed"]:  # GET /api/calls on either replica lists both, with their owner
        owners = {c["id"]: c["replica"] for c in listed["calls"]}
        assert owners == {here_id: "replica-a", there_id: "replica-b"}
    calls = {c["id"]: c for c in out["snapshot"]["data"]["calls"]}
    assert set(calls) == {here_id, there_id}
    assert calls[there_id]["caller"] == "+15550102"
    assert calls[there_id]["replica"] == "replica-b"
    assert [t["speaker"] for t in calls[there_id]["turns"]] == ["bot"]  # the greeting
    # B's call.started reaches A's viewers as B published it (the wire is the same).
    assert out["there_on_a"][0]["data"]["caller"] == "+15550102"
    # Each replica counts and records only its own call: one active call each, and B's record
    # is B's, its greeting written once (not again by A).
    assert [active_calls(text) for text in out["metrics"]] == [1.0, 1.0]
    record = out["there_record"]
    assert record["replica"] == "replica-b"
    assert [t["speaker"] for t in record["turns"]] == ["bot"]


def test_a_hangup_asked_of_replica_a_ends_a_call_running_on_replica_b(site: Site) -> None:
    a, b = site.replicas["replica-a"], site.replicas["replica-b"]

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with PhoneCall(site.switch, b.ws, token=TOKEN) as call:
            await call.dial()
            await call.wait_event(events.CALL_STARTED)
            path = f"/api/calls/{call.call_id}"
            out["mute"] = await api(a, "POST", path + "/mute")
            await call.wait_event(events.CALL_MUTED, limit_s=10)
            out["hangup"] = await api(a, "POST", path + "/hangup")
            ended = await call.wait_event(events.CALL_ENDED, limit_s=20)
            out["ended"] = ended
            out["killed"] = [c for c in site.switch.commands if c.startswith("uuid_kill")]
            out["record"] = await record_until(a, call.call_id, lambda r: r["status"] == "ended")
            out["again"] = await api(a, "POST", path + "/hangup")
            out["id"] = call.call_id
            await asyncio.sleep(1)  # anything A would wrongly say of B's call has come by now
            out["hangups"] = len(call.log.of(events.CALL_HANGUP))
        return out

    out = site.run(scenario(), timeout_s=60)
    assert (out["mute"].status_code, out["mute"].json()) == (200, {"muted": True})
    assert (out["hangup"].status_code, out["hangup"].json()) == (202, {"status": "hanging up"})
    assert any(out["id"] in command for command in out["killed"])  # B told FreeSWITCH
    assert out["record"]["replica"] == "replica-b"
    assert out["record"]["hangup_cause"] == "NORMAL_CLEARING"
    assert out["again"].status_code == 409  # ended: nothing to forward
    assert out["hangups"] == 1  # B's alone: A hears FreeSWITCH's hang-up too, but says nothing


def test_a_replica_that_loses_its_listening_connection_reconnects_and_hears_the_others(
    site: Site,
) -> None:
    a, b = site.replicas["replica-a"], site.replicas["replica-b"]
    site.postgres.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'voiceai-listen-replica-a'",
        site.database,
    )

    async def scenario() -> dict[str, Any]:
        await until(lambda: "listening to the other replicas again" in a.log_text(), "reconnect")
        async with Live(a) as on_a, PhoneCall(site.switch, b.ws, token=TOKEN) as call:
            await call.dial()
            started = await on_a.wait(events.CALL_STARTED, call.call_id)
            await call.end()
            ended = await on_a.wait(events.CALL_ENDED, call.call_id)
        return {"started": started, "ended": ended}

    out = site.run(scenario(), timeout_s=60)
    assert "lost the connection that hears the other replicas" in a.log_text()
    assert out["ended"]["data"]["reason"] == "hangup"


def test_an_event_too_large_for_a_notify_crosses_cut_to_fit() -> None:
    """PostgreSQL refuses a NOTIFY payload of 8000 bytes: a call.started with 8 KiB of fork
    metadata, or a long Russian reply, crosses with its texts cut (and its maps emptied)."""
    big = events.CallStarted(call_id="c1", caller="+15550100", metadata={"note": "я" * 4000})
    said = events.BotSaid(call_id="c1", text="да " * 1500, reply="да " * 1500)
    small = [events.CallState(call_id="c1", state=f"s{n}") for n in range(100)]
    payloads = list(cluster._packed("replica-b", [big, said, *small]))
    assert all(len(p.encode()) < 8000 for p in payloads)
    crossed = [events.parse_event(w) for p in payloads for w in json.loads(p)["events"]]
    assert [type(e) for e in crossed] == [events.CallStarted, events.BotSaid] + [
        events.CallState
    ] * 100
    assert crossed[0].caller == "+15550100"  # short fields whole
    note = crossed[0].metadata.get("note", "…")
    assert note.endswith("…") and len(note) < 4000
    assert crossed[1].text.endswith("…") and crossed[1].text.startswith("да да")
    assert [e.state for e in crossed[2:]] == [f"s{n}" for n in range(100)]  # in order


def test_forks_through_the_load_balancer_are_spread_over_both_replicas(site: Site) -> None:
    """The scale profile's HAProxy config (haproxy/haproxy.cfg), run for real in front of the
    two replicas: FreeSWITCH forks to one address, the calls land on both."""
    a, b = site.replicas["replica-a"], site.replicas["replica-b"]
    lb = free_port()
    env = {
        **os.environ,
        "LB_PORT": str(lb),
        "REPLICA_A": f"127.0.0.1:{a.port}",
        "REPLICA_B": f"127.0.0.1:{b.port}",
    }
    config = Path(__file__).resolve().parent.parent / "haproxy" / "haproxy.cfg"
    proxy = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def scenario() -> list[dict[str, Any]]:
        await until(lambda: _answers(f"http://127.0.0.1:{lb}/healthz"), "HAProxy up")
        ids = [f"lb-{i}-{time.monotonic_ns()}" for i in range(2)]
        for call_id in ids:  # one after the other: each goes to the replica with fewer forks
            channel = site.switch.add_channel(uuid=call_id)
            await site.switch.answer(call_id)
            site.switch.start_fork(
                channel,
                f"ws://127.0.0.1:{lb}/fork/{call_id}",
                rate=8000,
                bugname=FORK_BUG,
                metadata=json.dumps({"rate": "8k"}),
            )
            await record_until(a, call_id, lambda r: r["status"] == "active")
        records = [(await api(a, "GET", f"/api/calls/{c}")).json() for c in ids]
        for call_id in ids:
            await site.switch.hangup(call_id)
        return records

    try:
        records = site.run(scenario(), timeout_s=60)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    assert {r["replica"] for r in records} == {"replica-a", "replica-b"}


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


def test_killing_replica_b_mid_call_ends_its_call_as_replica_lost_once_a_notices(
    site: Site,
) -> None:
    a, b = site.replicas["replica-a"], site.replicas["replica-b"]

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Live(a) as on_a, PhoneCall(site.switch, b.ws, token=TOKEN) as call:
            await call.dial()
            await call.wait_event(events.CALL_STARTED)
            await on_a.wait(events.CALL_STARTED, call.call_id)
            await record_until(a, call.call_id, lambda r: r["status"] == "active")
            b.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            # Asked of A meanwhile: B never answers.
            hangup = asyncio.create_task(api(a, "POST", f"/api/calls/{call.call_id}/hangup"))
            out["record"] = await record_until(
                a, call.call_id, lambda r: r["status"] != "active", timeout_s=TIMEOUT_S + 15
            )
            out["noticed_after_s"] = time.monotonic() - killed_at
            out["ended"] = await on_a.wait(events.CALL_ENDED, call.call_id)
            channel = site.switch.channels[call.call_id]
            await until(lambda: bool(channel.transfers), "the caller sent to the apology")
            out["transfers"] = list(channel.transfers)
            async with Live(a) as late:
                out["snapshot"] = late.snapshot
            out["hangup"] = await hangup
            out["id"] = call.call_id
        return out

    out = site.run(scenario(), timeout_s=60)
    record = out["record"]
    assert (record["status"], record["end_reason"]) == ("ended", "replica lost")
    assert out["noticed_after_s"] >= TIMEOUT_S - 1  # not before its heartbeat went stale
    assert out["ended"]["data"]["reason"] == "replica lost"
    assert out["transfers"][0][0] == "voiceai_unavailable"  # the dialplan's apology, fallback
    assert out["snapshot"]["data"]["calls"] == []
    assert out["hangup"].status_code == 504
    assert "replica-b" in out["hangup"].json()["detail"]
    assert "replica replica-b lost" in a.log_text()
