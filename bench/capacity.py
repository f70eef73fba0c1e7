"""Capacity: how many simultaneous calls one service holds on this machine (prints figures).

Like turn_taking.py, everything is real but FreeSWITCH and Ollama, which are the project's
wire-level emulators (the LLM answers instantly): the service runs under uvicorn in a thread of
this process, on embedded settings, and every simulated call streams 8 kHz audio through the
mod_audio_fork endpoint. The service loads its own STT engine from its settings. It is started
here rather than through local_service.py, to run a probe inside its event loop.

Callers. N calls at once, started evenly over the first STAGGER_S seconds. Each caller asks a
real 2-4 s English question (/work/shared/speech/real, read in place, normalized and put through
the phone band as turn_taking.py does), waits until the reply has played, pauses 2-5 s (seeded),
and asks again until the run's time is up. The line is silent between questions.

Figures per N (one service for every run; steady state = from the last call dialled to the end):
- turns asked / answered; lost = no playback command within LOST_AFTER_S of the true end of
  speech; early = the first playback command came before the caller had finished.
- first audio: true end of speech (turn_taking.py's speech-frame rule on the clean clip, on the
  emulator's call clock) -> the first playback `sendmsg` the emulator received for that call.
- CPU: time.process_time() delta / wall over the steady state, in % of one core (the machine has
  os.cpu_count() cores); "callers" is this process's main thread (emulator, callers, probes).
- peak RSS: VmHWM, reset per run through /proc/self/clear_refs when the kernel allows.
- loop lag: a task in the service's own event loop sleeps 50 ms over and over; lag = how much
  later than asked it wakes.
- the service's own figures: its turn.latency stages (p50), and from /metrics, when it has them,
  the STT scheduler's queue (maximum of 2 s samples), waits and drops, and refused calls.

Floods, each beside 10 normal callers: (a) one caller talking without a pause for the whole
run, (b) one fork (a separate process, so its CPU is not counted as the service's) sending
64 KiB text frames as fast as the socket takes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from websockets.exceptions import ConnectionClosed

from local_service import ESL_PASSWORD
from turn_taking import (
    CLEAN,
    RATE,
    REAL,
    WIDE,
    Line,
    Mixer,
    Speech,
    TimedSwitch,
    load_manifest,
    make_speech,
    pct,
)
from voiceai import events
from voiceai.app import create_app
from voiceai.audio.pcm import decode_file
from voiceai.config import Settings
from voiceai.sim.demo import free_port
from voiceai.sim.fork_client import ForkClient
from voiceai.sim.freeswitch import Channel
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import TAKE_TIMEOUT_S, PhoneCall
from voiceai.sim.simulate import wait_ready

SELF = Path(__file__).resolve()  # run again as the text-flooding process
CALLS = (1, 10, 20, 30, 40)
QUICK_CALLS = (1, 10, 20)
SECONDS = 120.0
QUICK_SECONDS = 40.0
FLOOD_SECONDS = 60.0  # at most; a run's --seconds when shorter
FLOOD_NEIGHBOURS = 10
CLIP_S = (2.0, 4.0)  # file length of the questions
PAUSE_S = (2.0, 5.0)  # the caller's pause after a reply
STAGGER_S = 5.0
LEAD_S = 0.5  # from call.started to the first question
LOST_AFTER_S = 10.0
REPLY_DONE_S = 20.0  # longest wait for a reply to finish playing
QUIET_POLLS = 3  # 100 ms polls in a row with nothing playing and the service idle
TICK_S = 0.05  # the loop-lag probe's sleep
TEXT_FRAME = 64 * 1024  # bytes: MAX_FRAME_BYTES of the fork endpoint, the largest it takes
SEND_GRACE_S = 5.0  # a flood send unfinished this long after the end: the service stopped reading
RSS_CAP_KB = 4 * 1024 * 1024  # the text flood stops if the service's process grows past this
SEED = 11
# /metrics samples printed when the service has them (STT scheduler, admission control).
METRICS = ("stt_queue", "stt_wait", "stt_partials_dropped", "calls_refused", "event_loop_lag")
SCRAPE_EVERY_S = 2.0  # gauges are sampled this often during a run; their maximum is printed
REPLY = "Certainly, I can help with that. Is there anything else you need today?"
BUSY = ("thinking", "speaking")


# --- the service and its instruments --------------------------------------------------------


class ProbedServer(uvicorn.Server):
    """uvicorn that hands out its event loop, so a probe can run inside the service's loop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_ready = threading.Event()

    async def serve(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_ready.set()
        await super().serve(sockets)


class LoopLag:
    """Sleeps TICK_S in the service's loop over and over; notes how late each wake-up is."""

    def __init__(self) -> None:
        self._samples: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(TICK_S)
            self._samples.append(loop.time() - asked - TICK_S)

    def take(self) -> list[int]:
        """The samples since the last take (ms)."""
        samples, self._samples = self._samples, []
        return [round(s * 1000) for s in samples]


class CapacitySwitch(TimedSwitch):
    """TimedSwitch, with each call's playback arrivals indexed and awaitable."""

    def __init__(self, password: str) -> None:
        super().__init__(password)
        self.play_times: dict[str, list[float]] = defaultdict(list)
        self._signals: dict[str, asyncio.Event] = {}

    def enqueue_message(self, channel: Channel, message: dict[str, str]) -> None:
        before = len(self.plays)
        super().enqueue_message(channel, message)
        if len(self.plays) > before:
            self.play_times[channel.uuid].append(self.plays[-1].at)
            self._signal(channel.uuid).set()

    def _signal(self, uuid: str) -> asyncio.Event:
        return self._signals.setdefault(uuid, asyncio.Event())

    async def first_play(self, uuid: str, after: float, until_clock: float) -> float | None:
        """Call clock of the first playback command at or after `after`, waiting to `until`."""
        signal = self._signal(uuid)
        while True:
            found = next((t for t in self.play_times[uuid] if t >= after), None)
            remaining = until_clock - self.clock()
            if found is not None or remaining <= 0:
                return found
            signal.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), remaining)


def status_kb(field_name: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), when the kernel lets us."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Service:
    switch: CapacitySwitch
    ollama: OllamaEmulator
    server: ProbedServer
    thread: threading.Thread
    lag: LoopLag
    http: str
    ws: str
    database: Path
    peak_resets: bool = True

    async def active_calls(self) -> int | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            async with httpx.AsyncClient(timeout=5) as client:
                return int((await client.get(f"{self.http}/readyz")).json()["active_calls"])
        return None

    async def scrape(self) -> dict[str, float]:
        """The /metrics samples named in METRICS (no buckets); {} if there are none."""
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"{self.http}/metrics")
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        samples = {}
        for line in response.text.splitlines():
            key, _, value = line.rpartition(" ")
            name = key.partition("{")[0]
            wanted = any(m in name for m in METRICS) and not line.startswith("#")
            if wanted and not name.endswith(("_bucket", "_created")):
                with contextlib.suppress(ValueError):
                    samples[key] = float(value)
        return samples

    async def wait_idle(self, limit_s: float = 30.0) -> int | None:
        """Until no call is active; the count left when `limit_s` runs out."""
        deadline = time.monotonic() + limit_s
        while True:
            active = await self.active_calls()
            if active == 0 or time.monotonic() >= deadline:
                return active
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def service(work: Path) -> Any:
    switch = CapacitySwitch(ESL_PASSWORD)
    await switch.start()
    try:
        with OllamaEmulator(reply=lambda messages: REPLY) as ollama:
            port = free_port()
            settings = Settings(
                port=port,
                esl_port=switch.port,
                esl_password=ESL_PASSWORD,
                llm="ollama",
                ollama_url=ollama.url,
                tts="piper",
                greeting="",
                database_url=f"sqlite:///{work}/calls.db",
                media_dir=work / "media",
                max_calls=10000,  # the benchmark finds the limit; admission must not hide it
            )
            server = ProbedServer(
                uvicorn.Config(create_app(settings), port=port, log_level="warning")
            )
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            if not await wait_ready(f"http://127.0.0.1:{port}", None, 180.0):
                raise SystemExit("the service did not connect to the event socket emulator")
            lag = LoopLag()
            assert server.loop is not None
            probe = asyncio.run_coroutine_threadsafe(lag.run(), server.loop)
            svc = Service(
                switch,
                ollama,
                server,
                thread,
                lag,
                f"http://127.0.0.1:{port}",
                f"ws://127.0.0.1:{port}",
                work / "calls.db",
            )
            try:
                yield svc
            finally:
                probe.cancel()
                server.should_exit = True
                thread.join(timeout=30)
    finally:
        await switch.stop()


# --- callers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    name: str
    pcm: np.ndarray  # int16 at RATE, phone band, starting at the clip's first sample
    onset_s: float
    end_s: float  # true end of speech


def load_clips(work: Path) -> list[Clip]:
    """The English clips of 2-4 s, normalized and through the phone band (read in place)."""
    mixer = Mixer(work, {}, SEED)
    clips = []
    for item in load_manifest():
        if item["lang"] != "en":
            continue
        wide = decode_file(REAL / item["file"], WIDE)
        if not CLIP_S[0] <= wide.size / WIDE <= CLIP_S[1]:
            continue
        speech: Speech = make_speech(item["id"], item["text"], wide)
        clips.append(Clip(item["id"], mixer.mix(speech, CLEAN), speech.onset_s, speech.end_s))
    return clips


@dataclass
class Turn:
    latency_ms: int | None  # true end of speech -> first playback command; None: lost
    early: bool = False  # that command came before the true end


@dataclass
class CallResult:
    turns: list[Turn] = field(default_factory=list)
    failed: str = ""  # the call never got going: why
    not_taken: bool = False  # the emulator ran the dialplan's "service never took it" transfer
    stages: list[dict[str, int]] = field(default_factory=list)  # the service's turn.latency
    fork_end: str = ""  # the fork failed to connect, or the service closed it mid-call


def service_idle(call: PhoneCall) -> bool:
    states = call.log.of(events.CALL_STATE)
    return not states or states[-1]["data"]["state"] not in BUSY


async def reply_done(call: PhoneCall, limit_s: float) -> None:
    """Until nothing plays and the service says it is not busy, QUIET_POLLS polls in a row."""
    channel = call.channel
    assert channel is not None
    quiet, deadline = 0, time.monotonic() + limit_s
    while quiet < QUIET_POLLS and time.monotonic() < deadline:
        idle = channel.playing is None and not channel.media and service_idle(call)
        quiet = quiet + 1 if idle else 0
        await asyncio.sleep(0.1)


async def ask(svc: Service, call: PhoneCall, line: Line, clip: Clip) -> Turn:
    start = await line.wait_sent(line.say(clip.pcm))
    end = start + clip.end_s
    play = await svc.switch.first_play(call.call_id, start, end + LOST_AFTER_S)
    if play is None:
        return Turn(None)
    return Turn(round((play - end) * 1000), play < end)


async def caller(
    svc: Service, clips: Sequence[Clip], seed: int, delay: float, until: float
) -> CallResult:
    """One caller: question, reply, pause, again, until the monotonic time `until`."""
    rng = random.Random(seed)
    result = CallResult()
    await asyncio.sleep(delay)
    try:
        async with PhoneCall(svc.switch, svc.ws, rate=RATE) as call:
            await call.dial()
            channel = call.channel
            assert channel is not None
            line = Line(channel, np.zeros(RATE // 10, dtype=np.int16))  # never started
            try:
                # Past the dialplan's deadline, so a call never taken shows its transfer.
                await call.wait_event(events.CALL_STARTED, limit_s=TAKE_TIMEOUT_S + 2)
                await asyncio.sleep(LEAD_S)
                while time.monotonic() < until:
                    result.turns.append(await ask(svc, call, line, rng.choice(clips)))
                    if time.monotonic() >= until:
                        break
                    await reply_done(call, REPLY_DONE_S)
                    await asyncio.sleep(rng.uniform(*PAUSE_S))
            except Exception as exc:
                started = "seen" if call.log.of(events.CALL_STARTED) else "never seen"
                result.failed = f"{type(exc).__name__}: {exc}"[:80] + f" (call.started {started})"
            finally:
                result.not_taken = any(t[0] == "voiceai_unavailable" for t in channel.transfers)
                result.stages = [e["data"] for e in call.log.of(events.TURN_LATENCY)]
                result.fork_end = fork_end(channel)
                with contextlib.suppress(Exception):
                    await call.end(limit_s=20)
    except Exception as exc:  # the live socket or the hang-up
        result.failed = result.failed or f"{type(exc).__name__}: {exc}"[:120]
    return result


def fork_end(channel: Channel) -> str:
    """How the call's fork ended before the caller hung up, if it did."""
    fork = channel.fork
    if fork is None or fork.stopping:
        return ""
    if fork.state == "failed":
        return "failed to connect (refused, or the handshake timed out)"
    if fork.state == "closed":
        return f"closed by the service with code {fork.close_code}"
    return ""


# --- floods -----------------------------------------------------------------------------------


@dataclass
class FloodReport:
    lines: list[str]


async def speech_flood(svc: Service, clips: Sequence[Clip], seconds: float) -> FloodReport:
    """One caller who never stops talking: the clips' speech back to back, no gaps."""
    pieces, total, order = [], 0, random.Random(SEED)
    while total < (seconds + 10) * RATE:
        clip = order.choice(clips)
        piece = clip.pcm[int(clip.onset_s * RATE) : int(clip.end_s * RATE)]
        pieces.append(piece)
        total += piece.size
    speech = np.concatenate(pieces)
    async with PhoneCall(svc.switch, svc.ws, rate=RATE) as call:
        await call.dial()
        channel = call.channel
        assert channel is not None
        call.say(speech)
        await asyncio.sleep(seconds)
        lines = [fork_fate(channel.fork)]
        plays = len(svc.switch.play_times[call.call_id])
        lines.append(
            f"in {seconds:.0f} s of non-stop speech the service took "
            f"{len(call.log.of(events.TRANSCRIPT_FINAL))} final transcripts, answered "
            f"{len(call.log.of(events.BOT_SAID))} times ({plays} playback commands), "
            f"{len(call.log.of(events.BARGE_IN))} barge-ins, "
            f"{len(call.log.of(events.CALL_ERROR))} call errors"
        )
        with contextlib.suppress(Exception):
            await call.end(limit_s=20)
    return FloodReport(lines)


def fork_fate(fork: Any) -> str:
    if fork is None:
        return "the emulator never started the fork"
    if fork.state != "closed" or fork.stopping:
        return f"fork still open at the end ({fork.bytes_sent / 16000:.0f} s of audio sent)"
    return f"fork closed by the service: code {fork.close_code}"


async def text_flood(svc: Service, seconds: float) -> FloodReport:
    """A separate process floods /fork/<id> with text frames; what it saw, and the service."""
    call_id = f"flood-text-{os.getpid()}"
    db_before = svc.database.stat().st_size if svc.database.exists() else 0
    rss_before = status_kb("VmRSS")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SELF),
        "--text-flood",
        f"{svc.ws}/fork/{call_id}",
        str(seconds),
        str(os.getpid()),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    try:
        seen = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return FloodReport([f"the flooding process failed (exit {process.returncode})"])
    db_after = svc.database.stat().st_size if svc.database.exists() else 0
    closed = seen["closed_by_service_after_s"]
    fate = (
        f"closed by the service after {closed:.2f} s: code {seen['code']} “{seen['reason']}”"
        if closed is not None
        else f"still open after {seconds:.0f} s (closed by the flooder)"
    )
    return FloodReport(
        [
            f"sent {seen['frames']} frames ({seen['frames'] * TEXT_FRAME / 1e6:.0f} MB, "
            f"{seen['mb_per_s']:.1f} MB/s){'; stopped at the RSS cap' if seen['capped'] else ''}"
            f"{'; the last send was still blocked at the end' if seen['blocked'] else ''}",
            f"fork {fate}",
            f"service RSS {rss_before / 1024:.0f} → {status_kb('VmRSS') / 1024:.0f} MB, "
            f"call records {db_before / 1e6:.1f} → {db_after / 1e6:.1f} MB",
        ]
    )


async def flood_text_main(url: str, seconds: float, watch_pid: int) -> None:
    """The flooding process: metadata, then TEXT_FRAME-byte text frames until told to stop."""
    frame = "x" * TEXT_FRAME
    frames, capped, blocked, closed_after = 0, False, False, None
    code, reason = None, ""
    metadata = {"callId": url.rsplit("/", 1)[-1], "caller": "+15550666", "rate": "8k"}
    began = time.monotonic()
    async with ForkClient(url, metadata=metadata) as client:
        ws = client.ws
        assert ws is not None
        try:
            while time.monotonic() - began < seconds:
                if frames % 64 == 0 and status_kb("VmRSS", watch_pid) > RSS_CAP_KB:
                    capped = True
                    break
                left = seconds - (time.monotonic() - began)
                await asyncio.wait_for(ws.send(frame), left + SEND_GRACE_S)
                frames += 1
        except TimeoutError:
            blocked = True  # unfinished SEND_GRACE_S after the end: the service stopped reading
        except ConnectionClosed:
            closed_after = time.monotonic() - began
        received = ws.protocol.close_rcvd
        if received is not None:
            code, reason = received.code, received.reason
            closed_after = closed_after or time.monotonic() - began
    elapsed = time.monotonic() - began
    seen = {
        "frames": frames,
        "mb_per_s": frames * TEXT_FRAME / 1e6 / max(elapsed, 1e-9),
        "capped": capped,
        "blocked": blocked,
        "closed_by_service_after_s": closed_after,
        "code": code,
        "reason": reason,
    }
    print(json.dumps(seen))


# --- the service's own metrics ----------------------------------------------------------------


class MetricsWatch:
    """/metrics at the start of a run, gauges' maxima every SCRAPE_EVERY_S, then the end."""

    def __init__(self, svc: Service) -> None:
        self._svc = svc
        self.before: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.before = await self._svc.scrape()
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.after = await self._svc.scrape()
        self._note(self.after)

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SCRAPE_EVERY_S)
            self._note(await self._svc.scrape())

    def _note(self, samples: dict[str, float]) -> None:
        for key, value in samples.items():
            if is_gauge(key):
                self.peaks[key] = max(self.peaks.get(key, value), value)

    def lines(self) -> list[str]:
        """One line per metric: gauges' maxima, histograms' count and mean, counters' growth."""
        groups: dict[str, list[str]] = defaultdict(list)
        for key, value in self.after.items():
            name, labels = split_key(key)
            grown = value - self.before.get(key, 0.0)
            if name.endswith("_count"):
                base = name.removesuffix("_count")
                total = self.after.get(key.replace("_count", "_sum", 1), 0.0)
                total -= self.before.get(key.replace("_count", "_sum", 1), 0.0)
                mean = f" × {total / grown * 1000:.0f} ms" if grown and "seconds" in base else ""
                groups[f"{base} this run"].append(f"{labels}{grown:.0f}{mean}")
            elif name.endswith("_total"):
                groups[f"{name} this run"].append(f"{labels}{grown:.0f}")
            elif is_gauge(key):
                groups[f"{name} max seen"].append(f"{labels}{self.peaks[key]:.0f}")
        return [f"{title}: {', '.join(parts)}" for title, parts in groups.items()]


def split_key(key: str) -> tuple[str, str]:
    """("voiceai_stt_queue", "early ") from 'voiceai_stt_queue{priority="early"}'."""
    name, _, rest = key.partition("{")
    values = [part.partition("=")[2].strip('"') for part in rest.rstrip("}").split(",") if part]
    return name, "".join(f"{v} " for v in values)


def is_gauge(key: str) -> bool:
    return not split_key(key)[0].endswith(("_count", "_sum", "_total"))


# --- one run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    calls: list[CallResult]
    cpu_pct: float
    callers_cpu_pct: float
    peak_rss_mb: float
    peak_is_lifetime: bool
    lag_ms: list[int]
    metrics: list[str]
    left_active: int | None
    flood: FloodReport | None = None

    @property
    def turns(self) -> list[Turn]:
        return [t for c in self.calls for t in c.turns]

    @property
    def latencies(self) -> list[int]:
        return [t.latency_ms for t in self.turns if t.latency_ms is not None and not t.early]

    @property
    def lost(self) -> int:
        return sum(t.latency_ms is None for t in self.turns)


async def run_load(
    svc: Service, clips: Sequence[Clip], calls: int, seconds: float, label: str, flood: Any = None
) -> RunResult:
    """`calls` callers for `seconds` (after the stagger); `flood(svc)` beside them if given."""
    watch = MetricsWatch(svc)
    await watch.start()
    peak_resets = reset_peak_rss()
    began = time.monotonic()
    until = began + STAGGER_S + seconds
    tasks = [
        asyncio.create_task(
            caller(svc, clips, SEED * 1000 + calls * 100 + i, i * STAGGER_S / calls, until)
        )
        for i in range(calls)
    ]
    flooding = asyncio.create_task(flood(svc)) if flood is not None else None
    await asyncio.sleep(STAGGER_S)
    svc.lag.take()
    cpu, callers_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.sleep(max(until - time.monotonic(), 0))
    wall = time.perf_counter() - wall
    cpu_pct = (time.process_time() - cpu) / wall * 100
    callers_pct = (time.thread_time() - callers_cpu) / wall * 100
    lag = svc.lag.take()
    results = list(await asyncio.gather(*tasks))
    report = await flooding if flooding is not None else None
    await watch.stop()
    return RunResult(
        label,
        results,
        cpu_pct,
        callers_pct,
        status_kb("VmHWM") / 1024,
        not peak_resets,
        lag,
        watch.lines(),
        await svc.wait_idle(),
        report,
    )


# --- printing ---------------------------------------------------------------------------------

HEADER = (
    f"  {'calls':<10}{'asked':>6}{'answered':>9}{'lost':>5}{'early':>6}{'p50':>7}{'p95':>7}"
    f"{'CPU %':>7}{'callers':>8}{'peak RSS':>9}{'lag p95':>8}{'lag max':>8}"
)


def row(result: RunResult) -> str:
    turns, latencies = result.turns, result.latencies
    answered = len(turns) - result.lost
    figures = f"{pct(latencies, 0.5):>7}{pct(latencies, 0.95):>7}" if latencies else f"{'-':>14}"
    lag = sorted(result.lag_ms)
    lag_figures = f"{pct(lag, 0.95):>8}{lag[-1]:>8}" if lag else f"{'-':>16}"
    peak = f"{result.peak_rss_mb:.0f} MB" + ("*" if result.peak_is_lifetime else "")
    return (
        f"  {result.label:<10}{len(turns):>6}{answered:>9}{result.lost:>5}"
        f"{sum(t.early for t in turns):>6}{figures}{result.cpu_pct:>7.0f}"
        f"{result.callers_cpu_pct:>8.0f}{peak:>9}{lag_figures}"
    )


def notes(result: RunResult) -> list[str]:
    out = []
    for reason, n in Counter(c.failed for c in result.calls if c.failed).items():
        out.append(f"{n} calls failed: {reason}")
    for how, n in Counter(c.fork_end for c in result.calls if c.fork_end).items():
        out.append(f"{n} forks {how}")
    not_taken = sum(c.not_taken for c in result.calls)
    if not_taken:
        out.append(
            f"{not_taken} calls not taken within {TAKE_TIMEOUT_S:.0f} s: the dialplan transferred "
            "them to voiceai_unavailable"
        )
    if result.left_active:
        out.append(f"{result.left_active} calls still active 30 s after the run")
    stages = stage_p50s(result)
    if stages:
        out.append(f"service's own stages, p50 ms after its end of speech: {stages}")
    out += result.metrics
    return [f"    {line}" for line in out]


def stage_p50s(result: RunResult) -> str:
    timings = [t for c in result.calls for t in c.stages]
    figures = []
    for stage in events.LATENCY_STAGES:
        values = [t[stage] for t in timings if t.get(stage) is not None]
        if values:
            figures.append(f"{stage} {pct(values, 0.5)}")
    both = [t for t in timings if t.get("play_sent") is not None and t.get("first_audio")]
    odd = sum(t["play_sent"] < t["first_audio"] for t in both)
    if odd:
        figures.append(f"(play_sent < first_audio in {odd} of {len(both)} turns)")
    return ", ".join(figures)


def print_result(result: RunResult) -> None:
    print(row(result), flush=True)
    for line in notes(result):
        print(line, flush=True)


def largest_holding(results: Sequence[RunResult]) -> str:
    single = next((r for r in results if len(r.calls) == 1 and r.latencies), None)
    if single is None:
        return "largest N held: needs a 1-call run with answered turns as the baseline"
    limit = 2 * pct(single.latencies, 0.5)
    held = [
        len(r.calls)
        for r in results
        if r.latencies and r.lost == 0 and pct(r.latencies, 0.95) <= limit
    ]
    best = max(held) if held else None
    return (
        f"largest N held (p95 ≤ 2 × the 1-call p50 = {limit:.0f} ms, no lost turn): "
        f"{best if best is not None else 'none'}"
    )


def print_legend(seconds: float, cores: int | None) -> None:
    print(
        f"  {seconds:.0f} s of steady state per run after a {STAGGER_S:.0f} s stagger; first "
        f"audio in ms from the true end of speech (answered, not early; nearest rank);\n  lost: "
        f"no playback command within {LOST_AFTER_S:.0f} s; early: one before the caller "
        f"finished; CPU %: process CPU / wall ({cores} cores = {100 * (cores or 1)} %), callers:"
        f" this process's main thread (emulator + callers);\n  peak RSS: VmHWM of the run "
        f"(* = since start: reset refused); lag: ms late of a 50 ms sleep in the service's loop"
    )


# --- main -------------------------------------------------------------------------------------


def parse_calls(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


async def main(calls: Sequence[int], seconds: float, floods: bool) -> None:
    if shutil.which("sox") is None:
        raise SystemExit("this benchmark converts audio with sox: apt-get install sox")
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="voiceai-capacity-"))
    try:
        clips = load_clips(work)
        print(
            f"capacity on {os.cpu_count()} cores: {len(clips)} real English questions "
            f"({CLIP_S[0]:.0f}-{CLIP_S[1]:.0f} s), pauses {PAUSE_S[0]:.0f}-{PAUSE_S[1]:.0f} s, "
            f"instant LLM emulator, piper, service STT from its settings",
            flush=True,
        )
        async with service(work) as svc:
            print(f"  (service ready after {time.monotonic() - began:.0f} s)\n", flush=True)
            print_legend(seconds, os.cpu_count())
            print(HEADER, flush=True)
            results = []
            for n in calls:
                result = await run_load(svc, clips, n, seconds, f"{n}")
                results.append(result)
                print_result(result)
            print(f"\n{largest_holding(results)}", flush=True)
            if floods:
                await run_floods(svc, clips, min(seconds, FLOOD_SECONDS), results)
        print(f"\n(total {time.monotonic() - began:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def run_floods(
    svc: Service, clips: Sequence[Clip], seconds: float, results: Sequence[RunResult]
) -> None:
    print(
        f"\nfloods: {FLOOD_NEIGHBOURS} normal callers for {seconds:.0f} s beside one flooding "
        "call (the row shows the normal callers only)"
    )
    print(HEADER)
    baseline = next((r for r in results if len(r.calls) == FLOOD_NEIGHBOURS), None)
    if baseline is not None:
        print(row(baseline).replace(f"  {FLOOD_NEIGHBOURS:<10}", f"  {'no flood':<10}", 1))
    variants = (
        ("a speech", lambda s: speech_flood(s, clips, seconds + STAGGER_S)),
        ("b text", lambda s: text_flood(s, seconds + STAGGER_S)),
    )
    for label, flood in variants:
        result = await run_load(svc, clips, FLOOD_NEIGHBOURS, seconds, label, flood)
        print_result(result)
        if result.flood is not None:
            for line in result.flood.lines:
                print(f"    flooding call: {line}", flush=True)
    print(
        "  a: one caller talking non-stop (clips' speech back to back); b: one fork (another "
        f"process) sending {TEXT_FRAME}-byte text frames as fast as the socket takes them"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=parse_calls, help="N per run, e.g. 1,10,20")
    parser.add_argument("--seconds", type=float, help=f"per run (default {SECONDS:.0f})")
    parser.add_argument("--quick", action="store_true", help="N 1,10,20 for 40 s each")
    parser.add_argument("--no-floods", action="store_true", help="skip the two flood runs")
    parser.add_argument("--text-flood", nargs=3, help=argparse.SUPPRESS)  # the flooding process
    args = parser.parse_args()
    if args.text_flood:
        url, flood_s, pid = args.text_flood
        asyncio.run(flood_text_main(url, float(flood_s), int(pid)))
    else:
        default_calls, default_s = (QUICK_CALLS, QUICK_SECONDS) if args.quick else (CALLS, SECONDS)
        asyncio.run(
            main(args.calls or default_calls, args.seconds or default_s, not args.no_floods)
        )
