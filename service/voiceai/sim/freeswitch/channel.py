"""One call leg on the emulated switch, and both sides of its call on the call clock.

A Channel keeps the files played to the caller (`Playback`: the pieces heard, on the call clock)
and the caller's audio as the forks sent it (`CallerSegment`), so the call can be put back
together: `bot_track` is what the caller heard, `caller_track` what the caller said.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NamedTuple

import numpy as np

from voiceai.audio.pcm import resample

if TYPE_CHECKING:
    from voiceai.sim.freeswitch.fork import Fork

PACKET_SECONDS: Final = 0.02  # ptime: 20 ms frames on the fork and for lead-frames
STATE_NUMBERS: Final = {
    "CS_NEW": 0, "CS_INIT": 1, "CS_ROUTING": 2, "CS_SOFT_EXECUTE": 3, "CS_EXECUTE": 4,
    "CS_EXCHANGE_MEDIA": 5, "CS_PARK": 6, "CS_CONSUME_MEDIA": 7, "CS_HIBERNATE": 8,
    "CS_RESET": 9, "CS_HANGUP": 10, "CS_REPORTING": 11, "CS_DESTROY": 12,
}  # fmt: skip


class Played(NamedTuple):
    """One file the caller heard. Times are call-clock seconds since the channel was created."""

    path: str
    started_at: float
    stopped_at: float
    status: str  # done | break | hangup
    offset_samples: int  # samples heard, at the channel's codec rate


@dataclass(eq=False)
class Playback:
    """One file on a channel's media: the pieces of it the caller heard, on the call clock."""

    path: str
    audio: np.ndarray  # the whole file, mono int16 at the channel's codec rate
    rate: int
    pieces: list[tuple[float, int, int]] = field(default_factory=list)  # (start, from, to)
    run_start: float | None = None  # when the piece playing now began; None: not playing
    run_from: int = 0  # the sample that piece began at
    status: str | None = None  # set once finished
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # pause, resume, break, hangup
    by_rate: dict[int, np.ndarray] = field(default_factory=dict)

    def position(self, now: float) -> int:
        if self.run_start is None:
            return self.run_from
        return min(self.audio.size, self.run_from + max(int((now - self.run_start) * self.rate), 0))

    def end_time(self) -> float | None:
        if self.run_start is None:
            return None
        return self.run_start + (self.audio.size - self.run_from) / self.rate

    def close_piece(self, to: int) -> None:
        if self.run_start is not None:
            self.pieces.append((self.run_start, self.run_from, to))
        self.run_start, self.run_from = None, to

    def spans(self) -> list[tuple[float, int, int]]:
        """Every piece; the one playing now runs to the end of the file (callers cut it)."""
        if self.run_start is None:
            return self.pieces
        return [*self.pieces, (self.run_start, self.run_from, self.audio.size)]

    def at_rate(self, rate: int) -> np.ndarray:
        # Resampled once per rate: a clip cut into 20 ms frames would click at every edge.
        cached = self.by_rate.get(rate)
        if cached is None:
            cached = self.by_rate[rate] = resample(self.audio, self.rate, rate)
        return cached


@dataclass
class CallerSegment:
    """A run of caller audio as a fork sent it: call-clock start, fork rate, L16 bytes."""

    start: float
    rate: int
    data: bytearray

    @property
    def end(self) -> float:
        return self.start + len(self.data) / 2 / self.rate


@dataclass
class Channel:
    """One call leg on the emulated switch."""

    uuid: str
    caller_id_name: str = "Caller"
    caller_id_number: str = "+15550100"
    destination_number: str = "+15550199"
    variables: dict[str, str] = field(default_factory=dict)
    # What the caller says: L16 little-endian PCM at the fork rate. Append to it while the
    # call runs and every fork streams the new audio next; silence fills the gaps.
    caller_audio: bytes = b""
    answered: bool = False
    hung_up: bool = False
    hangup_cause: str | None = None
    state: str = "CS_INIT"
    forks: dict[str, Fork] = field(default_factory=dict)  # by bug name
    messages: list[dict[str, str]] = field(default_factory=list)  # every sendmsg, as received
    gone: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set on hangup
    app_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    codec_rate: int = 8000  # the call's media rate: 8000 on PCMU; playback offsets count in it
    channel_name: str = ""  # overrides `name` (originated legs: the dial string)
    created_at: float = 0.0  # call clock (EslServer.clock) when the channel was created
    ended_at: float | None = None  # call clock at hangup
    played: list[Played] = field(default_factory=list)  # every file the caller heard
    errors: list[str] = field(default_factory=list)  # what FreeSWITCH would only log
    transfers: list[tuple[str, str, str]] = field(default_factory=list)  # (dest, dialplan, ctx)
    transferred: bool = False  # bridged to a gateway by uuid_transfer; the fork keeps streaming
    transfer_target: str | None = None  # e.g. sofia/gateway/ringcentral/+15551234
    dtmf_sent: list[str] = field(default_factory=list)  # uuid_send_dtmf data, to the caller
    dtmf_pressed: list[str] = field(default_factory=list)  # digits the caller pressed
    scheduled: list[str] = field(default_factory=list)  # sched_transfer destinations pending
    recordings: list[str] = field(default_factory=list)  # uuid_record paths, written at hangup
    media: list[Playback] = field(default_factory=list, init=False, repr=False)  # playing now
    clips: list[Playback] = field(default_factory=list, init=False, repr=False)  # ever started
    caller_segments: list[CallerSegment] = field(default_factory=list, init=False, repr=False)
    caller_recorded: int = field(default=0, init=False, repr=False)  # caller_audio bytes kept
    media_free_at: float | None = field(default=None, init=False, repr=False)
    flushes: int = field(default=0, init=False, repr=False)  # uuid_break all count

    @property
    def fork(self) -> Fork | None:
        """The most recently started fork, if any."""
        return next(reversed(self.forks.values()), None)

    @property
    def name(self) -> str:
        return self.channel_name or f"sofia/external/{self.caller_id_number}@sip.ringcentral.com"

    @property
    def playing(self) -> str | None:
        """The file the caller hears right now, if any."""
        top = self.media[-1] if self.media else None
        return top.path if top is not None and top.run_start is not None else None


# --- the call on one timeline ------------------------------------------------------------


def bot_track(channel: Channel, start: float, count: int, rate: int) -> np.ndarray:
    """What the caller heard from the switch in [start, start + count/rate), int16 at rate."""
    out = np.zeros(count, dtype=np.int32)
    end = start + count / rate
    for playback in channel.clips:
        for begin, first, last in playback.spans():
            length = (last - first) / playback.rate
            if last <= first or begin >= end or begin + length <= start:
                continue
            audio = playback.at_rate(rate)
            lo = first * rate // playback.rate
            hi = min(last * rate // playback.rate, audio.size)
            _place(out, audio[lo:hi], round((begin - start) * rate))
    return np.clip(out, -32768, 32767).astype(np.int16)


def caller_track(channel: Channel, start: float, count: int, rate: int) -> np.ndarray:
    """What the caller said (as the forks sent it) in [start, start + count/rate), int16."""
    out = np.zeros(count, dtype=np.int32)
    for segment in channel.caller_segments:
        samples = resample(np.frombuffer(segment.data, dtype="<i2"), segment.rate, rate)
        _place(out, samples, round((segment.start - start) * rate))
    return np.clip(out, -32768, 32767).astype(np.int16)


def record_caller(
    channel: Channel, offset: int, take: int, at: float, rate: int, pcm: bytes
) -> None:
    """Keep caller audio on the call timeline, once even when several forks stream it."""
    if offset < channel.caller_recorded:
        return
    channel.caller_recorded = offset + take
    segments = channel.caller_segments
    last = segments[-1] if segments else None
    if last is not None and last.rate == rate and abs(last.end - at) < 1e-6:
        last.data += pcm
    else:
        segments.append(CallerSegment(at, rate, bytearray(pcm)))


def _place(out: np.ndarray, samples: np.ndarray, at: int) -> None:
    """Add `samples` into `out` starting at index `at` (may start before 0 or run past the end)."""
    lo, hi = max(at, 0), min(at + samples.size, out.size)
    if lo < hi:
        out[lo:hi] += samples[lo - at : hi - at]
