"""Fakes of every engine and of FreeSWITCH's call control, for testing the conversation core
without models or sockets, on a loop whose clock the tests control (looptime).

The fake switch answers the way FreeSWITCH does (docs/design.md, "Measured on FreeSWITCH"):
queued files play in order and each gets PLAYBACK_START/STOP; `break` stops the current file
with status `break` and flushes the rest without events; hang-up sends CHANNEL_HANGUP_COMPLETE.
It also records what a real switch would make audible: any file played after the call was
transferred or hung up, or missing when its turn came.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voiceai.audio.turns import TurnConfig
from voiceai.conversation.registry import CallRegistry
from voiceai.conversation.session import CallPolicy, CallSession, Engines
from voiceai.engines.llm import LLMError, ToolCall, ToolSpec
from voiceai.engines.stt import STTError, Transcript
from voiceai.engines.stt_scheduler import TranscriptionScheduler
from voiceai.engines.tts import SpokenAudio, TTSError
from voiceai.events import BaseEvent, EventBus
from voiceai.prompts import PromptCache
from voiceai.telephony.esl import EslEvent
from voiceai.tools.toolbox import Toolbox

RATE = 8000
CHANNEL_RATE = 8000  # PCMU: PLAYBACK_STOP offsets count 8 kHz samples
ESL_TIMEOUT_S = 5.0  # how long the service waits for FreeSWITCH to answer a command


class FakeSTT:
    """Transcribes any audio as `text` (what the test says the caller said)."""

    name = "fake-stt"
    multilingual = False

    def __init__(self) -> None:
        self.text = ""
        self.delay_s = 0.05
        self.fail = False
        self.calls = 0

    async def transcribe(self, audio: np.ndarray, language: str | None) -> Transcript | None:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise STTError("fake STT failed")
        if not self.text:
            return None
        return Transcript(self.text, language or "en", len(audio) / 16000, 50)

    async def aclose(self) -> None:
        pass


# A scripted reply: text, one tool call, or text and tool calls in the order the model makes them.
FakeReply = str | ToolCall | list[str | ToolCall]


@dataclass
class FakeLLM:
    """Replies with the next of `replies`, a word at a time, `token_s` apart.

    A reply may hold ToolCall items; they are yielded (a `token_s` step each) only when the
    request offered tools, since a model cannot call tools it was not given.
    """

    replies: list[FakeReply] = field(
        default_factory=lambda: ["Sure, I can help with that booking."]
    )
    first_token_s: float = 0.1
    token_s: float = 0.02
    fail: str | None = None  # raise LLMError with this message instead of answering
    name: str = "fake-llm"
    supports_tools: bool = True
    requests: list[list[dict[str, Any]]] = field(default_factory=list)
    tools_offered: list[list[ToolSpec]] = field(default_factory=list)  # one list per request
    closed: int = 0  # streams closed before their end (generation stopped)

    async def stream_reply(
        self, messages: list[dict[str, Any]], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        self.requests.append([dict(m) for m in messages])
        self.tools_offered.append(list(tools))
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        finished = False
        try:
            await asyncio.sleep(self.first_token_s)
            if self.fail is not None:
                raise LLMError(self.fail)
            first = True
            for item in reply if isinstance(reply, list) else [reply]:
                if isinstance(item, ToolCall):
                    if not tools:
                        continue
                    steps: list[str | ToolCall] = [item]
                else:
                    steps = [w if i == 0 else " " + w for i, w in enumerate(item.split(" "))]
                for step in steps:
                    if not first:
                        await asyncio.sleep(self.token_s)
                    first = False
                    yield step
            finished = True
        finally:
            if not finished:
                self.closed += 1

    async def warm_up(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class FakeTTS:
    """60 ms of audio a character (a 40-character sentence lasts 2.4 s) after `delay_s`."""

    name = "fake-tts"
    timeout_s = 5.0

    def __init__(self) -> None:
        self.delay_s = 0.05
        self.fail_on: str | None = None  # sentences containing this fail
        self.spoken: list[str] = []

    def speaks(self, language: str) -> bool:
        return True

    async def synthesize(self, text: str, language: str, rate: int) -> SpokenAudio:
        await asyncio.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in text:
            raise TTSError(f"fake TTS failed on {text!r}")
        self.spoken.append(text)
        samples = np.zeros(int(len(text) * 0.06 * rate), dtype=np.int16)
        return SpokenAudio(samples, rate, "fake")


@dataclass
class Command:
    name: str
    arg: str
    at: float


class FakeSwitch:
    """CallControl for the calls of one registry, answering with FreeSWITCH's events."""

    def __init__(self, registry: CallRegistry) -> None:
        self.registry = registry
        self.connected = True
        self.commands: list[Command] = []
        self.violations: list[str] = []  # what a caller would have heard that they must not
        self.refuse_transfer = False
        self.refuse_hangup = False
        self.unanswered_plays: set[int] = set()  # these play commands (1st, 2nd...) time out
        self._plays = 0
        self._queues: dict[str, list[str]] = {}
        self._playing: dict[str, tuple[str, float, asyncio.TimerHandle]] = {}
        self._gone: dict[str, str] = {}  # uuid → "transferred" | "hung up"

    def _log(self, name: str, arg: str = "") -> None:
        self.commands.append(Command(name, arg, asyncio.get_running_loop().time()))

    def named(self, name: str) -> list[Command]:
        return [c for c in self.commands if c.name == name]

    def _send(self, uuid: str, name: str, **headers: str) -> None:
        self.registry.deliver(EslEvent(name, None, {"Unique-ID": uuid, **headers}))

    def _alive(self) -> None:
        if not self.connected:
            raise ConnectionError("event socket not connected")

    async def play(self, uuid: str, path: str) -> None:
        self._alive()
        self._plays += 1
        if self._plays in self.unanswered_plays:  # FreeSWITCH busy: the request times out
            self._log("play_unanswered", path)
            await asyncio.sleep(ESL_TIMEOUT_S)
            raise TimeoutError(f"FreeSWITCH did not answer `sendmsg` within {ESL_TIMEOUT_S:g} s")
        self._log("play", path)
        if uuid in self._gone:
            self.violations.append(
                f"played {Path(path).name} after the call was {self._gone[uuid]}"
            )
        self._queues.setdefault(uuid, []).append(path)
        if uuid not in self._playing:
            self._next(uuid)

    def _next(self, uuid: str) -> None:
        queue = self._queues.get(uuid) or []
        if not queue:
            return
        path = queue.pop(0)
        if not Path(path).exists():
            self.violations.append(f"{Path(path).name} was deleted before it played")
            return self._next(uuid)
        with wave.open(path) as w:
            length = w.getnframes() / w.getframerate()
        loop = asyncio.get_running_loop()
        handle = loop.call_later(length, self._finished, uuid, path, "done")
        self._playing[uuid] = (path, loop.time(), handle)
        self._send(uuid, "PLAYBACK_START", **{"Playback-File-Path": path})

    def _finished(self, uuid: str, path: str, status: str) -> None:
        _, started, handle = self._playing.pop(uuid)
        handle.cancel()
        offset = int((asyncio.get_running_loop().time() - started) * CHANNEL_RATE)
        if self.connected:
            self._send(
                uuid,
                "PLAYBACK_STOP",
                **{
                    "Playback-File-Path": path,
                    "Playback-Status": status,
                    "variable_playback_last_offset_pos": str(offset),
                    "Channel-Read-Codec-Rate": str(CHANNEL_RATE),
                },
            )
        if status == "done":
            self._next(uuid)

    async def break_playback(self, uuid: str) -> None:
        self._alive()
        self._log("break")
        self._queues[uuid] = []  # `all`: the rest is flushed, without events
        if uuid in self._playing:
            self._finished(uuid, self._playing[uuid][0], "break")

    async def transfer(self, uuid: str, number: str) -> None:
        self._alive()
        self._log("transfer", number)
        if self.refuse_transfer:
            raise ConnectionError("-ERR NO_ROUTE_DESTINATION")
        self._gone[uuid] = "transferred"

    async def hangup(self, uuid: str, cause: str) -> None:
        self._alive()
        self._log("hangup", cause)
        if self.refuse_hangup:
            raise ConnectionError("-ERR NO_SUCH_CHANNEL")
        self.caller_hangs_up(uuid, cause)

    def caller_hangs_up(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None:
        self._gone[uuid] = "hung up"
        if uuid in self._playing:
            self._playing.pop(uuid)[2].cancel()
        self._queues.pop(uuid, None)
        self._send(uuid, "CHANNEL_HANGUP_COMPLETE", **{"Hangup-Cause": cause})

    def press(self, uuid: str, digit: str) -> None:
        self._send(uuid, "DTMF", **{"DTMF-Digit": digit, "DTMF-Source": "RTP"})

    def lose_connection(self) -> None:
        """The socket drops: no more events; files already queued play on in FreeSWITCH."""
        self.connected = False
        self.registry.connection_lost()

    async def cancel_scheduled(self, uuid: str) -> None:
        self._alive()
        self._log("sched_del")

    async def record(self, uuid: str, path: str) -> None:
        self._alive()
        self._log("record", path)


def vowel(ms: int, rate: int = RATE) -> np.ndarray:
    """A voiced sound (harmonics of 130 Hz in syllables): speech to webrtcvad.

    Each 260 ms syllable ends in a 60 ms dip 20 dB down, as real speech dips between syllables
    (the turn detector learns the line's background from such quiet frames).
    """
    t = np.arange(int(rate * ms / 1000)) / rate
    signal = sum(np.sin(2 * np.pi * 130 * k * t + k) / k for k in range(1, 25))
    signal *= np.where(t % 0.26 < 0.2, 1.0, 0.1)
    return (signal / np.abs(signal).max() * 6000).astype(np.int16)


def line_noise(ms: int, rate: int = RATE) -> np.ndarray:
    """A quiet line (about -56 dBFS, well under the turn detector's speech floor)."""
    rng = np.random.default_rng(ms)
    return (rng.standard_normal(int(rate * ms / 1000)) * 50).astype(np.int16)


class CoreCall:
    """One call's session on fakes, driven as FreeSWITCH and a caller would drive it."""

    def __init__(
        self,
        folder: Path,
        *,
        llm: FakeLLM | None = None,
        greeting: str = "",
        fallback_number: str = "",
        transfer_digit: str = "0",
        end_of_turn_ms: int = 600,
        call_id: str = "call-1",
        record_calls: bool = False,
        tools: Toolbox | None = None,
    ) -> None:
        self.bus = EventBus()
        self.events: list[BaseEvent] = []
        self._sub = self.bus.subscribe(maxsize=100_000)
        self.registry = CallRegistry()
        self.switch = FakeSwitch(self.registry)
        self.stt = FakeSTT()
        self.llm = llm or FakeLLM()
        self.tts = FakeTTS()
        self.media = folder / "media"
        self.prompts = folder / "prompts"
        engines = Engines(
            TranscriptionScheduler(self.stt, workers=1),
            self.llm,
            self.tts,
            self.switch,
            PromptCache(self.tts, self.prompts),
            self.bus,
        )
        policy = CallPolicy(
            turn=TurnConfig(end_of_turn_ms=end_of_turn_ms),
            greeting=greeting,
            apology="Sorry, something went wrong.",
            fallback_number=fallback_number,
            transfer_digit=transfer_digit,
            media_dir=self.media,
            partial_transcripts=False,
            record_calls=record_calls,
            tools=tools,
        )
        self.session = CallSession(
            call_id, rate=RATE, channels=1, language="en", engines=engines, policy=policy
        )
        self.call_id = call_id
        self.registry.add(self.session)

    def received(self, kind: type[BaseEvent] | None = None) -> list[BaseEvent]:
        while not self._sub.queue.empty():
            self.events.append(self._sub.queue.get_nowait())
        return [e for e in self.events if kind is None or isinstance(e, kind)]

    async def send_audio(self, audio: np.ndarray) -> None:
        """In 20 ms packets, in (loop) real time, as mod_audio_fork sends them."""
        data = audio.tobytes()
        step = RATE // 50 * 2
        for i in range(0, len(data), step):
            self.session.feed(data[i : i + step])
            await asyncio.sleep(0.02)

    async def caller_says(self, text: str, speech_ms: int = 1200, then_ms: int = 800) -> None:
        self.stt.text = text
        await self.send_audio(np.concatenate([vowel(speech_ms), line_noise(then_ms)]))

    async def until(self, predicate: Callable[[], bool], limit_s: float = 30.0) -> None:
        """Wait (in loop time) until `predicate` holds, while the line carries its noise."""
        async with asyncio.timeout(limit_s):
            while not predicate():
                self.session.feed(line_noise(20).tobytes())
                await asyncio.sleep(0.02)

    async def settle(self, seconds: float = 15.0) -> None:
        """Let the call run on with a quiet line."""
        await self.send_audio(line_noise(int(seconds * 1000)))
