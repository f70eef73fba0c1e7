"""The emulator plays, breaks, transfers and records a call the way FreeSWITCH 1.10 does."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from voiceai.sim.freeswitch import Channel, EslServer
from voiceai.telephony.fork import SUBPROTOCOL

PASSWORD = "ClueCon"
WAIT = 5.0
RATE = 8000  # the channel rate of a PCMU call


# --- helpers -----------------------------------------------------------------------------


@dataclass
class Client:
    """A raw ESL client: replies in one queue, json events (with arrival time) in another."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    replies: asyncio.Queue[tuple[dict[str, str], str]] = field(default_factory=asyncio.Queue)
    events: asyncio.Queue[tuple[float, dict[str, str]]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.task = asyncio.create_task(client._read())
        headers, _ = await asyncio.wait_for(client.replies.get(), WAIT)
        assert headers["Content-Type"] == "auth/request"
        headers, _ = await client.send(f"auth {PASSWORD}")
        assert headers["Reply-Text"] == "+OK accepted"
        return client

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            headers: dict[str, str] = {}
            while True:
                line = (await self.reader.readline()).decode()
                if not line:
                    return
                if line == "\n":
                    if headers:
                        break
                    continue
                name, _, value = line.rstrip("\n").partition(": ")
                headers[name] = value
            length = int(headers.get("Content-Length", "0"))
            body = (await self.reader.readexactly(length)).decode() if length else ""
            if headers.get("Content-Type") == "text/event-json":
                self.events.put_nowait((loop.time(), json.loads(body)))
            else:
                self.replies.put_nowait((headers, body))

    async def send(self, command: str) -> tuple[dict[str, str], str]:
        self.writer.write(f"{command}\n\n".encode())
        return await asyncio.wait_for(self.replies.get(), WAIT)

    async def api(self, command: str) -> str:
        headers, body = await self.send(f"api {command}")
        assert headers["Content-Type"] == "api/response"
        return body

    async def play(self, uuid: str, path: Path | str, *, event_lock: bool = True) -> None:
        lock = "\nevent-lock: true" if event_lock else ""
        headers, _ = await self.send(
            f"sendmsg {uuid}\ncall-command: execute\nexecute-app-name: playback\n"
            f"execute-app-arg: {path}{lock}"
        )
        assert headers["Reply-Text"] == "+OK"

    async def event(self) -> tuple[float, dict[str, str]]:
        return await asyncio.wait_for(self.events.get(), WAIT)

    async def no_event(self, within: float) -> None:
        with pytest.raises(TimeoutError):
            _, event = await asyncio.wait_for(self.events.get(), within)
            pytest.fail(f"unexpected event: {event['Event-Name']} {event}")

    def close(self) -> None:
        self.writer.close()
        if self.task is not None:
            self.task.cancel()


@asynccontextmanager
async def switch(speed: float = 1.0) -> AsyncIterator[tuple[EslServer, Client]]:
    server = EslServer(PASSWORD)
    await server.start()
    server.speed = speed
    client = await Client.connect(server.port)
    try:
        yield server, client
    finally:
        client.close()
        await server.stop()


def tone(freq: float, seconds: float, rate: int, amp: float = 0.4) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * amp * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    data = np.repeat(samples, channels) if channels > 1 else samples
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.astype("<i2").tobytes())
    return path


def wav_seconds(path: Path) -> float:
    """The file's real length, read independently of the emulator's decoder."""
    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate()


def espeak(path: Path, text: str) -> Path:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def band_rms(samples: np.ndarray, rate: int, freq: float) -> float:
    """Level of one frequency (±30 Hz) in a signal, on the same scale as rms()."""
    spectrum = np.fft.rfft(samples.astype(np.float64))
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    band = np.abs(freqs - freq) <= 30
    return float(np.sqrt(2 * np.sum(np.abs(spectrum[band]) ** 2)) / samples.size)


@dataclass
class Sink:
    """A fork endpoint: keeps the binary audio each connection (by request path) delivered."""

    audio: dict[str, bytearray] = field(default_factory=dict)
    port: int = 0

    async def handler(self, ws: ServerConnection) -> None:
        buffer = self.audio.setdefault(ws.request.path if ws.request else "", bytearray())
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    buffer += message
        except ConnectionClosed:
            pass

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Sink]:
        async with serve(self.handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield self


async def start_fork(client: Client, sink: Sink, channel: Channel, bug: str, mix: str) -> None:
    url = f"ws://127.0.0.1:{sink.port}/{bug}"
    assert await client.api(f"uuid_audio_fork {channel.uuid} start {url} {mix} 16k {bug}") == (
        "+OK Success\n"
    )


# --- playback ----------------------------------------------------------------------------


def test_three_queued_files_play_in_order_gapless_for_their_real_length(tmp_path: Path) -> None:
    speech = espeak(tmp_path / "hello.wav", "Hello, thank you for calling.")  # 22.05 kHz
    stereo = write_wav(tmp_path / "stereo.wav", tone(440, 0.7, 16000), 16000, channels=2)
    high = write_wav(tmp_path / "high.wav", tone(660, 0.5, 48000), 48000)
    files = [speech, stereo, high]
    durations = [wav_seconds(f) for f in files]
    assert 1.0 < durations[0] < 4.0

    async def scenario() -> None:
        async with switch(speed=4.0) as (server, client):
            await client.send("event json PLAYBACK_START PLAYBACK_STOP")
            channel = server.add_channel()
            for path in files:
                await client.play(channel.uuid, path)
            events = [await client.event() for _ in range(6)]
            await client.no_event(0.3)

            names = [(e["Event-Name"], e["Playback-File-Path"]) for _, e in events]
            assert names == [
                (kind, str(path)) for path in files for kind in ("PLAYBACK_START", "PLAYBACK_STOP")
            ]
            stops = [e for _, e in events if e["Event-Name"] == "PLAYBACK_STOP"]
            assert [e["Playback-Status"] for e in stops] == ["done"] * 3
            for stop, seconds in zip(stops, durations, strict=True):
                offset = int(stop["variable_playback_last_offset_pos"])
                assert abs(offset - seconds * RATE) <= 2  # the whole file, in 8 kHz samples

            # STOPs arrive after the cumulative real durations, sped up 4x.
            first = events[0][0]
            stop_times = [at - first for at, e in events if e["Event-Name"] == "PLAYBACK_STOP"]
            expected = np.cumsum(durations) / 4.0
            assert np.allclose(stop_times, expected, atol=0.08), (stop_times, expected)

            # On the call clock the files are back to back, each exactly as long as it is.
            played = channel.played
            assert [p.path for p in played] == [str(f) for f in files]
            for item, seconds in zip(played, durations, strict=True):
                assert abs((item.stopped_at - item.started_at) - seconds) < 3 / RATE
            for before, after in itertools.pairwise(played):
                assert abs(after.started_at - before.stopped_at) < 1e-6  # gapless

    asyncio.run(scenario())


def test_break_all_stops_the_current_file_once_and_flushes_the_queue(tmp_path: Path) -> None:
    long = write_wav(tmp_path / "long.wav", tone(500, 3.0, 16000), 16000)
    others = [write_wav(tmp_path / f"q{i}.wav", tone(700, 0.5, 8000), 8000) for i in range(2)]

    async def scenario() -> None:
        async with switch(speed=2.0) as (server, client):
            await client.send("event json PLAYBACK_START PLAYBACK_STOP")
            channel = server.add_channel()
            for path in (long, *others):
                await client.play(channel.uuid, path)
            started_at, start = await client.event()
            assert start["Event-Name"] == "PLAYBACK_START"
            await asyncio.sleep(0.5)  # 1.0 s of the call
            # FreeSWITCH's uuid_break writes nothing on success: ESL answers "-ERR no reply".
            assert await client.api(f"uuid_break {channel.uuid} all") == "-ERR no reply\n"
            loop_now = asyncio.get_running_loop().time()
            _, stop = await client.event()
            assert stop["Event-Name"] == "PLAYBACK_STOP"
            assert stop["Playback-File-Path"] == str(long)
            assert stop["Playback-Status"] == "break"
            offset = int(stop["variable_playback_last_offset_pos"])
            heard = (loop_now - started_at) * 2.0 * RATE  # channel rate, not the file's 16 kHz
            assert 0.9 * RATE < offset < 1.4 * RATE
            assert abs(offset - heard) < 0.1 * RATE
            await client.no_event(1.0)  # the two queued files were flushed: no events at all
            assert [(p.status, p.offset_samples) for p in channel.played] == [("break", offset)]

            # The queue is empty, not stuck: the next file plays at once.
            await client.play(channel.uuid, others[0])
            _, again = await client.event()
            assert (again["Event-Name"], again["Playback-File-Path"]) == (
                "PLAYBACK_START",
                str(others[0]),
            )
            assert await client.api("uuid_break nope all") == "-ERR No Such Channel!\n"
            assert await client.api("uuid_break") == "-USAGE: <uuid> [all]\n"

    asyncio.run(scenario())


def test_break_without_all_stops_only_the_current_file(tmp_path: Path) -> None:
    first = write_wav(tmp_path / "first.wav", tone(500, 3.0, 8000), 8000)
    second = write_wav(tmp_path / "second.wav", tone(700, 0.6, 8000), 8000)

    async def scenario() -> None:
        async with switch(speed=2.0) as (server, client):
            await client.send("event json PLAYBACK_START PLAYBACK_STOP")
            channel = server.add_channel()
            await client.play(channel.uuid, first)
            await client.play(channel.uuid, second)
            await client.event()
            await asyncio.sleep(0.3)
            assert await client.api(f"uuid_break {channel.uuid}") == "-ERR no reply\n"
            events = [(await client.event())[1] for _ in range(3)]
            assert [(e["Event-Name"], e["Playback-File-Path"]) for e in events] == [
                ("PLAYBACK_STOP", str(first)),
                ("PLAYBACK_START", str(second)),
                ("PLAYBACK_STOP", str(second)),
            ]
            assert [e.get("Playback-Status") for e in events] == ["break", None, "done"]
            assert [p.status for p in channel.played] == ["break", "done"]
            broken, full = channel.played
            assert abs(full.started_at - broken.stopped_at) < 0.05  # the queue went straight on
            assert full.offset_samples == int(0.6 * RATE)

    asyncio.run(scenario())


def test_without_event_lock_quick_files_nest_and_are_heard_in_reverse(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    files = [write_wav(tmp_path / f"{n}.wav", tone(400, 0.5, 8000), 8000) for n in names]

    async def scenario() -> None:
        async with switch(speed=2.0) as (server, client):
            await client.send("event json PLAYBACK_START PLAYBACK_STOP")
            channel = server.add_channel()
            for path in files:
                await client.play(channel.uuid, path, event_lock=False)
            events = [(await client.event())[1] for _ in range(6)]
            order = [(e["Event-Name"][9:], Path(e["Playback-File-Path"]).stem) for e in events]
            assert order == [
                ("START", "a"),
                ("START", "b"),
                ("START", "c"),
                ("STOP", "c"),
                ("STOP", "b"),
                ("STOP", "a"),
            ]
            # Each file is still heard whole, one at a time: 1.5 s in all, "a" last.
            a = next(p for p in channel.played if p.path.endswith("a.wav"))
            assert all(p.status == "done" for p in channel.played)
            assert 1.45 < a.stopped_at - a.started_at < 1.6

    asyncio.run(scenario())


def test_uuid_broadcast_queues_in_order_with_a_lead_before_each_file(tmp_path: Path) -> None:
    files = [write_wav(tmp_path / f"b{i}.wav", tone(600, 0.4, 8000), 8000) for i in range(2)]

    async def scenario() -> None:
        async with switch(speed=2.0) as (server, client):
            await client.send("event json PLAYBACK_START PLAYBACK_STOP")
            channel = server.add_channel()
            sent_at = server.clock() - channel.created_at
            for path in files:
                body = await client.api(f"uuid_broadcast {channel.uuid} {path} aleg")
                assert body == "+OK Message Sent\n"
            events = [(await client.event())[1] for _ in range(4)]
            assert [Path(e["Playback-File-Path"]).name for e in events] == [
                "b0.wav",
                "b0.wav",
                "b1.wav",
                "b1.wav",
            ]
            first, second = channel.played
            assert 0.09 < first.started_at - sent_at < 0.16
            assert abs((second.started_at - first.stopped_at) - 0.1) < 0.01
            # FreeSWITCH answers the same for a uuid that matches nothing.
            assert await client.api(f"uuid_broadcast nope {files[0]}") == "+OK Message Sent\n"
            assert (await client.api(f"uuid_broadcast {channel.uuid}")).startswith("-USAGE: ")

    asyncio.run(scenario())


def test_a_missing_file_fires_no_playback_event_and_the_queue_goes_on(tmp_path: Path) -> None:
    good = write_wav(tmp_path / "good.wav", tone(600, 0.3, 8000), 8000)
    missing = tmp_path / "missing.wav"

    async def scenario() -> None:
        async with switch(speed=4.0) as (server, client):
            await client.send("event json PLAYBACK_START PLAYBACK_STOP CHANNEL_EXECUTE_COMPLETE")
            channel = server.add_channel()
            await client.play(channel.uuid, missing)
            await client.play(channel.uuid, good)
            events = [(await client.event())[1] for _ in range(4)]
            assert [(e["Event-Name"], e.get("Application-Response")) for e in events] == [
                ("CHANNEL_EXECUTE_COMPLETE", "FILE NOT FOUND"),
                ("PLAYBACK_START", None),
                ("PLAYBACK_STOP", None),
                ("CHANNEL_EXECUTE_COMPLETE", "FILE PLAYED"),
            ]
            assert events[1]["Playback-File-Path"] == str(good)
            assert len(channel.errors) == 1 and str(missing) in channel.errors[0]
            assert [p.path for p in channel.played] == [str(good)]

            server.missing_file_events = True  # the simplified behaviour, when a test wants it
            await client.play(channel.uuid, missing)
            events = [(await client.event())[1] for _ in range(3)]
            assert [e["Event-Name"] for e in events] == [
                "PLAYBACK_START",
                "PLAYBACK_STOP",
                "CHANNEL_EXECUTE_COMPLETE",
            ]
            assert events[1]["Playback-Status"] == "done"

    asyncio.run(scenario())


# --- DTMF, transfer, originate -----------------------------------------------------------


def test_caller_dtmf_is_an_esl_event_and_star_stops_the_current_file(tmp_path: Path) -> None:
    long = write_wav(tmp_path / "long.wav", tone(500, 3.0, 8000), 8000)
    short = write_wav(tmp_path / "short.wav", tone(700, 0.3, 8000), 8000)

    async def scenario() -> None:
        async with switch(speed=2.0) as (server, client):
            await client.send("event json DTMF PLAYBACK_START PLAYBACK_STOP")
            channel = server.add_channel()
            server.press_dtmf(channel.uuid, "5", duration_ms=120)
            _, event = await client.event()
            assert event["Event-Name"] == "DTMF"
            assert event["Unique-ID"] == channel.uuid
            assert event["DTMF-Digit"] == "5"
            assert event["DTMF-Duration"] == "960"  # 8 kHz samples
            assert event["DTMF-Source"] == "RTP"

            await client.play(channel.uuid, long)
            await client.play(channel.uuid, short)
            assert (await client.event())[1]["Event-Name"] == "PLAYBACK_START"
            server.press_dtmf(channel.uuid, "1")  # not a terminator: the file goes on
            assert (await client.event())[1]["DTMF-Digit"] == "1"
            await client.no_event(0.2)
            server.press_dtmf(channel.uuid, "*")  # mod_dptools playback's default terminator
            events = [(await client.event())[1] for _ in range(4)]
            assert [(e["Event-Name"], e.get("Playback-Status")) for e in events] == [
                ("DTMF", None),
                ("PLAYBACK_STOP", "break"),
                ("PLAYBACK_START", None),  # only the current file stopped: the queue goes on
                ("PLAYBACK_STOP", "done"),
            ]
            assert channel.variables["playback_terminator_used"] == "*"
            assert channel.dtmf_pressed == ["5", "1", "*"]
            with pytest.raises(ValueError):
                server.press_dtmf(channel.uuid, "x")

    asyncio.run(scenario())


def test_transfer_to_a_gateway_is_recorded_and_the_fork_keeps_streaming() -> None:
    async def scenario() -> None:
        async with Sink().running() as sink, switch(speed=2.0) as (server, client):
            channel = server.add_channel()
            await start_fork(client, sink, channel, "voiceai", "mono")
            await asyncio.sleep(0.2)
            dest = "bridge:sofia/gateway/ringcentral/+15551234"
            assert await client.api(f"uuid_transfer {channel.uuid} {dest} inline") == "+OK\n"
            assert channel.transferred
            assert channel.transfer_target == "sofia/gateway/ringcentral/+15551234"
            assert channel.transfers == [(dest, "inline", "default")]
            fork = channel.fork
            assert fork is not None
            before = fork.bytes_sent
            await asyncio.sleep(0.2)
            assert fork.state == "connected" and fork.bytes_sent > before

            assert await client.api(f"uuid_transfer {channel.uuid} 1000 XML default") == "+OK\n"
            assert channel.transfers[-1] == ("1000", "XML", "default")
            assert await client.api("uuid_transfer nope 1000") == "-ERR No Such Channel!\n"
            assert (await client.api("uuid_transfer x")).startswith("-USAGE: ")

            # uuid_send_dtmf (the bot keys digits to the caller) also answers nothing on success.
            assert await client.api(f"uuid_send_dtmf {channel.uuid} 1234") == "-ERR no reply\n"
            assert channel.dtmf_sent == ["1234"]
            assert await client.api("uuid_send_dtmf nope 1") == "-ERR Cannot locate session!\n"

    asyncio.run(scenario())


def test_originate_answers_with_the_uuid_or_fails_with_the_cause() -> None:
    async def scenario() -> None:
        async with switch(speed=2.0) as (server, client):
            server.unreachable_numbers.add("+15550000")
            server.busy_numbers.add("+15550001")
            await client.send("event json CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE")
            uuid = "6a1b2c3d-0000-4000-8000-00000000abcd"
            url = f"{{origination_uuid={uuid},origination_caller_id_number=+15550199}}"
            loop = asyncio.get_running_loop()
            began = loop.time()
            body = await client.api(f"originate {url}sofia/gateway/ringcentral/+15551234 &park()")
            assert body == f"+OK {uuid}\n"
            assert loop.time() - began >= server.originate_answer_delay / 2.0 - 0.02  # it rang
            (_, create), (_, answer) = await client.event(), await client.event()
            assert create["Event-Name"] == "CHANNEL_CREATE"
            assert answer["Event-Name"] == "CHANNEL_ANSWER"
            for event in (create, answer):
                assert event["Unique-ID"] == uuid
                assert event["Call-Direction"] == "outbound"
                assert event["Caller-Destination-Number"] == "+15551234"
                assert event["Channel-Name"] == "sofia/gateway/ringcentral/+15551234"
            channel = server.channels[uuid]
            assert channel.answered and channel.caller_id_number == "+15550199"
            assert await client.api(f"uuid_exists {uuid}") == "true"

            for number, cause in (("+15550000", "NO_ANSWER"), ("+15550001", "USER_BUSY")):
                body = await client.api(f"originate sofia/gateway/ringcentral/{number} &park()")
                assert body == f"-ERR {cause}\n"
                events = [(await client.event())[1] for _ in range(2)]
                assert [e["Event-Name"] for e in events] == [
                    "CHANNEL_CREATE",
                    "CHANNEL_HANGUP_COMPLETE",
                ]
                assert events[1]["Hangup-Cause"] == cause
            assert (await client.api("originate onlyone")).startswith("-USAGE: ")

    asyncio.run(scenario())


# --- the whole call on one timeline ------------------------------------------------------


def test_call_recording_holds_both_sides_on_one_timeline_cut_at_the_break(
    tmp_path: Path,
) -> None:
    rate = 16000
    greeting = write_wav(tmp_path / "greeting.wav", tone(1000, 3.0, 16000), 16000)

    async def scenario() -> None:
        async with Sink().running() as sink, switch(speed=2.0) as (server, client):
            await client.send("event json PLAYBACK_START PLAYBACK_STOP")
            caller = tone(300, 0.6, rate).astype("<i2").tobytes()
            channel = server.add_channel(caller_audio=caller)
            await server.answer(channel.uuid)
            await start_fork(client, sink, channel, "voiceai", "mono")
            await start_fork(client, sink, channel, "rec", "stereo")
            await asyncio.sleep(0.2)
            await client.play(channel.uuid, greeting)
            await client.event()
            await asyncio.sleep(0.6)  # 1.2 s of the greeting, then the caller barges in
            await client.api(f"uuid_break {channel.uuid} all")
            _, stop = await client.event()
            await asyncio.sleep(0.3)
            await server.hangup(channel.uuid)

            (item,) = channel.played
            assert item.status == "break"
            assert int(stop["variable_playback_last_offset_pos"]) == item.offset_samples
            assert abs((item.stopped_at - item.started_at) - item.offset_samples / RATE) < 1e-3

            path = server.write_call_wav(channel.uuid, tmp_path / "call.wav", rate=rate)
            with wave.open(str(path)) as wav:
                assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, rate)
                frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
            left, right = frames[0::2], frames[1::2]
            assert np.array_equal(server.played_audio(channel.uuid, rate), right)

            def span(a: float, b: float) -> slice:
                return slice(int(a * rate), int(b * rate))

            # Right: the greeting at its pitch exactly while it played, silence outside it.
            start, stop_at = item.started_at, item.stopped_at
            during = right[span(start + 0.05, stop_at - 0.05)]
            assert rms(during) > 3000
            assert abs(peak_hz(during, rate) - 1000) < 5  # no chipmunk: rates handled
            assert rms(right[span(0, start - 0.02)]) < 30
            assert rms(right[span(stop_at + 0.02, len(right) / rate)]) < 30  # cut at the break

            # Left: the caller's tone where the fork sent it, and never the bot.
            segment = channel.caller_segments[0]
            said = segment.start - channel.created_at
            spoken = left[span(said + 0.02, said + 0.58)]
            assert abs(peak_hz(spoken, rate) - 300) < 5 and rms(spoken) > 3000
            assert band_rms(left, rate, 1000) < 30

            # The forks: mono is the caller only; stereo carries the greeting on the right.
            mono = np.frombuffer(bytes(sink.audio["/voiceai"]), dtype="<i2")
            assert band_rms(mono, rate, 300) > 1000 and band_rms(mono, rate, 1000) < 30
            stereo = np.frombuffer(bytes(sink.audio["/rec"]), dtype="<i2")
            assert band_rms(stereo[1::2], rate, 1000) > 1000
            assert band_rms(stereo[0::2], rate, 1000) < 30

    asyncio.run(scenario())


def test_caller_audio_appended_mid_call_is_streamed_and_recorded_when_sent(
    tmp_path: Path,
) -> None:
    rate = 16000

    async def scenario() -> None:
        async with Sink().running() as sink, switch(speed=2.0) as (server, client):
            channel = server.add_channel()
            await start_fork(client, sink, channel, "voiceai", "mono")
            await asyncio.sleep(0.4)  # 0.8 s of an open, silent line
            said_at = server.clock() - channel.created_at
            channel.caller_audio += tone(300, 0.5, rate).astype("<i2").tobytes()
            await asyncio.sleep(0.4)
            await server.hangup(channel.uuid)

            mono = np.frombuffer(bytes(sink.audio["/voiceai"]), dtype="<i2")
            assert band_rms(mono, rate, 300) > 1000  # not skipped after the silence
            (segment,) = channel.caller_segments
            assert abs((segment.start - channel.created_at) - said_at) < 0.05
            path = server.write_call_wav(channel.uuid, tmp_path / "call.wav", rate=rate)
            with wave.open(str(path)) as wav:
                left = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")[0::2]
            begin = int(said_at * rate)
            assert rms(left[: begin - int(0.05 * rate)]) < 30
            assert rms(left[begin + int(0.05 * rate) : begin + int(0.45 * rate)]) > 3000

    asyncio.run(scenario())
