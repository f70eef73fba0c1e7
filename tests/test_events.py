"""The typed events: their wire format, their generated reference, the bus, a consumer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from voiceai import events
from voiceai.events import (
    EVENT_TYPES,
    BargeIn,
    BaseEvent,
    BotSaid,
    CallDialing,
    CallEnded,
    CallError,
    CallHangup,
    CallMuted,
    CallRecording,
    CallStarted,
    CallState,
    CallTransferred,
    Dtmf,
    EslState,
    EventBus,
    ForkText,
    MessageTaken,
    ReplyDelta,
    Snapshot,
    SpeechStarted,
    ToolCalled,
    TranscriptFinal,
    TranscriptPartial,
    TtsAudio,
    TurnLatency,
    parse_event,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "events.md"

# One event of every type, with its optional fields set too, so each is carried over the wire.
SAMPLES: dict[type[BaseEvent], BaseEvent] = {
    e.__class__: e
    for e in (
        CallDialing(call_id="c1", to="+15550100"),
        CallStarted(
            call_id="c1",
            caller="+15550101",
            caller_name="Ada",
            callee="+15550102",
            direction="outbound",
            language="en",
            sample_rate=8000,
            channels=1,
            metadata={"tenant": "acme", "tags": ["a", 1]},
            state="greeting",
            engines={"stt": "whisper", "llm": "ollama", "tts": "edge"},
        ),
        CallState(call_id="c1", state="speaking", previous="thinking", trigger="first_audio"),
        SpeechStarted(call_id="c1", at_ms=1200),
        TranscriptPartial(call_id="c1", text="I would like", start_ms=1200),
        TranscriptFinal(
            call_id="c1",
            text="I would like to book",
            language="en",
            start_ms=1200,
            end_ms=3100,
            stt_ms=240,
            audio_s=1.9,
            end_reason="silence",
            backchannel=True,
        ),
        ForkText(call_id="c1", text='{"event": "x"}'),
        CallError(call_id="c1", kind="llm", message="no first token in 8 s"),
        CallHangup(call_id="c1", cause="NORMAL_CLEARING"),
        CallTransferred(call_id="c1", to="1001", reason="caller pressed 0"),
        ToolCalled(
            call_id="c1",
            name="order_status",
            arguments={"order_number": "12345", "rush": True},
            result='{"status": "shipped"}',
            ok=True,
            duration_ms=420,
        ),
        MessageTaken(
            call_id="c1", name="Ann Lee", callback_number="+15550123", message="Call me back"
        ),
        ReplyDelta(call_id="c1", text="Sure, "),
        BotSaid(
            call_id="c1",
            text="Sure, when",
            reply="Sure, when would you like to come in?",
            interrupted=True,
            timings={"first_audio": 900, "playback_started": 1010},
        ),
        BargeIn(call_id="c1", at_ms=5200, state="speaking"),
        TurnLatency(
            call_id="c1",
            end_of_turn=600,
            transcript=-20,
            llm_first_token=700,
            first_sentence=800,
            first_audio=900,
            play_sent=950,
            playback_started=1010,
        ),
        Dtmf(call_id="c1", digit="0"),
        TtsAudio(call_id="c1", engine="piper", fallback=True, synth_ms=120, audio_s=2.5),
        CallMuted(call_id="c1", muted=True),
        CallRecording(call_id="c1", path="/recordings/c1.wav"),
        CallEnded(
            call_id="c1",
            reason="hangup",
            turns=3,
            hangup_cause="NORMAL_CLEARING",
            transferred=True,
        ),
        EslState(state="connected"),
        Snapshot(calls=[{"id": "c1", "turns": [{"speaker": "caller", "text": "hi"}]}]),
    )
}


def test_the_reference_document_is_generated_from_the_models() -> None:
    """Regenerate with `python -m voiceai.events > docs/events.md` when this fails."""
    assert DOCS.read_text(encoding="utf-8") == events.reference_markdown()


def test_the_reference_documents_every_type_and_field() -> None:
    text = events.reference_markdown()
    for model in EVENT_TYPES:
        section = text.split(f"## `{events.type_of(model)}`\n", 1)[1].split("\n## ", 1)[0]
        for name in model.model_fields.keys() - BaseEvent.ENVELOPE:
            assert f"| `{name}` |" in section, (model.__name__, name)


def test_every_type_round_trips_through_the_wire() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)  # a new model needs a sample here
    assert len({events.type_of(m) for m in EVENT_TYPES}) == len(EVENT_TYPES)
    for model, event in SAMPLES.items():
        wire = event.wire()
        assert set(wire) == {"type", "call_id", "at", "data"}
        assert wire["type"] == events.type_of(model)
        assert set(wire["data"]) == model.model_fields.keys() - BaseEvent.ENVELOPE
        assert parse_event(wire) == event
        # And through the JSON text /ws/live sends.
        back = parse_event(json.loads(event.wire_json()))
        assert type(back) is model and back == event


def test_defaults_fill_what_the_wire_leaves_out() -> None:
    event = parse_event({"type": events.CALL_ENDED, "call_id": "c9", "data": {"reason": "hangup"}})
    assert isinstance(event, CallEnded)
    assert (event.call_id, event.turns, event.transferred, event.hangup_cause) == (
        "c9",
        0,
        False,
        None,
    )
    assert event.at > 0
    assert TurnLatency(end_of_turn=600, first_audio=900).stages == {
        "end_of_turn": 600,
        "first_audio": 900,
    }


def test_parse_event_rejects_what_no_model_describes() -> None:
    with pytest.raises(ValidationError):
        parse_event({"type": "call.exploded", "call_id": "c1", "data": {}})
    with pytest.raises(ValidationError):
        parse_event({"call_id": "c1", "data": {"text": "no type"}})
    with pytest.raises(ValidationError):  # a field of the wrong type
        parse_event(
            {
                "type": events.TTS_AUDIO,
                "call_id": "c1",
                "data": {"engine": "edge", "synth_ms": "fast", "audio_s": 1.0},
            }
        )
    with pytest.raises(ValidationError):  # a required field missing
        parse_event({"type": events.CALL_DIALING, "call_id": "c1", "data": {}})
    with pytest.raises(ValidationError):  # a field no model has (a typo must not pass)
        parse_event({"type": events.DTMF, "call_id": "c1", "data": {"digit": "1", "digits": "1"}})
    with pytest.raises(ValidationError):
        parse_event({"type": events.ESL_STATE, "data": {"state": "up"}})


def test_a_full_subscription_drops_its_oldest_event() -> None:
    bus = EventBus()
    with bus.subscribe(maxsize=3) as sub:
        for i in range(5):
            bus.publish(SpeechStarted(call_id="c1", at_ms=i))
        kept = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert [e.at_ms for e in kept if isinstance(e, SpeechStarted)] == [2, 3, 4]
    assert sub.dropped == 2
    bus.publish(SpeechStarted(call_id="c1", at_ms=5))  # closed: it gets nothing more
    assert sub.queue.empty()


def test_a_subscription_for_one_call_gets_only_that_call() -> None:
    bus = EventBus()
    with bus.subscribe(call_id="a") as only_a, bus.subscribe() as everything:
        published = [
            CallStarted(call_id="a"),
            CallStarted(call_id="b"),
            Dtmf(call_id="b", digit="5"),
            EslState(state="disconnected"),  # service-wide: not about call a
            Dtmf(call_id="a", digit="1"),
        ]
        for event in published:
            assert bus.publish(event) is event
        got_a = [only_a.queue.get_nowait() for _ in range(only_a.queue.qsize())]
        got_all = [everything.queue.get_nowait() for _ in range(everything.queue.qsize())]
    assert got_a == [published[0], published[4]]
    assert got_all == published


def test_an_event_is_serialized_once_however_many_viewers_get_it() -> None:
    event = events.TranscriptFinal(call_id="a", text="hello", start_ms=0, end_ms=500)
    assert event.wire_json() is event.wire_json()
    assert json.loads(event.wire_json())["data"]["text"] == "hello"
