"""An emulator of Microsoft Edge's read-aloud TTS websocket, the service edge-tts 7 talks to.

It speaks the wire protocol edge-tts 7.3 uses, so tests run the real client library against it:

- handshake `GET .../edge/v1?TrustedClientToken=..&ConnectionId=..&Sec-MS-GEC=..&
  Sec-MS-GEC-Version=..` with a `muid` cookie; a wrong or stale Sec-MS-GEC token gets 403 with
  a `Date` header (edge-tts corrects its clock from it and retries once);
- client TEXT frames `Path:speech.config` (JSON asking for `audio-24khz-48kbitrate-mono-mp3`)
  then `Path:ssml` (headers, a blank line, the SSML document);
- server TEXT frames `Path:turn.start`, `Path:response`, `Path:audio.metadata` (a
  SentenceBoundary), BINARY frames `[2-byte big-endian header length][headers][MP3 bytes]`
  with `Path:audio` and `Content-Type:audio/mpeg`, a last audio frame with no Content-Type and
  no data, then TEXT `Path:turn.end`.

The audio is real: espeak-ng speaks the SSML text, which is resampled to 24 kHz mono and
encoded to 48 kbit/s MP3 frames (no ID3 or Xing header, like the live stream). Modes make the
service slow (`delay_s` before the first frame), refuse the handshake (503), or drop the
connection after the first audio frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import io
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import av
import numpy as np
from edge_tts.constants import TRUSTED_CLIENT_TOKEN
from edge_tts.drm import generate_sec_ms_gec_v2
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from voiceai.audio.pcm import decode_bytes

log = logging.getLogger(__name__)

EDGE_RATE = 24000
EDGE_BITRATE = 48000
OUTPUT_FORMAT = "audio-24khz-48kbitrate-mono-mp3"
PATH = "/consumer/speech/synthesize/readaloud/edge/v1"
TOKEN_WINDOW_S = 300  # Sec-MS-GEC changes every 5 minutes; the current and previous one pass
SSML_NS = "{http://www.w3.org/2001/10/synthesis}"
# edge-tts sends `en-US-AriaNeural` in its long form, as Microsoft Edge does.
VOICE_NAME = re.compile(r"Microsoft Server Speech Text to Speech Voice \(([a-z]{2,})-[^,]+, \S+\)")
ESPEAK_VOICES = {"en": "en-us"}

Mode = Literal["speak", "slow", "reject", "drop"]


@dataclass(frozen=True)
class EdgeRequest:
    """One synthesis as the emulator received it."""

    voice: str
    text: str
    output_format: str


@dataclass
class EdgeEmulator:
    """`async with EdgeEmulator() as edge:` then `EdgeTTS(endpoint=edge.endpoint)`."""

    mode: Mode = "speak"
    delay_s: float = 5.0  # how long `slow` waits before its first frame
    chunk_bytes: int = 2048  # MP3 bytes per binary frame
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[EdgeRequest] = field(default_factory=list)
    _server: Server | None = None

    @property
    def endpoint(self) -> str:
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        self._server = await serve(
            self._serve, self.host, self.port, process_request=self._handshake
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> EdgeEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.mode == "reject":
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "emulated outage\n")
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path != PATH or query.get("TrustedClientToken") != TRUSTED_CLIENT_TOKEN:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "unknown endpoint\n")
        cookie = request.headers.get("Cookie", "")
        if not query.get("ConnectionId") or "muid=" not in cookie:
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "no ConnectionId or muid\n")
        now = time.time()
        valid = {generate_sec_ms_gec_v2(now - age) for age in (0, TOKEN_WINDOW_S)}
        if query.get("Sec-MS-GEC") not in valid:
            return connection.respond(http.HTTPStatus.FORBIDDEN, "bad Sec-MS-GEC\n")
        return None

    async def _serve(self, websocket: ServerConnection) -> None:
        try:
            config = _parse_text(await websocket.recv())
            if config[0].get("Path") != "speech.config":
                await websocket.close(1007, "expected speech.config first")
                return
            synthesis = json.loads(config[1])["context"]["synthesis"]["audio"]
            output_format = synthesis["outputFormat"]
            headers, ssml = _parse_text(await websocket.recv())
            if headers.get("Path") != "ssml" or output_format != OUTPUT_FORMAT:
                await websocket.close(1007, "expected ssml for " + OUTPUT_FORMAT)
                return
            voice, text = _parse_ssml(ssml)
            self.requests.append(EdgeRequest(voice, text, output_format))
            match = VOICE_NAME.fullmatch(voice)
            if match is None:
                # The live service closes without audio; edge-tts raises NoAudioReceived.
                await websocket.send(_text(headers["X-RequestId"], "turn.end", "{}"))
                return
            if self.mode == "slow":
                # Stall, but let a client that gives up (or stop()) end the wait at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(websocket.wait_closed(), self.delay_s)
                if websocket.state is State.CLOSED:
                    return
            await self._speak(websocket, headers["X-RequestId"], match.group(1), text)
        except ConnectionClosed:
            log.debug("edge emulator: the client left mid-request")  # a client timeout

    async def _speak(
        self, websocket: ServerConnection, request_id: str, language: str, text: str
    ) -> None:
        stream_id = uuid.uuid4().hex.upper()
        await websocket.send(_text(request_id, "turn.start", '{"context":{"serviceTag":"emu"}}'))
        response = {
            "context": {"serviceTag": "emu"},
            "audio": {"type": "inline", "streamId": stream_id},
        }
        await websocket.send(_text(request_id, "response", json.dumps(response)))
        mp3, seconds = await synthesize_mp3(text, ESPEAK_VOICES.get(language, language))
        boundary = {
            "Type": "SentenceBoundary",
            "Data": {
                "Offset": 1_000_000,
                "Duration": int(seconds * 10_000_000),
                "text": {"Text": text, "Length": len(text), "BoundaryType": "SentenceBoundary"},
            },
        }
        metadata = json.dumps({"Metadata": [boundary]})
        await websocket.send(_text(request_id, "audio.metadata", metadata))
        for start in range(0, len(mp3), self.chunk_bytes):
            chunk = mp3[start : start + self.chunk_bytes]
            await websocket.send(_audio(request_id, stream_id, chunk))
            if self.mode == "drop":
                await websocket.close(1011, "emulated drop")
                return
        await websocket.send(_audio(request_id, stream_id, b""))
        await websocket.send(_text(request_id, "turn.end", "{}"))


def _parse_text(message: str | bytes) -> tuple[dict[str, str], str]:
    """`Name:value` lines, a blank line, a body (the framing of every TEXT message)."""
    text = message.decode() if isinstance(message, bytes) else message
    head, _, body = text.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


def _parse_ssml(ssml: str) -> tuple[str, str]:
    root = ElementTree.fromstring(ssml)
    voice = root.find(f"{SSML_NS}voice")
    if voice is None:
        raise ValueError("SSML without a voice element")
    return voice.get("name", ""), " ".join("".join(voice.itertext()).split())


def _text(request_id: str, path: str, body: str) -> str:
    return (
        f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
        f"Path:{path}\r\n\r\n{body}"
    )


def _audio(request_id: str, stream_id: str, data: bytes) -> bytes:
    # edge-tts reads headers from the first `length` bytes and audio after `length + 2`.
    content_type = "Content-Type:audio/mpeg\r\n" if data else ""
    head = f"X-RequestId:{request_id}\r\n{content_type}X-StreamId:{stream_id}\r\nPath:audio\r\n"
    encoded = head.encode()
    return len(encoded).to_bytes(2, "big") + encoded + data


async def synthesize_mp3(text: str, espeak_voice: str) -> tuple[bytes, float]:
    """espeak-ng speech as Edge sends it: 24 kHz mono 48 kbit/s MP3 frames, and its length."""
    process = await asyncio.create_subprocess_exec(
        "espeak-ng",
        "-v",
        espeak_voice,
        "-s",
        "150",
        "--stdout",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    wav, errors = await process.communicate(text.encode())
    if process.returncode != 0:
        raise RuntimeError(f"espeak-ng failed: {errors.decode(errors='replace').strip()}")
    samples = await asyncio.to_thread(decode_bytes, wav, EDGE_RATE)
    return await asyncio.to_thread(encode_mp3, samples, EDGE_RATE), len(samples) / EDGE_RATE


def encode_mp3(samples: np.ndarray, rate: int = EDGE_RATE, bit_rate: int = EDGE_BITRATE) -> bytes:
    """Mono int16 → CBR MP3 frames with no ID3 tag or Xing header (as a live stream has)."""
    out = io.BytesIO()
    options = {"id3v2_version": "0", "write_xing": "0"}
    with av.open(out, "w", format="mp3", options=options) as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(
            np.asarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()
