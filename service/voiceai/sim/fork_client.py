"""A mod_audio_fork client: streams caller audio to the service the way FreeSWITCH does."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from voiceai.audio.pcm import decode_file
from voiceai.telephony.fork import SUBPROTOCOL


@dataclass
class ForkStreamOptions:
    rate: int = 16000
    frame_ms: int = 20  # FreeSWITCH sends one frame per packet time: 20 or 30 ms
    speed: float = 1.0  # 1 = real time; 0 = as fast as the socket takes it
    coalesce_every: int = 0  # every Nth send joins 2-3 frames, like a slow socket; 0 = never
    gap_ms: int = 1500  # silence after each utterance, as an open phone line sends
    lead_ms: int = 300  # silence before the first utterance
    stereo: bool = False  # interleave the caller (left) with `right` audio
    seed: int = 7


@dataclass
class CallAudio:
    """What the caller says, one utterance after another, at the call rate."""

    utterances: list[np.ndarray]
    right: np.ndarray | None = None  # what FreeSWITCH plays, for stereo forks

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], rate: int) -> CallAudio:
        return cls([decode_file(p, rate) for p in paths])


def silence(ms: int, rate: int) -> np.ndarray:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def caller_pcm(audio: CallAudio, options: ForkStreamOptions) -> bytes:
    """The whole caller leg as FreeSWITCH would stream it, L16 little-endian."""
    parts = [silence(options.lead_ms, options.rate)]
    for utterance in audio.utterances:
        parts += [utterance, silence(options.gap_ms, options.rate)]
    left = np.concatenate(parts).astype("<i2")
    if not options.stereo:
        return left.tobytes()
    right = np.zeros_like(left) if audio.right is None else audio.right.astype("<i2")
    right = np.resize(right, left.shape) if right.size else np.zeros_like(left)
    return np.column_stack([left, right]).reshape(-1).tobytes()


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class ForkClient:
    """One forked call: connect, send metadata, stream audio, close."""

    def __init__(
        self,
        url: str,
        *,
        metadata: dict[str, Any] | str | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.url = url
        self.metadata = metadata
        self.auth = auth
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> ForkClient:
        headers = basic_auth(*self.auth) if self.auth else None
        self.ws = await connect(
            self.url, subprotocols=[SUBPROTOCOL], additional_headers=headers, max_size=None
        )
        if self.metadata is not None:
            text = self.metadata if isinstance(self.metadata, str) else compact_json(self.metadata)
            await self.ws.send(text)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def stream(self, pcm: bytes, options: ForkStreamOptions) -> None:
        """Send `pcm` in packet-time frames, paced like a live call."""
        assert self.ws is not None
        channels = 2 if options.stereo else 1
        frame_bytes = options.rate * options.frame_ms // 1000 * 2 * channels
        rng = random.Random(options.seed)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent_ms = 0.0
        offset = 0
        count = 0
        while offset < len(pcm):
            count += 1
            frames = 1
            if options.coalesce_every and count % options.coalesce_every == 0:
                frames = rng.choice((2, 3))
            chunk = pcm[offset : offset + frames * frame_bytes]
            offset += len(chunk)
            await self.ws.send(chunk)
            sent_ms += frames * options.frame_ms
            if options.speed > 0:
                delay = started + sent_ms / 1000 / options.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def send_text(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send(text)

    async def end_audio(self) -> None:
        """A zero-length binary frame: mod_audio_fork's graceful end."""
        assert self.ws is not None
        await self.ws.send(b"")


def compact_json(value: Any) -> str:
    # mod_audio_fork splits its arguments on spaces: metadata must have none.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass
class ForkCall:
    """Everything needed to place one simulated call."""

    base_url: str
    call_id: str
    audio: CallAudio
    options: ForkStreamOptions = field(default_factory=ForkStreamOptions)
    metadata: dict[str, Any] | None = None
    auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/fork/{self.call_id}"

    async def run(self) -> None:
        metadata = self.metadata
        if metadata is None:
            metadata = {
                "callId": self.call_id,
                "caller": "+15550100",
                "callee": "+15550199",
                "direction": "inbound",
                "rate": f"{self.options.rate // 1000}k",
            }
        async with ForkClient(self.url, metadata=metadata, auth=self.auth) as client:
            await client.stream(caller_pcm(self.audio, self.options), self.options)
