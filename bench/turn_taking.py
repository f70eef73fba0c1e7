"""Turn-taking on real phone lines: noise, mid-sentence pauses, barge-in (prints figures).

Like turn_latency.py, everything is real but FreeSWITCH and Ollama, which are the project's
wire-level emulators (the LLM answers instantly): the service runs under uvicorn on embedded
settings, and every simulated call streams 8 kHz audio through the mod_audio_fork endpoint.

Audio. Real human speech from /work/shared/speech/real (read in place) and piper questions, each
normalized to an active speech level of -26 dBFS (ITU-T P.56's nominal telephone level), mixed at
16 kHz with line noise, then put through the phone band with sox exactly as make_phone.sh does
(16 kHz -> 8 kHz G.711 µ-law -> 8 kHz 16-bit), in a temporary folder.
- Speech frames, true onset and end, active speech level: voiceai.sim.speech_span's rule, on the
  CLEAN 16 kHz clip. SNR = active speech level - RMS level of
  the whole noise signal, both at 16 kHz before the phone band: 10/15/20 dB put the noise at
  -36/-41/-46 dBFS.
- Pink noise: `sox synth pinknoise`. Babble: 6 real clips that are never used as speech here,
  each trimmed to its speech, time-reversed (unintelligible), looped from a random offset, summed.
- The noise runs through the whole call: before, under and after the speech (a caller in a car).

Timing. The ESL emulator is subclassed only to note, on its call clock, when each playback
`sendmsg` and each `uuid_break` arrives. The fork emulator sends the caller's audio on the same
clock and records when it sent each byte (Channel.caller_segments), so "speech ended" and "reply
sent" are two readings of one clock, with no guess about the service's own estimates. One call
per measured turn (parts 1-2), so a late reply can never be taken for the next turn's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from local_service import ESL_PASSWORD, local_service
from voiceai import events
from voiceai.audio.pcm import FrameChunker, decode_file, resample, to_float
from voiceai.engines.stt import WHISPER_RATE, WhisperSTT
from voiceai.sim.babble import babble
from voiceai.sim.freeswitch import Channel, EslServer
from voiceai.sim.freeswitch.protocol import get_header
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall
from voiceai.sim.speech_span import active_level, speech_span
from voiceai.sim.voices import synthesize_caller

REAL = Path("/work/shared/speech/real")
RATE = 8000  # the phone band: what the fork streams
WIDE = 16000  # where noise is mixed, before the phone-band conversion
FRAME_S = 0.02
FRAME = int(RATE * FRAME_S)  # samples per fork frame: caller audio is queued in whole frames
SPEECH_DBFS = -26.0
SNRS = (20, 15, 10)
NOISE_SNR = 15  # parts 2-4 and 6: the line noise of step 1 at 15 dB
LEAD_S = 1.0  # line noise before the caller speaks
LOST_AFTER_S = 6.0  # no playback command this long after the true end: the turn is lost
AHEAD_S = 0.3  # caller audio queued ahead of the fork
PAD_S = 0.1  # extra noise converted around a mixture, cut off after (no filter edges)
BED_S = 60.0
BABBLE_TALKERS = 6
SEED = 7

# Part 1 (and 6) speech; part 4 speech. Babble is made only from the clips in neither list.
TURN_CLIPS = (
    "en_harvard_spk1_snt1",
    "en_cmd_is_the_garage_door_open",
    "en_timit_ldc93s1",
    "en_arctic_a0024",
    "en_harvard_spk2_snt3",
    "en_pisets_neural_networks",
)
OVER_BOT_CLIPS = (
    "en_harvard_spk1_snt3",
    "en_cmd_what_time_is_it",
    "en_harvard_spk2_snt4",
    "en_libri_61-70968-0000",
    "en_harvard_spk1_snt4",
)
NOT_BABBLE = ("en_jfk",)  # applause in it
QUESTIONS = (
    "What time does the pharmacy open on Sunday?",
    "I have a question about my last invoice.",
    "Could you book a table for two people tomorrow evening?",
)
OPENING_QUESTION = "What are your opening hours?"
PHRASES = (
    ("I would like to book a table for", "four people tomorrow evening"),
    ("My name is John and", "I need to change my booking"),
    ("Could you tell me whether the", "pharmacy is open on Sunday"),
    ("I need to change my", "appointment for next week"),
    ("Can I get a table near the", "window for six people please"),
    ("I am calling because my", "prescription is ready for pickup"),
    ("Is it possible to move my appointment to", "Thursday afternoon instead"),
    ("I would like to speak to someone about the", "invoice I received last week"),
)
PAUSES_MS = (500, 750)
SHORT_REPLY = "Sure, I can help with that."
MEDIUM_REPLY = (
    "Of course. Our office is open from eight in the morning until six in the evening on "
    "weekdays, and from nine until one on Saturdays. On Sundays we are closed, but you can "
    "leave a message and we will call you back."
)
LONG_REPLY = (  # about 40 s of piper, under the 200 tokens the service asks for
    f"{MEDIUM_REPLY} If you would like to book an appointment, I can do that for you right now, "
    "or you can use the form on our website. Please have your customer number ready, because "
    "it helps us find your details quickly. Parking is available behind the building, and the "
    "entrance is on the left side, next to the pharmacy. We also offer telephone consultations "
    "on Tuesday and Thursday afternoons, which you can book in the same way. If you need to "
    "cancel or change an appointment, please let us know at least one day in advance, so that "
    "we can offer the time to someone else. Is there anything else I can help you with today?"
)


@dataclass(frozen=True)
class Plan:
    turn_clips: int  # real clips per condition in part 1
    questions: int  # synthesized questions in part 1
    question_conditions: tuple[str, ...]
    phrases: int  # part 2
    noise_s: float  # part 3, per noise
    over_bot_clips: int  # part 4, per line
    over_bot_lines: tuple[str, ...]
    wer_clips: int | None  # part 5; None: every English clip


FULL = Plan(6, 3, ("clean", "pink 15 dB"), 8, 30.0, 5, ("clean", "pink 15 dB"), None)
QUICK = Plan(2, 2, ("clean",), 2, 10.0, 2, ("clean",), 8)


# --- audio ------------------------------------------------------------------------------------


def sox(*args: str | float | Path) -> None:
    subprocess.run(["sox", "-V1", *map(str, args)], check=True)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as src:
        return np.frombuffer(src.readframes(src.getnframes()), dtype="<i2").copy()


def phone_band_file(path: Path, work: Path) -> np.ndarray:
    """make_phone.sh's two sox steps: -> 8 kHz G.711 µ-law -> 8 kHz 16-bit; int16 at RATE."""
    ulaw, pcm = work / "band-ulaw.wav", work / "band-pcm.wav"
    sox(path, "-r", RATE, "-c", 1, "-e", "u-law", ulaw)
    sox(ulaw, "-e", "signed", "-b", 16, pcm)
    return read_wav(pcm)


def phone_band(samples: np.ndarray, work: Path) -> np.ndarray:
    return phone_band_file(write_wav(work / "band-in.wav", samples, WIDE), work)


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def normalized(samples: np.ndarray, rate: int, level: float = SPEECH_DBFS) -> np.ndarray:
    gain = 10 ** ((level - active_level(samples, rate)) / 20)
    return to_int16(samples.astype(np.float64) * gain)


@dataclass
class Speech:
    """One utterance at 16 kHz, normalized, with its true times (s) from the clean audio."""

    name: str
    text: str
    wide: np.ndarray
    onset_s: float
    end_s: float
    marks: dict[str, float] = field(default_factory=dict)  # more true times (phrase pauses)


def make_speech(name: str, text: str, samples: np.ndarray) -> Speech:
    wide = normalized(samples, WIDE)
    onset, end = speech_span(wide, WIDE)
    return Speech(name, text, wide, onset, end)


def load_manifest() -> list[dict[str, Any]]:
    return list(json.loads((REAL / "manifest.json").read_text())["items"])


def synthesized(text: str, work: Path, name: str) -> Speech:
    path = synthesize_caller(text, work / f"{name}.wav")
    return make_speech(name, text, decode_file(path, WIDE))


def split_phrase(first: Speech, second: Speech, pause_s: float) -> Speech:
    """The two halves with exactly `pause_s` between the true end of one and onset of the other."""
    margin = 0.04  # kept around each cut so no attack or release is clipped
    lead = min(margin, second.onset_s)
    head = first.wide[: int((first.end_s + margin) * WIDE)]
    gap = np.zeros(int((pause_s - margin - lead) * WIDE), dtype=np.int16)
    tail = second.wide[int((second.onset_s - lead) * WIDE) :]
    resume = first.end_s + pause_s
    return Speech(
        f"{first.name}+{int(pause_s * 1000)}ms",
        f"{first.text} | {second.text}",
        np.concatenate([head, gap, tail]),
        first.onset_s,
        resume + second.end_s - second.onset_s,
        {"pause": first.end_s, "resume": resume},
    )


def unit_rms(samples: np.ndarray) -> np.ndarray:
    x = samples.astype(np.float64)
    return x / np.sqrt(np.mean(x**2))


def pink_noise(work: Path) -> np.ndarray:
    path = work / "pink.wav"
    sox("-n", "-r", WIDE, "-c", 1, "-b", 16, path, "synth", BED_S, "pinknoise", "gain", -10)
    return unit_rms(read_wav(path))


@dataclass(frozen=True)
class Condition:
    kind: str  # clean | pink | babble
    snr_db: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.snr_db is None else f"{self.kind} {self.snr_db} dB"

    @property
    def noise_dbfs(self) -> float | None:
        return None if self.snr_db is None else SPEECH_DBFS - self.snr_db


CLEAN = Condition("clean")
CONDITIONS = (CLEAN, *(Condition(k, s) for k in ("pink", "babble") for s in SNRS))
BY_NAME = {c.name: c for c in CONDITIONS}


class Mixer:
    """Phone-band line audio: the noise bed of a condition, and speech mixed into it."""

    def __init__(self, work: Path, noises: dict[str, np.ndarray], seed: int) -> None:
        self._work = work
        self._noises = noises  # unit-RMS float at 16 kHz, BED_S long
        self._rng = np.random.default_rng(seed)
        self._beds: dict[Condition, np.ndarray] = {}

    def bed(self, condition: Condition) -> np.ndarray:
        """What the line carries between utterances: int16 at RATE, in 0.1 s pieces."""
        if condition not in self._beds:
            if condition.noise_dbfs is None:
                band = np.zeros(RATE, dtype=np.int16)
            else:
                band = phone_band(to_int16(self._noise(condition)), self._work)
            self._beds[condition] = band[: band.size // (RATE // 10) * (RATE // 10)]
        return self._beds[condition]

    def mix(self, speech: Speech, condition: Condition) -> np.ndarray:
        """The speech over its own stretch of the condition's noise: int16 at RATE, whole frames.

        Starts at the speech's first sample, so its true times hold in the phone-band result.
        """
        frames = -(-speech.wide.size // (2 * FRAME))
        core = np.zeros(frames * 2 * FRAME)
        core[: speech.wide.size] = speech.wide
        pad = int(PAD_S * WIDE)
        wide = np.zeros(core.size + 2 * pad)
        if condition.noise_dbfs is not None:
            noise = self._noises[condition.kind]
            start = int(self._rng.integers(noise.size - wide.size))
            wide += self._noise(condition)[start : start + wide.size]
        wide[pad : pad + core.size] += core
        band = phone_band(to_int16(wide), self._work)
        return band[pad // 2 : pad // 2 + frames * FRAME]

    def _noise(self, condition: Condition) -> np.ndarray:
        assert condition.noise_dbfs is not None
        return self._noises[condition.kind] * 32768 * 10 ** (condition.noise_dbfs / 20)


# --- the emulated line -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    at: float  # the emulator's call clock, when the command arrived
    uuid: str


class TimedSwitch(EslServer):
    """The FreeSWITCH emulator, noting when each playback command and break arrives."""

    def __init__(self, password: str) -> None:
        super().__init__(password)
        self.plays: list[Sent] = []
        self.breaks: list[Sent] = []

    def enqueue_message(self, channel: Channel, message: dict[str, str]) -> None:
        # Every sendmsg (and uuid_broadcast) passes here as it is received.
        if (get_header(message, "execute-app-name") or "").lower() == "playback":
            self.plays.append(Sent(self.clock(), channel.uuid))
        super().enqueue_message(channel, message)

    async def execute_api(self, name: str, args: str) -> str:
        if name.lower() == "uuid_break":
            self.breaks.append(Sent(self.clock(), (args.split() or [""])[0]))
        return await super().execute_api(name, args)


def first_after(sent: list[Sent], uuid: str, after: float) -> float | None:
    return next((s.at for s in sent if s.uuid == uuid and s.at >= after), None)


async def wait_first(
    switch: TimedSwitch, sent: list[Sent], uuid: str, after: float, until_clock: float
) -> float | None:
    """The first command in `sent` for this call at or after `after`, waiting to `until_clock`."""
    return await until(lambda: first_after(sent, uuid, after), until_clock - switch.clock())


class Line:
    """The caller's side of one call: a line that is never silent, speech dropped into it."""

    CHUNK = RATE // 10  # samples of bed appended at a time (0.1 s, whole frames)

    def __init__(self, channel: Channel, bed: np.ndarray) -> None:
        self.channel = channel
        self._bed = bed.astype("<i2").tobytes()
        self._cursor = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._top_up()  # before the fork connects: byte 0 is the start of the call's audio
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def say(self, samples: np.ndarray) -> int:
        """Queue speech after what is queued; its byte offset in the caller's audio."""
        offset = len(self.channel.caller_audio)
        self.channel.caller_audio += samples.astype("<i2").tobytes()
        return offset

    def set_bed(self, bed: np.ndarray) -> int:
        """From now on the line carries this; the byte offset where it starts."""
        self._bed, self._cursor = bed.astype("<i2").tobytes(), 0
        return len(self.channel.caller_audio)

    def sent_at(self, offset: int) -> float | None:
        """When the fork sent this byte of the caller's audio (call clock), once it has."""
        position = 0
        for segment in self.channel.caller_segments:
            if offset < position + len(segment.data):
                return segment.start + (offset - position) / 2 / segment.rate
            position += len(segment.data)
        return None

    async def wait_sent(self, offset: int) -> float:
        at = await until(lambda: self.sent_at(offset), 10.0)
        if at is None:
            raise RuntimeError("the fork never sent the caller's audio")
        return at

    @property
    def gaps(self) -> int:
        """Times the fork ran out of caller audio (the service's positions then drift)."""
        return max(len(self.channel.caller_segments) - 1, 0)

    def _top_up(self) -> None:
        channel, chunk = self.channel, self.CHUNK * 2
        while len(channel.caller_audio) - channel.caller_recorded < AHEAD_S * RATE * 2:
            channel.caller_audio += self._bed[self._cursor : self._cursor + chunk]
            self._cursor = (self._cursor + chunk) % len(self._bed)

    async def _run(self) -> None:
        while True:
            self._top_up()
            await asyncio.sleep(0.05)


T = TypeVar("T")


async def until(probe: Callable[[], T | None], limit_s: float) -> T | None:
    """Poll `probe` every 10 ms until it gives a value or `limit_s` has passed."""
    deadline = time.monotonic() + limit_s
    while True:
        value = probe()
        if value is not None or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(0.01)


@dataclass
class Bench:
    switch: TimedSwitch
    ws: str
    ollama: OllamaEmulator
    mixer: Mixer
    plan: Plan
    gaps: int = 0


@contextlib.asynccontextmanager
async def open_call(bench: Bench, bed: np.ndarray) -> AsyncIterator[tuple[PhoneCall, Line]]:
    async with PhoneCall(bench.switch, bench.ws, rate=RATE) as call:
        await call.dial()
        assert call.channel is not None
        line = Line(call.channel, bed)
        line.start()
        try:
            await call.wait_event(events.CALL_STARTED, limit_s=10)
            yield call, line
        finally:
            await line.stop()
            bench.gaps += line.gaps
            with contextlib.suppress(Exception):  # already gone, or slow to report it
                await call.end(limit_s=20)


def set_reply(bench: Bench, text: str) -> None:
    bench.ollama.reply = lambda messages: text


# --- part 1: turn latency -------------------------------------------------------------------


@dataclass
class TurnResult:
    latency_ms: int | None  # true end of speech -> first playback command; None: lost
    service_ms: int | None  # the service's own play_sent (after ITS estimate of the last word)
    noise_replies: int  # playback commands before the speech started: the bot answered noise


async def timed_turn(bench: Bench, speech: Speech, condition: Condition) -> TurnResult:
    mix = bench.mixer.mix(speech, condition)
    async with open_call(bench, bench.mixer.bed(condition)) as (call, line):
        await asyncio.sleep(LEAD_S)
        start = await line.wait_sent(line.say(mix))
        end = start + speech.end_s
        uuid, switch = call.call_id, bench.switch
        play = await wait_first(switch, switch.plays, uuid, start, end + LOST_AFTER_S)
        before = sum(1 for s in switch.plays if s.uuid == uuid and s.at < start)
        service = None
        if play is not None:
            with contextlib.suppress(TimeoutError):
                latency = await call.wait_event(events.TURN_LATENCY, limit_s=1.0)
                service = latency["data"].get("play_sent")
    return TurnResult(None if play is None else round((play - end) * 1000), service, before)


async def part_turn_latency(
    bench: Bench, clips: Sequence[Speech], questions: Sequence[Speech]
) -> list[tuple[str, str, list[TurnResult]]]:
    set_reply(bench, SHORT_REPLY)
    rows = []
    for label, speeches, conditions in (
        ("real", clips, CONDITIONS),
        ("piper", questions, [BY_NAME[n] for n in bench.plan.question_conditions]),
    ):
        for condition in conditions:
            results = [await timed_turn(bench, s, condition) for s in speeches]
            rows.append((label, condition.name, results))
    return rows


def pct(values: Sequence[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


TURN_TARGETS = {"clean": "p50 ≤ 650", "pink 15 dB": "p50 ≤ 800, max ≤ 1500"}


def print_turn_latency(
    rows: list[tuple[str, str, list[TurnResult]]], clips: Sequence[Speech], detail: bool = False
) -> None:
    print("\nPart 1 · turn latency: true end of speech → first playback command (ms), 8 kHz µ-law")
    ends = ", ".join(f"{c.name.removeprefix('en_')} {c.end_s:.2f}" for c in clips)
    print(f"  true ends (s): {ends}")
    print(
        f"  {'speech':<7}{'condition':<13}{'turns':>5}{'lost':>5}{'cut-in':>7}{'noise-rep':>10}"
        f"{'p50':>7}{'p90':>7}{'max':>7}{'svc p50':>9}   target"
    )
    for label, condition, results in rows:
        answered = [r.latency_ms for r in results if r.latency_ms is not None]
        timed = [v for v in answered if v >= 0]
        service = [r.service_ms for r in results if r.service_ms is not None]
        figures = (
            f"{pct(timed, 0.5):>7}{pct(timed, 0.9):>7}{max(timed):>7}" if timed else f"{'-':>21}"
        )
        print(
            f"  {label:<7}{condition:<13}{len(results):>5}{len(results) - len(answered):>5}"
            f"{len(answered) - len(timed):>7}{sum(r.noise_replies for r in results):>10}"
            f"{figures}{(pct(service, 0.5) if service else '-'):>9}"
            f"   {TURN_TARGETS.get(condition, '') if label == 'real' else ''}"
        )
        if detail:
            print(f"{'':<9}{' '.join(str(r.latency_ms) for r in results)}")
    print(
        f"  lost: no playback command within {LOST_AFTER_S:.0f} s of the true end; cut-in: sent "
        "before the caller finished (left out of p50/p90/max, nearest rank);\n  noise-rep: "
        "sent before the speech began; svc p50: the service's own turn.latency play_sent, "
        "counted from ITS idea of the last word"
    )


# --- part 2: mid-sentence pauses --------------------------------------------------------------


@dataclass
class PauseResult:
    in_pause: bool  # a playback command while the caller paused
    before_end: bool  # a playback command before the caller finished the sentence
    split: bool  # a transcript.final ended before the second half: the turn was cut at the pause
    phrase: str = ""
    heard: str = ""  # that transcript


async def pause_trial(bench: Bench, phrase: Speech, condition: Condition) -> PauseResult:
    mix = bench.mixer.mix(phrase, condition)
    async with open_call(bench, bench.mixer.bed(condition)) as (call, line):
        await asyncio.sleep(LEAD_S)
        offset = line.say(mix)
        start = await line.wait_sent(offset)
        pause, resume = start + phrase.marks["pause"], start + phrase.marks["resume"]
        end = start + phrase.end_s
        uuid, switch = call.call_id, bench.switch
        play = await wait_first(switch, switch.plays, uuid, start, end + LOST_AFTER_S)
        await asyncio.sleep(0.3)  # transcripts of the call so far
        # Positions in the service's audio: byte offset / 2 / rate (the line never had a gap).
        start_ms = offset / 2 / RATE * 1000
        resume_ms = start_ms + phrase.marks["resume"] * 1000
        cut = [
            e["data"]["text"]
            for e in call.log.of(events.TRANSCRIPT_FINAL)
            if start_ms < e["data"]["end_ms"] < resume_ms and not e["data"].get("backchannel")
        ]
    return PauseResult(
        play is not None and pause <= play < resume,
        play is not None and play < end,
        bool(cut),
        phrase.text,
        " ".join(cut),
    )


async def part_pauses(
    bench: Bench, phrases: Sequence[tuple[Speech, Speech]]
) -> dict[int, list[PauseResult]]:
    set_reply(bench, SHORT_REPLY)
    condition = Condition("pink", NOISE_SNR)
    return {
        pause: [
            await pause_trial(bench, split_phrase(a, b, pause / 1000), condition)
            for a, b in phrases
        ]
        for pause in PAUSES_MS
    }


def print_pauses(results: dict[int, list[PauseResult]], phrases: int) -> None:
    print(
        f"\nPart 2 · mid-sentence pauses: {phrases} piper phrases cut at a function word, pink "
        f"noise {NOISE_SNR} dB under them throughout"
    )
    print(
        f"  {'pause':<8}{'phrases':>8}{'reply in pause':>16}{'reply before end':>18}"
        f"{'turn split':>12}   target"
    )
    for pause, rows in results.items():
        n = len(rows)
        in_pause = sum(r.in_pause for r in rows)
        early = sum(r.before_end for r in rows)
        before_end = f"{early}/{n} ({100 * early / n:.0f} %)"
        split = f"{sum(r.split for r in rows)}/{n}"
        print(
            f"  {f'{pause} ms':<8}{n:>8}{f'{in_pause}/{n} ({100 * in_pause / n:.0f} %)':>16}"
            f"{before_end:>18}{split:>12}   answered ≤ 5 %"
        )
    print(
        "  reply in pause: a playback command between the true end of the first half and the "
        "true onset of the second;\n  before end: one any time before the caller finished; "
        "turn split: a final transcript ended before the second half"
    )
    for pause, rows in results.items():
        for r in rows:
            if r.split:
                print(f"    split at {pause} ms: “{r.phrase}” → heard “{r.heard}”")


# --- part 3: barge-ins from noise alone -------------------------------------------------------


@dataclass
class NoiseResult:
    kind: str
    seconds: float
    started: bool  # the bot was speaking when the noise began
    barge_ins: int
    breaks: int
    first_s: float | None  # noise seconds before the first barge-in
    heard: list[str]  # what the service transcribed from the noise
    spoke_s: float  # seconds of the noise during which the bot was heard speaking


async def noise_over_bot(bench: Bench, kind: str, question: Speech) -> NoiseResult:
    set_reply(bench, LONG_REPLY)
    noise_bed = bench.mixer.bed(Condition(kind, NOISE_SNR))
    ask = bench.mixer.mix(question, CLEAN)
    seconds = bench.plan.noise_s
    async with open_call(bench, bench.mixer.bed(CLEAN)) as (call, line):
        await asyncio.sleep(0.5)
        start = await line.wait_sent(line.say(ask))
        uuid, switch = call.call_id, bench.switch
        play = await wait_first(switch, switch.plays, uuid, start, start + question.end_s + 8)
        if play is None or call.channel is None:
            return NoiseResult(kind, seconds, False, 0, 0, None, [], 0.0)
        noise_from = await line.wait_sent(line.set_bed(noise_bed))
        before = len(call.log.events)
        await asyncio.sleep(seconds - (switch.clock() - noise_from))
        during = call.log.events[before:]
        barge_ins = [e for e in during if e["type"] == events.BARGE_IN]
        first = None
        if barge_ins:  # `at` is Unix time; the call clock runs at the same pace (speed 1)
            wall_minus_clock = time.time() - switch.clock()
            first = barge_ins[0]["at"] - wall_minus_clock - noise_from
        breaks = sum(1 for s in switch.breaks if s.uuid == uuid and s.at >= noise_from)
        heard = [e["data"]["text"] for e in during if e["type"] == events.TRANSCRIPT_FINAL]
        spoke = bot_seconds(call.channel, noise_from, noise_from + seconds)
    return NoiseResult(kind, seconds, True, len(barge_ins), breaks, first, heard, spoke)


def bot_seconds(channel: Channel, start: float, end: float) -> float:
    """How long the caller heard the bot within [start, end) of the call clock."""
    heard = 0.0
    for playback in channel.clips:
        for begin, first, last in playback.spans():
            stop = begin + (last - first) / playback.rate
            if playback.status is None:  # still playing: heard up to now
                stop = min(stop, begin + (playback.position(end) - first) / playback.rate)
            heard += max(0.0, min(stop, end) - max(begin, start))
    return heard


def print_noise(results: Sequence[NoiseResult]) -> None:
    print(
        f"\nPart 3 · barge-ins from noise alone: noise {NOISE_SNR} dB under the speech level "
        f"({SPEECH_DBFS - NOISE_SNR:.0f} dBFS), starting as the bot speaks a long reply"
    )
    print(
        f"  {'noise':<8}{'seconds':>8}{'barge-ins':>10}{'breaks':>8}{'1st after':>10}"
        f"{'bot spoke over it':>19}   target"
    )
    for r in results:
        if not r.started:
            print(f"  {r.kind:<8}{'the bot never started its reply':>55}")
            continue
        first = f"{r.first_s:.1f} s" if r.first_s is not None else "-"
        print(
            f"  {r.kind:<8}{r.seconds:>8.0f}{r.barge_ins:>10}{r.breaks:>8}{first:>10}"
            f"{f'{r.spoke_s:.0f} s':>19}   0 barge-ins"
        )
        if r.heard:
            print(f"    transcribed from the noise: {' | '.join(r.heard)[:160]}")


# --- part 4: real speech over the bot --------------------------------------------------------


@dataclass
class OverBotResult:
    clip: str
    delay_ms: int | None  # speech onset -> uuid_break; None: not broken
    note: str = ""


async def bot_speaking(call: PhoneCall, line: Line, ask: np.ndarray, question: Speech) -> bool:
    """Until a reply is playing: the one coming, else one to a question asked now."""
    channel = call.channel
    assert channel is not None
    if await until(lambda: channel.playing, 5.0) is not None:
        return True
    await line.wait_sent(line.say(ask))
    return await until(lambda: channel.playing, question.end_s + 8.0) is not None


async def over_bot_line(
    bench: Bench, clips: Sequence[Speech], question: Speech, condition: Condition
) -> list[OverBotResult]:
    set_reply(bench, MEDIUM_REPLY)
    ask = bench.mixer.mix(question, condition)
    mixes = [bench.mixer.mix(c, condition) for c in clips]
    results = []
    async with open_call(bench, bench.mixer.bed(condition)) as (call, line):
        channel = call.channel
        assert channel is not None
        for clip, mix in zip(clips, mixes, strict=True):
            if not await bot_speaking(call, line, ask, question):
                results.append(OverBotResult(clip.name, None, "the bot never spoke"))
                continue
            await asyncio.sleep(1.0)  # a second into the reply
            if channel.playing is None:
                results.append(OverBotResult(clip.name, None, "the bot stopped before the speech"))
                continue
            start = await line.wait_sent(line.say(mix))
            onset = start + clip.onset_s
            uuid, switch = call.call_id, bench.switch
            broke = await wait_first(switch, switch.breaks, uuid, start, start + clip.end_s + 2)
            if broke is None:
                results.append(OverBotResult(clip.name, None, "not broken"))
                await until(lambda: None if channel.playing else True, 20.0)  # let it finish
                continue
            delay = round((broke - onset) * 1000)
            results.append(
                OverBotResult(clip.name, delay, "before the speech" if delay < 0 else "")
            )
            # The caller finishes; the service answers that turn: the next clip talks over it.
            await asyncio.sleep(max(start + mix.size / RATE - switch.clock(), 0))
    return results


def print_over_bot(results: dict[str, list[OverBotResult]], detail: bool = False) -> None:
    print("\nPart 4 · real speech over the bot: true speech onset → uuid_break received (ms)")
    print(f"  {'line':<12}{'clips':>6}{'broken':>8}{'p50':>7}{'max':>7}   target     notes")
    for name, rows in results.items():
        delays = [r.delay_ms for r in rows if r.delay_ms is not None]
        notes = "; ".join(f"{r.clip.removeprefix('en_')}: {r.note}" for r in rows if r.note)
        figures = f"{pct(delays, 0.5):>7}{max(delays):>7}" if delays else f"{'-':>14}"
        print(f"  {name:<12}{len(rows):>6}{len(delays):>8}{figures}   max ≤ 400  {notes}")
        if detail:
            print(f"{'':<14}{' '.join(f'{r.clip}={r.delay_ms}' for r in rows)}")


# --- part 5: word error rate ------------------------------------------------------------------


NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve",
)  # fmt: skip


def words(text: str) -> list[str]:
    """Lowercase words, punctuation and apostrophes dropped, 0-12 spelled out ("5" = "five")."""
    found = re.findall(r"\w+", text.lower().replace("'", "").replace("’", ""))
    return [NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w for w in found]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


@dataclass
class WerRow:
    name: str
    ref_words: int
    errors_wide: int
    errors_phone: int
    phone_text: str


async def transcribe(stt: WhisperSTT, samples: np.ndarray, rate: int, language: str) -> str:
    audio = to_float(resample(samples, rate, WHISPER_RATE))
    transcript = await stt.transcribe(audio, language)
    return transcript.text if transcript is not None else ""


async def wer_rows(stt: WhisperSTT, items: Sequence[dict[str, Any]], work: Path) -> list[WerRow]:
    rows = []
    for item in items:
        path, lang = REAL / item["file"], item["lang"]
        ref = words(item["text"])
        wide = await transcribe(stt, decode_file(path, WIDE), WIDE, lang)
        phone = await transcribe(stt, phone_band_file(path, work), RATE, lang)
        rows.append(
            WerRow(
                item["id"],
                len(ref),
                edit_distance(ref, words(wide)),
                edit_distance(ref, words(phone)),
                phone,
            )
        )
    return rows


def multilingual_model() -> str | None:
    """A multilingual faster-whisper model already in the local cache (never downloaded)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for size in ("small", "base", "tiny"):
        if isinstance(try_to_load_from_cache(f"Systran/faster-whisper-{size}", "model.bin"), str):
            return size
    return None


async def part_wer(
    stt: WhisperSTT, items: list[dict[str, Any]], work: Path, limit: int | None
) -> tuple[list[WerRow], list[WerRow], str]:
    english = [i for i in items if i["lang"] == "en"][:limit]
    russian = [i for i in items if i["lang"] == "ru"]
    en_rows = await wer_rows(stt, english, work)
    if stt.multilingual:
        return en_rows, await wer_rows(stt, russian, work), "Russian with the service's model"
    size = multilingual_model()
    if size is None:
        skipped = (
            "Russian skipped: the STT model (the packaged tiny.en) is English-only and no "
            "multilingual faster-whisper model is installed"
        )
        return en_rows, [], skipped
    multi = WhisperSTT(size, workers=2)
    try:
        return en_rows, await wer_rows(multi, russian, work), f"Russian with cached {size}"
    finally:
        await multi.aclose()


def print_wer(en_rows: list[WerRow], ru_rows: list[WerRow], note: str) -> None:
    print("\nPart 5 · STT word error rate, 16 kHz vs 8 kHz µ-law phone band (Whisper direct)")
    print(f"  {'clips':<22}{'n':>4}{'words':>7}{'WER 16k':>9}{'WER 8k':>8}   reference")
    for label, rows in (("English (tiny.en)", en_rows), ("Russian", ru_rows)):
        if not rows:
            continue
        total = sum(r.ref_words for r in rows)
        wide = 100 * sum(r.errors_wide for r in rows) / total
        phone = 100 * sum(r.errors_phone for r in rows) / total
        print(
            f"  {label:<22}{len(rows):>4}{total:>7}{wide:>8.1f}%{phone:>7.1f}%"
            f"   design.md: tiny.en 4.4 % at 16 kHz, 3-6 % phone band"
        )
    worse = [r for r in en_rows + ru_rows if r.errors_phone > r.errors_wide]
    for r in worse[:6]:
        print(f"    8k worse on {r.name}: {r.errors_phone}/{r.ref_words} errors, “{r.phone_text}”")
    print(
        f"  {note}.\n  WER = word edit distance / reference words (lowercase, punctuation "
        "stripped, 0-12 as words)"
    )


# --- part 6: CPU of the turn-taking path -----------------------------------------------------


def cpu_audio(mixer: Mixer, clips: Sequence[Speech], gap_s: float = 0.8) -> bytes:
    """60 s of the clips in pink line noise, `gap_s` of line between them: L16 at RATE.
    0.8 s: back-to-back turns (the worst case); ~6 s: a call's rhythm (the bot answers)."""
    condition = Condition("pink", NOISE_SNR)
    bed = np.tile(mixer.bed(condition), 8)
    pieces: list[np.ndarray] = []
    while sum(p.size for p in pieces) < 60 * RATE:
        for clip in clips:
            pieces += [bed[: int(gap_s * RATE)], mixer.mix(clip, condition)]
    return np.concatenate(pieces)[: 60 * RATE].astype("<i2").tobytes()


async def cpu_row(
    label: str,
    make: Callable[[], Any],
    audio: bytes,
    judge: Any = None,
    words: WhisperSTT | None = None,
) -> str:
    """Feed 20 ms packets as the fork does (FrameChunker, then the detector); process CPU time.

    `judge`: an end-of-turn model run at a SpeechPaused: at every one, or, given `words` (the
    STT), only where the service runs it: when the pause's transcript leaves the verdict open
    (engines/turn.py's judge and worth_a_listen). Whisper's own CPU is not counted.
    """
    from voiceai.engines.turn import judge as judge_words
    from voiceai.engines.turn import worth_a_listen

    detector = make()
    chunker = FrameChunker(detector.frame_bytes)
    step, checks, turns, pauses = FRAME * 2, 0, 0, 0
    cpu, wall = time.process_time(), time.perf_counter()
    excluded = 0.0
    for i in range(0, len(audio), step):
        for frame in chunker.push(audio[i : i + step]):
            for event in detector.push(frame):
                kind = type(event).__name__
                turns += kind == "TurnEnded"
                if judge is None or kind != "SpeechPaused":
                    continue
                pauses += 1
                pause = to_float(resample(event.audio, RATE, WHISPER_RATE))
                if words is not None:
                    before = time.process_time()
                    said = await words.transcribe(pause, "en")
                    excluded += time.process_time() - before
                    text = said.text if said else None
                    sure = said.tail_confidence if said else 1.0
                    verdict = judge_words(text, "en", None, 0.5, sure)
                    if not worth_a_listen(verdict, text, "en"):
                        continue
                await judge.complete_probability(pause)
                checks += 1
    cpu, wall = time.process_time() - cpu - excluded, time.perf_counter() - wall
    per_s = cpu * 1000 / (len(audio) / 2 / RATE)
    calls = f"{1000 / per_s:.0f}" if per_s > 0 else "inf"
    checked = f", {checks} model checks at {pauses} pauses" if judge is not None else ""
    return (
        f"  {label:<44}{per_s:>8.2f}{calls:>8}   ≥ 100   ({turns} turns{checked}, "
        f"wall {wall * 1000 / 60:.2f} ms/s)"
    )


async def part_cpu(audio: bytes, stt: WhisperSTT, call_rhythm: bytes) -> list[str]:
    """The detector as `TurnDetector(rate, 20, TurnConfig())`; then, when this version of the
    service has them, with its neural VAD and its end-of-turn model (both being added now)."""
    rows = []
    try:
        from voiceai.audio.turns import TurnConfig, TurnDetector

        def plain() -> Any:
            return TurnDetector(RATE, 20, TurnConfig())

        rows.append(await cpu_row("TurnDetector(8000, 20, TurnConfig())", plain, audio))
    except Exception as exc:
        return [f"  TurnDetector(8000, 20, TurnConfig()) failed: {type(exc).__name__}: {exc}"]
    try:
        from voiceai.audio.vad import SileroModel
        from voiceai.engines.turn import SmartTurn

        vad = SileroModel()

        def silero() -> Any:
            return TurnDetector(RATE, 20, TurnConfig(), speech=vad.stream(RATE))  # type: ignore[call-arg]

        rows.append(await cpu_row("  same, Silero VAD", silero, audio))
        model = SmartTurn()
        try:
            label = "  same, Silero VAD + Smart Turn at every pause"
            rows.append(await cpu_row(label, silero, audio, model))
            label = "  same, Smart Turn where the service runs it"
            rows.append(await cpu_row(label, silero, audio, model, words=stt))
            label = "  same, on a call's rhythm (6 s of line between)"
            rows.append(await cpu_row(label, silero, call_rhythm, model, words=stt))
        finally:
            model.close()
    except Exception as exc:
        rows.append(f"  (no neural VAD / turn model row: {type(exc).__name__}: {exc})")
    return rows


# --- running it --------------------------------------------------------------------------------


def prepare(
    work: Path, plan: Plan
) -> tuple[Mixer, dict[str, Speech], list[Speech], list[tuple[Speech, Speech]], Speech]:
    items = load_manifest()
    wide = {i["id"]: decode_file(REAL / i["file"], WIDE) for i in items}
    texts = {i["id"]: i["text"] for i in items}
    used = set(TURN_CLIPS) | set(OVER_BOT_CLIPS)
    speeches = {name: make_speech(name, texts[name], wide[name]) for name in sorted(used)}
    rng = np.random.default_rng(SEED)
    pool = sorted(set(wide) - used - set(NOT_BABBLE))
    talkers = [
        normalized(wide[name], WIDE) for name in rng.choice(pool, BABBLE_TALKERS, replace=False)
    ]
    noises = {"pink": pink_noise(work), "babble": babble(talkers, BED_S, WIDE, rng)}
    questions = [synthesized(q, work, f"q{i}") for i, q in enumerate(QUESTIONS[: plan.questions])]
    phrases = [
        (synthesized(a, work, f"p{i}a"), synthesized(b, work, f"p{i}b"))
        for i, (a, b) in enumerate(PHRASES[: plan.phrases])
    ]
    opening = synthesized(OPENING_QUESTION, work, "opening")
    return Mixer(work, noises, SEED), speeches, questions, phrases, opening


async def main(quick: bool, parts: set[int], detail: bool) -> None:
    if shutil.which("sox") is None:
        raise SystemExit("this benchmark converts audio with sox: apt-get install sox")
    plan = QUICK if quick else FULL
    began = last = time.monotonic()

    def took(part: str) -> None:
        nonlocal last
        now = time.monotonic()
        print(f"  ({part}: {now - last:.0f} s)", flush=True)
        last = now

    work = Path(tempfile.mkdtemp(prefix="voiceai-turns-"))
    try:
        mixer, speeches, questions, phrases, opening = prepare(work, plan)
        clips = [speeches[n] for n in TURN_CLIPS[: plan.turn_clips]]
        over_bot = [speeches[n] for n in OVER_BOT_CLIPS[: plan.over_bot_clips]]
        print(
            f"turn-taking on the phone band ({'quick' if quick else 'full'} run): speech at "
            f"{SPEECH_DBFS:.0f} dBFS active level, tiny.en, piper, instant LLM emulator",
            flush=True,
        )
        stt = WhisperSTT("auto", workers=2)
        switch = TimedSwitch(ESL_PASSWORD)
        await switch.start()
        with OllamaEmulator(reply=lambda messages: SHORT_REPLY) as ollama:
            async with local_service(switch.port, ollama.url, work, stt) as (settings, ws_url):
                bench = Bench(switch, ws_url, ollama, mixer, plan)
                print(
                    f"service: VAD {getattr(settings, 'vad', 'webrtc')}, end-of-turn model "
                    f"{getattr(settings, 'turn_model', 'none')}, end of turn after "
                    f"{settings.end_of_turn_ms} ms of silence",
                    flush=True,
                )
                took("setup")
                if 1 in parts:
                    rows = await part_turn_latency(bench, clips, questions)
                    print_turn_latency(rows, clips, detail)
                    took("1")
                if 2 in parts:
                    print_pauses(await part_pauses(bench, phrases), len(phrases))
                    took("2")
                if 3 in parts:
                    noise = [await noise_over_bot(bench, k, opening) for k in ("pink", "babble")]
                    print_noise(noise)
                    took("3")
                if 4 in parts:
                    print_over_bot(
                        {
                            name: await over_bot_line(bench, over_bot, opening, BY_NAME[name])
                            for name in plan.over_bot_lines
                        },
                        detail,
                    )
                    took("4")
                if bench.gaps:
                    print(f"  (warning: the caller's line ran dry {bench.gaps} times)")
        await switch.stop()
        if 5 in parts:
            print_wer(*await part_wer(stt, load_manifest(), work, plan.wer_clips))
            took("5")
        if 6 not in parts:
            await stt.aclose()
            return
        print("\nPart 6 · CPU of ingest + VAD + turn model, 60 s of speech in pink 15 dB noise")
        print(f"  {'detector':<44}{'ms/s':>8}{'calls':>8}   target (calls per core)")
        rhythm = cpu_audio(mixer, clips, gap_s=6.0)
        for row in await part_cpu(cpu_audio(mixer, clips), stt, rhythm):
            print(row, flush=True)
        print("  ms of process CPU per s of audio (every thread counted; Whisper not included)")
        await stt.aclose()
        took("6")
        print(f"\n(total {time.monotonic() - began:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: about 3 minutes")
    parser.add_argument(
        "--parts", default="1,2,3,4,5,6", help="which parts to run, e.g. 1,4 (default: all)"
    )
    parser.add_argument("--detail", action="store_true", help="print every turn's figure")
    args = parser.parse_args()
    asyncio.run(main(args.quick, {int(p) for p in args.parts.split(",")}, args.detail))
