"""The fork endpoint against mod_audio_fork's protocol, with real speech and real Whisper."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.calls import collect_events, place, transcripts
from tests.conftest import RunningService, white_noise, words
from tests.speech import KEYWORDS, Speech
from voiceai.audio.pcm import decode_file
from voiceai.sim.fork_client import (
    CallAudio,
    ForkCall,
    ForkClient,
    ForkStreamOptions,
    caller_pcm,
)
from voiceai.telephony.fork import SUBPROTOCOL


@pytest.mark.parametrize(
    ("sentence", "rate", "frame_ms"),
    [
        ("booking", 16000, 20),
        ("callback", 16000, 30),
        ("pharmacy", 8000, 20),
        ("invoice", 8000, 30),
    ],
)
def test_caller_speech_is_transcribed_at_each_rate_and_frame_size(
    service: RunningService, speech: Speech, sentence: str, rate: int, frame_ms: int
) -> None:
    options = ForkStreamOptions(rate=rate, frame_ms=frame_ms, speed=0, coalesce_every=7)
    call = ForkCall(
        service.ws, f"call-{sentence}", CallAudio.from_files([speech[sentence]], rate), options
    )
    received = asyncio.run(place(call))

    texts = transcripts(received)
    assert len(texts) == 1, texts
    assert KEYWORDS[sentence] <= words(texts[0]), texts[0]
    final = next(e for e in received if e["type"] == "transcript.final")["data"]
    assert final["language"] == "en"
    assert 0 < final["start_ms"] < final["end_ms"]
    assert final["stt_ms"] > 0
    record = service.wait_for_call(call.call_id)
    assert record["sample_rate"] == rate
    assert [t["text"] for t in record["turns"]] == texts


def test_turns_of_a_call_arrive_in_order_when_streamed_in_real_time(
    service: RunningService, speech: Speech
) -> None:
    options = ForkStreamOptions(rate=16000, speed=1.0, gap_ms=900)
    audio = CallAudio.from_files([speech["callback"], speech["pharmacy"]], 16000)
    received = asyncio.run(place(ForkCall(service.ws, "real-time", audio, options)))

    texts = transcripts(received)
    assert len(texts) == 2, texts
    assert KEYWORDS["callback"] <= words(texts[0])
    assert KEYWORDS["pharmacy"] <= words(texts[1])
    types = [e["type"] for e in received]
    assert types[0] == "snapshot"  # a viewer first gets the calls in progress
    assert types[1] == "call.started" and types[-1] == "call.ended"


def test_two_calls_at_once_stay_separate(service: RunningService, speech: Speech) -> None:
    def call(call_id: str, sentence: str, rate: int) -> ForkCall:
        options = ForkStreamOptions(rate=rate, speed=2.0)
        return ForkCall(
            service.ws, call_id, CallAudio.from_files([speech[sentence]], rate), options
        )

    async def both() -> list[list[dict]]:
        return list(
            await asyncio.gather(
                place(call("a", "booking", 16000)), place(call("b", "invoice", 8000))
            )
        )

    first, second = asyncio.run(both())
    assert KEYWORDS["booking"] <= words(" ".join(transcripts(first)))
    assert not KEYWORDS["invoice"] & words(" ".join(transcripts(first)))
    assert KEYWORDS["invoice"] <= words(" ".join(transcripts(second)))
    assert not KEYWORDS["booking"] & words(" ".join(transcripts(second)))
    assert {e["call_id"] for e in first} == {"a"}
    assert len(service.wait_for_call("a")["turns"]) == 1
    assert len(service.wait_for_call("b")["turns"]) == 1


def test_silence_and_noise_produce_no_turn(service: RunningService) -> None:
    rate = 8000
    line = np.concatenate(
        [np.zeros(rate * 2, np.int16), white_noise(3, rate), np.zeros(rate, np.int16)]
    )
    options = ForkStreamOptions(rate=rate, speed=0)
    received = asyncio.run(place(ForkCall(service.ws, "quiet", CallAudio([line]), options)))

    assert transcripts(received) == []
    assert service.wait_for_call("quiet")["turns"] == []


def test_samples_split_across_odd_sized_frames_are_reassembled(
    service: RunningService, speech: Speech
) -> None:
    options = ForkStreamOptions(rate=16000)
    pcm = caller_pcm(CallAudio.from_files([speech["booking"]], 16000), options)

    async def stream() -> None:
        async with ForkClient(f"{service.ws}/fork/odd", metadata={"rate": "16k"}) as client:
            sizes = [333, 1, 641, 7, 1280, 99]
            offset, i = 0, 0
            while offset < len(pcm):
                await client.ws.send(pcm[offset : offset + sizes[i % len(sizes)]])
                offset += sizes[i % len(sizes)]
                i += 1

    received = asyncio.run(collect_events(service.ws, "odd", stream))
    assert KEYWORDS["booking"] <= words(" ".join(transcripts(received)))


def test_stereo_fork_transcribes_the_caller_channel_only(
    service: RunningService, speech: Speech
) -> None:
    rate = 16000
    right = decode_file(speech["invoice"], rate)  # what the bot plays, on the right channel
    audio = CallAudio([decode_file(speech["booking"], rate)], right=right)
    options = ForkStreamOptions(rate=rate, speed=0, stereo=True, lead_ms=0)
    metadata = {"rate": "16k", "mix": "stereo"}
    received = asyncio.run(place(ForkCall(service.ws, "stereo", audio, options, metadata=metadata)))

    heard = words(" ".join(transcripts(received)))
    assert KEYWORDS["booking"] <= heard
    assert not KEYWORDS["invoice"] & heard


def test_fork_offers_drachtio_subprotocol_and_gets_it(service: RunningService) -> None:
    async def handshake() -> str | None:
        async with ForkClient(f"{service.ws}/fork/proto", metadata={"rate": "8k"}) as client:
            return client.ws.subprotocol

    assert asyncio.run(handshake()) == SUBPROTOCOL


def test_fork_basic_auth_is_required_when_a_password_is_set(
    service_factory, speech: Speech
) -> None:
    service = service_factory(fork_user="fs", fork_password="fork-secret")

    async def attempt(auth: tuple[str, str] | None) -> int:
        try:
            async with ForkClient(f"{service.ws}/fork/auth", metadata={"rate": "8k"}, auth=auth):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(attempt(None)) == 401
    assert asyncio.run(attempt(("fs", "wrong"))) == 401
    assert asyncio.run(attempt(("fs", "fork-secret"))) == 101

    options = ForkStreamOptions(rate=8000, speed=0)
    call = ForkCall(
        service.ws,
        "authed",
        CallAudio.from_files([speech["callback"]], 8000),
        options,
        auth=("fs", "fork-secret"),
    )
    assert KEYWORDS["callback"] <= words(" ".join(transcripts(asyncio.run(place(call)))))


def test_invalid_metadata_json_falls_back_to_defaults_and_the_call_goes_on(
    service: RunningService, speech: Speech
) -> None:
    options = ForkStreamOptions(rate=16000, speed=0)
    audio = CallAudio.from_files([speech["pharmacy"]], 16000)
    call = ForkCall(service.ws, "badmeta", audio, options, metadata="{caller: oops")  # type: ignore[arg-type]
    received = asyncio.run(place(call))

    assert KEYWORDS["pharmacy"] <= words(" ".join(transcripts(received)))
    record = service.wait_for_call("badmeta")
    assert record["direction"] == "inbound" and record["sample_rate"] == 16000


def test_metadata_fields_are_kept_in_the_record(service: RunningService, speech: Speech) -> None:
    metadata = {
        "callId": "m1",
        "caller": "+14155550100",
        "callerName": "Ann",
        "did": "+16505550199",
        "direction": "inbound",
        "rate": 8000,
        "campaign": "spring",
    }
    call = ForkCall(
        service.ws,
        "m1",
        CallAudio.from_files([speech["callback"]], 8000),
        ForkStreamOptions(rate=8000, speed=0),
        metadata=metadata,
    )
    asyncio.run(place(call))
    record = service.wait_for_call("m1")
    assert record["caller"] == "+14155550100"
    assert record["callee"] == "+16505550199"
    assert record["sample_rate"] == 8000
    assert record["metadata"]["campaign"] == "spring"


BAD_METADATA = {
    "integer-over-4300-digits": '{"rate":"16k","n":' + "9" * 4301 + "}",
    "nested-4000-deep": '{"x":' + "[" * 4000 + "]" * 4000 + "}",
    "nested-30000-deep": "[" * 30_000 + "]" * 30_000,
    "nested-300-deep": '{"x":' + "[" * 300 + "]" * 300 + "}",
    "infinite-number": '{"caller":"+14155550100","x":1e400}',
    "lone-surrogate": '{"caller":"\\ud800"}',
    "rate-1e999k": '{"rate":"1e999k","caller":"+14155550100"}',
    "language-the-bot-cannot-speak": '{"language":"tlh"}',
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_undecodable_metadata_gives_one_warning_and_defaults_and_the_call_is_recorded(
    service: RunningService, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="voiceai.api.fork")
    frames: list[str | bytes] = [BAD_METADATA[case], b"\0" * 6400, b""]
    code, _ = asyncio.run(_closed_with(f"{service.ws}/fork/{case}", frames))

    assert code == 1000
    record = service.wait_for_call(case)
    assert record["sample_rate"] == 16000 and record["direction"] == "inbound"
    assert record["end_reason"] == "hangup"
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "voiceai.api.fork" and r.getMessage().startswith(f"fork {case}:")
    ]
    assert len(warnings) == 1, warnings
    assert "default" in warnings[0]


def test_a_rate_that_is_not_a_number_keeps_the_rest_of_the_metadata(
    service: RunningService,
) -> None:
    frames: list[str | bytes] = [BAD_METADATA["rate-1e999k"], b"\0" * 6400, b""]
    assert asyncio.run(_closed_with(f"{service.ws}/fork/rate-only", frames))[0] == 1000
    record = service.wait_for_call("rate-only")
    assert record["caller"] == "+14155550100" and record["sample_rate"] == 16000


async def _closed_with(url: str, frames: list[str | bytes]) -> tuple[int, str]:
    async with connect(url, subprotocols=[SUBPROTOCOL], max_size=None) as ws:
        try:
            for frame in frames:
                await ws.send(frame)
            await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize(
    ("path", "frames"),
    [
        ("/fork/r1", [json.dumps({"rate": "44k"}), b"\0" * 640]),
        ("/fork/r2?rate=12000", [b"\0" * 640]),
    ],
)
def test_unsupported_sample_rate_closes_with_1003(
    service: RunningService, path: str, frames: list
) -> None:
    code, reason = asyncio.run(_closed_with(service.ws + path, frames))
    assert code == 1003
    assert "sample rate" in reason


def test_frame_over_64_kib_closes_with_1009(service: RunningService) -> None:
    code, _ = asyncio.run(
        _closed_with(f"{service.ws}/fork/big", ['{"rate":"16k"}', b"\0" * (64 * 1024 + 2)])
    )
    assert code == 1009
    assert service.wait_for_call("big")["end_reason"].startswith("protocol error")


def test_zero_length_binary_frame_ends_the_call_and_keeps_the_last_turn(
    service: RunningService, speech: Speech
) -> None:
    pcm = decode_file(speech["booking"], 16000).tobytes()

    async def stream() -> None:
        async with ForkClient(f"{service.ws}/fork/eof", metadata={"rate": "16k"}) as client:
            await client.stream(pcm, ForkStreamOptions(rate=16000, speed=0))
            await client.end_audio()  # no trailing silence: the turn is flushed by the end
            await asyncio.wait_for(client.ws.wait_closed(), 30)

    received = asyncio.run(collect_events(service.ws, "eof", stream))
    assert KEYWORDS["booking"] <= words(" ".join(transcripts(received)))
    assert received[-1]["type"] == "call.ended"


def test_text_frames_after_metadata_become_events(service: RunningService) -> None:
    async def stream() -> None:
        async with ForkClient(f"{service.ws}/fork/txt", metadata={"rate": "8k"}) as client:
            await client.stream(b"\0" * 3200, ForkStreamOptions(rate=8000, speed=0))
            await client.send_text('{"event":"dtmf-ish","n":1}')
            await client.stream(b"\0" * 3200, ForkStreamOptions(rate=8000, speed=0))

    received = asyncio.run(collect_events(service.ws, "txt", stream))
    texts = [e["data"]["text"] for e in received if e["type"] == "fork.text"]
    assert texts == ['{"event":"dtmf-ish","n":1}']


def test_a_broken_call_does_not_disturb_another(service: RunningService, speech: Speech) -> None:
    good = ForkCall(
        service.ws,
        "good",
        CallAudio.from_files([speech["booking"]], 16000),
        ForkStreamOptions(rate=16000, speed=3.0),
    )

    async def scenario() -> list[dict]:
        listening = asyncio.create_task(place(good))
        await asyncio.sleep(0.3)
        for i, frames in enumerate(
            [['{"rate":"11k"}'], ['{"rate":"16k"}', b"\0" * 70000], ["{bad", b"\1"]]
        ):
            await _closed_with(f"{service.ws}/fork/bad{i}", [*frames, b""])
        return await listening

    received = asyncio.run(scenario())
    assert KEYWORDS["booking"] <= words(" ".join(transcripts(received)))
    assert service.get("/healthz").status_code == 200


def test_second_stream_for_an_active_call_is_refused(service: RunningService) -> None:
    async def scenario() -> tuple[int, str]:
        async with ForkClient(f"{service.ws}/fork/dup", metadata={"rate": "8k"}) as first:
            await first.stream(b"\0" * 3200, ForkStreamOptions(rate=8000, speed=0))
            await asyncio.sleep(0.2)
            return await _closed_with(f"{service.ws}/fork/dup", ['{"rate":"8k"}'])

    code, reason = asyncio.run(scenario())
    assert code == 1008
    assert "already" in reason
