"""Call records on SQLite and on a real PostgreSQL server: migrations, what the events write
(turns, tool calls, messages), and what happens while the database cannot be written."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    text,
)
from sqlalchemy.engine import make_url

from tests.conftest import PostgresServer, RunningService
from voiceai.events import (
    EVENT_TYPES,
    BotSaid,
    CallDialing,
    CallEnded,
    CallError,
    CallHangup,
    CallStarted,
    EventBus,
    MessageTaken,
    ToolCalled,
    TranscriptFinal,
    TtsAudio,
)
from voiceai.store import RECORDED, Base, CallStore, Recorder

HEAD = "0004"


def said(call_id: str, words: str, **fields: Any) -> TranscriptFinal:
    return TranscriptFinal(call_id=call_id, text=words, start_ms=0, end_ms=500, **fields)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 15
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


def instant(iso: str) -> datetime:
    """A record's time; SQLite gives it back without its offset (UTC, as written)."""
    parsed = datetime.fromisoformat(iso)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def schema_differences(url: str) -> list[Any]:
    """How the database's tables differ from the models' (empty: the same)."""
    engine = create_engine(url)
    try:
        with engine.connect() as db:
            return compare_metadata(MigrationContext.configure(db), Base.metadata)
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as db:
            return MigrationContext.configure(db).get_current_revision()
    finally:
        engine.dispose()


# -- the schemas of the releases before migrations, as their create_all made them -------------


def first_release(*, later_columns: bool = False) -> MetaData:
    """The tables of the first release (commit 863498a); `later_columns`: of the last release
    before migrations (commit 51188f1), with five more columns and two more indexes."""
    metadata = MetaData()
    calls = [
        Column("id", String(128), primary_key=True),
        Column("status", String(16), nullable=False, index=later_columns),
        Column("direction", String(16), nullable=False),
        Column("caller", String(128)),
        Column("callee", String(128)),
        Column("language", String(16)),
        Column("sample_rate", Integer),
        Column("meta", JSON, nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=False, index=later_columns),
        Column("ended_at", DateTime(timezone=True)),
        Column("end_reason", String(64)),
    ]
    if later_columns:
        calls += [
            Column("hangup_cause", String(64)),
            Column("transferred_to", String(64)),
            Column("errors", JSON, nullable=False),
            Column("engines", JSON, nullable=False),
            Column("recording", String(512)),
        ]
    Table("calls", metadata, *calls)
    Table(
        "turns",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("call_id", ForeignKey("calls.id", ondelete="CASCADE"), nullable=False, index=True),
        Column("speaker", String(16), nullable=False),
        Column("text", Text, nullable=False),
        Column("language", String(16)),
        Column("start_ms", Integer),
        Column("end_ms", Integer),
        Column("timings", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    return metadata


def make_first_release(engine: Engine) -> None:
    first_release().create_all(engine)


def make_first_release_upgraded_at_start(engine: Engine) -> None:
    """The first release's database after later releases started on it: they added each
    missing column, nullable, and no index (the old _add_missing_columns)."""
    first_release().create_all(engine)
    with engine.begin() as db:
        for column in ("hangup_cause", "transferred_to", "errors", "engines", "recording"):
            kind = (
                first_release(later_columns=True)
                .tables["calls"]
                .c[column]
                .type.compile(dialect=engine.dialect)
            )
            db.execute(text(f'ALTER TABLE calls ADD COLUMN "{column}" {kind}'))


def make_last_release(engine: Engine) -> None:
    first_release(later_columns=True).create_all(engine)


OLD_SCHEMAS = {
    "first-release": make_first_release,
    "first-release-upgraded-at-start": make_first_release_upgraded_at_start,
    "last-release": make_last_release,
}


# -- migrations -------------------------------------------------------------------------------


def test_a_new_database_is_migrated_to_the_models_schema(database_url: str) -> None:
    asyncio.run(CallStore(database_url).aclose())
    assert revision(database_url) == HEAD
    assert schema_differences(database_url) == []
    asyncio.run(CallStore(database_url).aclose())  # a restart changes nothing
    assert revision(database_url) == HEAD


def test_replicas_starting_together_on_a_new_postgresql_all_start(
    postgres: PostgresServer,
) -> None:
    """Each replica migrates at start: on one new database at once, one migrates while the
    others wait for it, and none fails on the tables the first is creating."""
    url = postgres.url(postgres.new_database())
    # Each process imports, says so, and migrates when told: all at the same moment.
    start = "import asyncio, sys; from voiceai.store import CallStore; print(flush=True); "
    start += "sys.stdin.readline(); asyncio.run(CallStore(sys.argv[1]).aclose())"
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", start, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None and replica.stdout.readline() == "\n"
        for replica in replicas:
            assert replica.stdin is not None
            replica.stdin.write("go\n")
            replica.stdin.flush()
        failures = [r.communicate(timeout=60)[1] for r in replicas if r.wait(timeout=60) != 0]
    finally:
        for replica in replicas:
            replica.kill()
    assert failures == []
    assert revision(url) == HEAD


@pytest.mark.parametrize("old_schema", list(OLD_SCHEMAS))
def test_a_database_made_before_migrations_is_upgraded_keeping_its_records(
    database_url: str, old_schema: str
) -> None:
    engine = create_engine(database_url)
    OLD_SCHEMAS[old_schema](engine)
    latest = old_schema == "last-release"
    old = first_release(later_columns=latest)
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    # What that release wrote: the later columns only where it had them (else NULL).
    later = {"errors": [], "engines": {"stt": "whisper"}, "hangup_cause": "NORMAL_CLEARING"}
    with engine.begin() as db:
        db.execute(
            old.tables["calls"].insert(),
            {
                "id": "old",
                "status": "ended",
                "direction": "inbound",
                "caller": "+15550101",
                "meta": {"tenant": "acme"},
                "started_at": started,
                "ended_at": started + timedelta(minutes=2),
                "end_reason": "hangup",
                **(later if latest else {}),
            },
        )
        db.execute(
            old.tables["turns"].insert(),
            {
                "call_id": "old",
                "speaker": "caller",
                "text": "hello",
                "timings": {"stt_ms": 90},
                "created_at": started,
            },
        )
    engine.dispose()

    async def scenario() -> tuple[dict | None, dict | None]:
        store = CallStore(database_url)
        await store.apply(CallStarted(call_id="new", caller="+15550102"))
        await store.apply(CallError(call_id="new", kind="tts", message="slow"))
        records = await store.get_call("old"), await store.get_call("new")
        await store.aclose()
        return records

    kept, new = asyncio.run(scenario())
    assert revision(database_url) == HEAD
    assert schema_differences(database_url) == []
    assert kept is not None
    assert (kept["caller"], kept["status"], kept["end_reason"]) == ("+15550101", "ended", "hangup")
    assert kept["metadata"] == {"tenant": "acme"}
    assert instant(kept["started_at"]) == started
    if latest:
        assert (kept["engines"], kept["hangup_cause"]) == ({"stt": "whisper"}, "NORMAL_CLEARING")
    else:  # filled in, as a new record has them
        assert (kept["errors"], kept["engines"], kept["hangup_cause"]) == ([], {}, None)
    assert [(t["text"], t["timings"]) for t in kept["turns"]] == [("hello", {"stt_ms": 90})]
    assert new is not None and [e["kind"] for e in new["errors"]] == ["tts"]


# -- what the events write ----------------------------------------------------------------------


def test_the_call_record_reads_the_typed_events(database_url: str) -> None:
    """The store consumes the models: engines from call.started, merged with the TTS engines
    that spoke; a turn's fields; an event for a call never recorded changes nothing."""
    assert set(RECORDED) <= set(EVENT_TYPES)

    async def scenario() -> tuple[dict | None, dict | None]:
        store = CallStore(database_url)
        for event in (
            CallDialing(call_id="c1", to="+15550102"),
            CallStarted(
                call_id="c1",
                caller="+15550101",
                engines={"stt": "whisper", "llm": "ollama", "tts": "edge"},
                metadata={"tenant": "acme"},
            ),
            TtsAudio(call_id="c1", engine="edge", synth_ms=300, audio_s=1.0),
            TtsAudio(call_id="c1", engine="piper", fallback=True, synth_ms=90, audio_s=1.0),
            TtsAudio(call_id="c1", engine="edge", synth_ms=280, audio_s=1.0),
            TranscriptFinal(call_id="c1", text="hello", start_ms=100, end_ms=900, stt_ms=120),
            BotSaid(call_id="c1", text="Hi", interrupted=True, timings={"first_audio": 700}),
            CallError(call_id="c1", kind="tts", message="edge timed out"),
            CallHangup(call_id="c1", cause="NORMAL_CLEARING"),
            CallEnded(call_id="c1", reason="hangup", turns=1),
            CallHangup(call_id="never-seen", cause="NORMAL_CLEARING"),
            said("never-seen", "a turn of a call never recorded"),
        ):
            await store.apply(event)
        record, unseen = await store.get_call("c1"), await store.get_call("never-seen")
        await store.aclose()
        return record, unseen

    record, unseen = asyncio.run(scenario())
    assert unseen is None
    assert record is not None
    assert record["engines"] == {"stt": "whisper", "llm": "ollama", "tts": ["edge", "piper"]}
    assert (record["status"], record["direction"], record["callee"]) == (
        "ended",
        "outbound",
        "+15550102",
    )
    assert (record["end_reason"], record["hangup_cause"]) == ("hangup", "NORMAL_CLEARING")
    assert record["metadata"] == {"tenant": "acme"}
    assert [e["kind"] for e in record["errors"]] == ["tts"]
    caller, bot = record["turns"]
    assert (caller["speaker"], caller["text"], caller["start_ms"], caller["end_ms"]) == (
        "caller",
        "hello",
        100,
        900,
    )
    assert caller["timings"] == {"stt_ms": 120, "backchannel": False}
    assert bot["timings"] == {"first_audio": 700, "interrupted": True}


def message(call_id: str, name: str, text: str, **fields: Any) -> MessageTaken:
    return MessageTaken(
        call_id=call_id, name=name, callback_number="5550100", message=text, **fields
    )


def test_tool_calls_and_messages_are_kept_in_the_call_record_and_listed_newest_first(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """tool.called and message.taken land in their call's record, in order; /api/messages'
    listing is newest first, pages, and filters by `since`; a message for a call not recorded,
    or one that ended, is not stored and the log says so without the caller's words."""
    t0 = time.time() - 600

    async def scenario() -> tuple[Any, ...]:
        store = CallStore(database_url)
        for event in (
            CallStarted(call_id="c1", caller="+15550101", at=t0),
            said("c1", "where is my order", at=t0 + 1),
            ToolCalled(
                call_id="c1",
                name="order_status",
                arguments={"order_number": "123", "detail": {"items": [1, 2]}},
                result="shipped",
                ok=True,
                duration_ms=420,
                at=t0 + 2,
            ),
            ToolCalled(
                call_id="c1",
                name="order_status",
                arguments={},
                result="timed out after 3 s",
                ok=False,
                duration_ms=3000,
                at=t0 + 3,
            ),
            message("c1", "Ann", "call me\x00back", at=t0 + 4),
            CallStarted(call_id="c2", caller="+15550102", at=t0 + 5),
            message("c2", "Bob", "second", at=t0 + 10),
            message("c2", "Bob", "third", at=t0 + 20),
            CallEnded(call_id="c1", reason="hangup", at=t0 + 30),
            message("c1", "Ann", "after the end, secret words", at=t0 + 31),
            message("never-seen", "Eve", "secret words", at=t0 + 32),
            ToolCalled(
                call_id="never-seen", name="x", arguments={}, result="", ok=True, duration_ms=1
            ),
        ):
            await store.apply(event)
        record, other = await store.get_call("c1"), await store.get_call("c2")
        listed = await store.list_messages(None, 50, 0)
        page = await store.list_messages(None, 1, 1)
        since = await store.list_messages(datetime.fromtimestamp(t0 + 10, UTC), 50, 0)
        await store.aclose()
        return record, other, listed, page, since

    record, other, (listed, total), (page, _), (since, since_total) = asyncio.run(scenario())
    assert record is not None and other is not None
    first, failed = record["tool_calls"]
    assert (first["name"], first["result"], first["ok"], first["duration_ms"]) == (
        "order_status",
        "shipped",
        True,
        420,
    )
    assert first["arguments"] == {"order_number": "123", "detail": {"items": [1, 2]}}
    assert instant(first["at"]).timestamp() == pytest.approx(t0 + 2)
    assert (failed["ok"], failed["result"]) == (False, "timed out after 3 s")
    (taken,) = record["messages"]
    assert (taken["name"], taken["callback_number"], taken["message"]) == (
        "Ann",
        "5550100",
        "call me\ufffdback",  # PostgreSQL refuses a NUL in text
    )
    assert taken["call_id"] == "c1" and other["tool_calls"] == []
    assert [m["message"] for m in other["messages"]] == ["second", "third"]
    assert total == 3
    assert [(m["message"], m["call_id"], m["caller"]) for m in listed] == [
        ("third", "c2", "+15550102"),
        ("second", "c2", "+15550102"),
        ("call me\ufffdback", "c1", "+15550101"),
    ]
    assert [m["message"] for m in page] == ["second"]
    assert since_total == 2 and [m["message"] for m in since] == ["third", "second"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "voiceai.store"]
    assert any("call c1: a message was taken for a call that had ended" in w for w in warnings)
    assert any(
        "call never-seen: a message was taken for a call that was never" in w for w in warnings
    )
    assert not any("secret" in w for w in warnings)


def test_text_any_backend_refuses_is_recorded_cleaned(database_url: str) -> None:
    """PostgreSQL refuses a NUL in text and a string longer than its column, where SQLite
    keeps both: a caller's odd metadata or a long failure reason must not lose the record."""

    async def scenario() -> dict | None:
        store = CallStore(database_url)
        await store.apply(CallDialing(call_id="c1", to="+15550102"))
        await store.apply(CallStarted(call_id="c1", caller="+1555\x000101", language="en" * 20))
        await store.apply(said("c1", "one\x00two"))
        await store.apply(CallEnded(call_id="c1", reason="originate failed: " + "x" * 200))
        record = await store.get_call("c1")
        await store.aclose()
        return record

    record = asyncio.run(scenario())
    assert record is not None and record["status"] == "ended"
    assert record["caller"] == "+1555\ufffd0101"
    assert record["language"] == "en" * 8  # its column holds 16 characters
    assert record["end_reason"] == ("originate failed: " + "x" * 200)[:64]
    assert [t["text"] for t in record["turns"]] == ["one\ufffdtwo"]


def test_reusing_an_ended_calls_id_keeps_its_record(database_url: str) -> None:
    """A second call with the id of one that ended (a replayed fork, a dial with a used id)
    changes neither its caller, start, end nor turns."""
    first_start = time.time() - 60

    async def scenario() -> dict | None:
        store = CallStore(database_url)
        for event in (
            CallStarted(call_id="c1", caller="+15550101", at=first_start),
            said("c1", "first call"),
            CallEnded(call_id="c1", reason="hangup", at=first_start + 30),
            CallStarted(call_id="c1", caller="+15550199", metadata={"x": "y"}),
            said("c1", "second call"),
            BotSaid(call_id="c1", text="a reply in the second call"),
            CallError(call_id="c1", kind="llm", message="second call's error"),
            CallEnded(call_id="c1", reason="protocol error: forged"),
            CallDialing(call_id="c1", to="+15550100"),
        ):
            await store.apply(event)
        record = await store.get_call("c1")
        await store.aclose()
        return record

    record = asyncio.run(scenario())
    assert record is not None
    assert (record["caller"], record["status"], record["metadata"]) == ("+15550101", "ended", {})
    assert instant(record["started_at"]).timestamp() == pytest.approx(first_start)
    ended = instant(record["ended_at"]).timestamp()
    assert ended == pytest.approx(first_start + 30)
    assert (record["end_reason"], record["errors"]) == ("hangup", [])
    assert [t["text"] for t in record["turns"]] == ["first call"]


def test_old_records_are_pruned_and_the_rest_survive_restarts(database_url: str) -> None:
    long_ago = time.time() - 100 * 86400

    async def scenario() -> tuple[int, dict | None, dict | None, dict | None, int]:
        store = CallStore(database_url)
        for event in (
            CallStarted(call_id="ancient", caller="+1", at=long_ago),
            said("ancient", "long ago", at=long_ago),
            message("ancient", "Ann", "long ago", at=long_ago + 1),
            ToolCalled(
                call_id="ancient",
                name="order_status",
                arguments={},
                result="shipped",
                ok=True,
                duration_ms=5,
                at=long_ago + 2,
            ),
            CallEnded(call_id="ancient", reason="hangup", at=long_ago + 60),
            CallStarted(call_id="ancient-active", caller="+2", at=long_ago),
            CallStarted(call_id="fresh", caller="+1555"),
        ):
            await store.apply(event)
        pruned = await store.prune(90)
        await store.aclose()
        reopened = CallStore(database_url)  # a restart
        records = [await reopened.get_call(i) for i in ("fresh", "ancient", "ancient-active")]
        _, messages = await reopened.list_messages(None, 50, 0)
        await reopened.aclose()
        return pruned, *records, messages

    pruned, fresh, ancient, active, messages = asyncio.run(scenario())
    assert pruned == 1 and ancient is None
    assert messages == 0  # a pruned call's messages (and tool calls) go with it
    assert active is not None  # a call still in progress is never pruned
    assert fresh is not None and fresh["caller"] == "+1555" and fresh["errors"] == []


# -- while the database cannot be written ------------------------------------------------------


class Outage:
    """Makes a test database refuse writes, then take them again, as a real one would.

    SQLite: another connection holds the write lock (the store's URL waits 0.1 s for it).
    PostgreSQL: the database turns read-only (as a replica a failover left behind) and its
    sessions are cut, so the store's next connection gets the new default.
    """

    def __init__(self, database_url: str, postgres: PostgresServer | None) -> None:
        parsed = make_url(database_url)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        self.url = database_url + "?timeout=0.1" if self.sqlite else database_url
        self._path = parsed.database
        self._server = postgres
        self._lock: sqlite3.Connection | None = None

    def refuse(self) -> None:
        if self.sqlite:
            self._lock = sqlite3.connect(self._path, isolation_level=None)
            self._lock.execute("BEGIN IMMEDIATE")
        else:
            self._set_read_only("on")

    def allow(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None
        elif not self.sqlite:
            self._set_read_only("off")

    def _set_read_only(self, value: str) -> None:
        assert self._server is not None and self._path is not None
        name = self._path
        self._server.sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}')
        self._server.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def outage(database_url: str, request: pytest.FixtureRequest) -> Iterator[Outage]:
    server = None if database_url.startswith("sqlite") else request.getfixturevalue("postgres")
    made = Outage(database_url, server)
    yield made
    made.allow()


def store_errors(caplog: pytest.LogCaptureFixture, call_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "voiceai.store" and r.levelno >= logging.ERROR and call_id in r.getMessage()
    ]


async def recording(store: CallStore, bus: EventBus, **options: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(Recorder(store, **{"retry_s": 0.05, **options}).run(bus))
    await asyncio.sleep(0)  # subscribed before the first event is published
    return task


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_events_held_while_the_database_is_unwritable_are_written_once_it_is_again(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[dict | None, list[Any]]:
        store = CallStore(outage.url)
        bus = EventBus()
        task = await recording(store, bus)
        bus.publish(CallStarted(call_id="c1", caller="+15550101"))
        bus.publish(said("c1", "before"))

        async def turns(n: int) -> bool:
            record = await store.get_call("c1")
            return record is not None and len(record["turns"]) == n

        await eventually(lambda: turns(1), "the first turn written")
        outage.refuse()
        bus.publish(said("c1", "during"))
        bus.publish(
            ToolCalled(
                call_id="c1", name="lookup", arguments={}, result="ok", ok=True, duration_ms=9
            )
        )
        bus.publish(BotSaid(call_id="c1", text="a reply"))
        bus.publish(message("c1", "Ann", "please call back"))
        bus.publish(CallEnded(call_id="c1", reason="hangup"))

        async def held() -> bool:
            return store.health.held_events == 5 and not store.healthy

        await eventually(held, "the call's events held")
        while_out = [store.healthy, store.last_error, store.health.write_failures > 0]
        outage.allow()

        async def written() -> bool:
            return await turns(3) and store.healthy and store.health.held_events == 0

        await eventually(written, "the held events written")
        record = await store.get_call("c1")
        await stopped(task)
        await store.aclose()
        return record, [*while_out, store.health.lost_events, store.last_error]

    record, (healthy, error, failed, lost, error_after) = asyncio.run(scenario())
    assert not healthy and failed and error and ("locked" in error or "read-only" in error)
    assert "[SQL" not in error and "parameters" not in error  # the driver's words only
    assert record is not None and record["status"] == "ended"
    assert [t["text"] for t in record["turns"]] == ["before", "during", "a reply"]
    assert [t["name"] for t in record["tool_calls"]] == ["lookup"]
    assert [m["message"] for m in record["messages"]] == ["please call back"]
    assert (lost, error_after) == (0, None)
    assert store_errors(caplog, "c1") == []  # nothing lost, nothing to report per call


def test_events_are_still_taken_while_each_retry_takes_longer_than_the_retry_interval(
    outage: Outage,
) -> None:
    """A database slow to fail (SQLite here waits 0.1 s for its lock; a PostgreSQL server that
    does not answer waits for the connect timeout) must not keep events in the bus's queue,
    which drops the oldest when full: they are taken and held between retries."""

    async def scenario() -> tuple[int, int]:
        store = CallStore(outage.url)
        outage.refuse()
        bus = EventBus()
        task = await recording(store, bus, retry_s=0.01)
        bus.publish(CallStarted(call_id="c1", caller="+15550101"))
        for n in range(20):
            await asyncio.sleep(0.02)
            bus.publish(said("c1", f"turn {n}"))

        async def held() -> bool:
            return store.health.held_events == 21

        await eventually(held, "every event held", timeout_s=5)
        await stopped(task)
        await store.aclose()
        return store.health.held_events, store.health.lost_events

    assert asyncio.run(scenario()) == (0, 21)  # given up on at shutdown, and said so


def test_a_call_that_ends_while_unwritable_is_reported_once_with_what_was_lost(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[dict | None, int]:
        store = CallStore(outage.url)
        outage.refuse()
        bus = EventBus()
        task = await recording(store, bus, keep_ended_s=0.3)
        bus.publish(CallStarted(call_id="c1", caller="+15550101"))
        bus.publish(said("c1", "one"))
        bus.publish(said("c1", "two"))
        bus.publish(CallEnded(call_id="c1", reason="hangup"))

        async def given_up() -> bool:
            return store.health.lost_events == 4 and store.health.held_events == 0

        await eventually(given_up, "the ended call given up on")
        outage.allow()

        async def healthy() -> bool:
            return store.healthy

        await eventually(healthy, "the store healthy again, with nothing to write")
        record = await store.get_call("c1")
        await stopped(task)
        await store.aclose()
        return record, store.health.lost_events

    record, lost = asyncio.run(scenario())
    assert record is None and lost == 4
    (line,) = store_errors(caplog, "c1")
    assert "4 events not recorded (call.started, 2 transcript.final, call.ended)" in line
    assert "ended 0.3 s ago" in line


def test_a_call_holding_too_many_events_is_given_up_in_one_line_and_others_still_recorded(
    outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[dict | None, dict | None, int]:
        store = CallStore(outage.url)
        outage.refuse()
        bus = EventBus()
        task = await recording(store, bus, hold_events=3)
        bus.publish(CallStarted(call_id="long", caller="+15550101"))
        for n in range(5):
            bus.publish(said("long", f"turn {n}"))
        bus.publish(CallEnded(call_id="long", reason="hangup"))
        bus.publish(CallStarted(call_id="short", caller="+15550102"))
        bus.publish(CallEnded(call_id="short", reason="hangup"))

        async def held() -> bool:
            return store.health.held_events == 2 and store.health.lost_events == 7

        await eventually(held, "the long call given up, the short one held")
        outage.allow()

        async def written() -> bool:
            return await store.get_call("short") is not None

        await eventually(written, "the short call written")
        records = await store.get_call("long"), await store.get_call("short")
        await stopped(task)
        await store.aclose()
        return *records, store.health.lost_events

    long, short, lost = asyncio.run(scenario())
    assert long is None and lost == 7  # 4 held when given up on, then 3 more dropped
    assert short is not None and short["status"] == "ended"
    (line,) = store_errors(caplog, "long")
    assert "4 events not recorded (call.started, 3 transcript.final)" in line
    assert "nor will the rest of the call be" in line


def test_an_event_that_cannot_be_written_is_skipped_not_held(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One event whose data cannot be stored (here metadata JSON cannot hold) is logged and
    skipped: it must not hold back other calls, nor mark a working database unhealthy."""

    async def scenario() -> tuple[dict | None, dict | None, bool, int]:
        store = CallStore(database_url)
        bus = EventBus()
        task = await recording(store, bus)
        bus.publish(CallStarted(call_id="c1", caller="+15550101"))
        bus.publish(CallStarted(call_id="c2", caller="+15550102", metadata={"odd": {1, 2}}))
        bus.publish(said("c1", "after"))
        bus.publish(CallEnded(call_id="c1", reason="hangup"))

        async def ended() -> bool:
            record = await store.get_call("c1")
            return record is not None and record["status"] == "ended"

        await eventually(ended, "the other call written")
        records = await store.get_call("c1"), await store.get_call("c2")
        await stopped(task)
        await store.aclose()
        return *records, store.healthy, store.health.held_events

    record, odd, healthy, held = asyncio.run(scenario())
    assert record is not None and [t["text"] for t in record["turns"]] == ["after"]
    assert odd is None and healthy and held == 0
    assert any("could not record call.started for call c2" in m for m in caplog.messages)


# -- what the service tells -------------------------------------------------------------------


def metric(service: RunningService, name: str) -> float:
    body = service.get("/metrics").text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


def test_a_read_only_database_makes_readyz_503_and_shows_in_metrics(
    service_factory: Any, tmp_path: Path
) -> None:
    path = tmp_path / "calls.db"
    asyncio.run(CallStore(f"sqlite:///{path}").aclose())  # made and migrated, then read-only
    service = service_factory(
        database_url=f"sqlite:///file:{path}?mode=ro&uri=true", public_metrics=True
    )
    ready = service.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["database"] == "cannot write"
    assert "readonly database" in ready.json()["database_error"]
    assert metric(service, "voiceai_store_healthy") == 0
    assert metric(service, "voiceai_store_write_failures_total") >= 1
    assert metric(service, "voiceai_store_events_held") == 0
    assert metric(service, "voiceai_store_events_lost_total") == 0


def test_a_writable_database_is_ready_and_healthy_in_metrics(service_factory: Any) -> None:
    service = service_factory(public_metrics=True)
    ready = service.get("/readyz")
    assert ready.status_code == 200
    assert (ready.json()["database"], ready.json()["database_error"]) == ("ok", None)
    assert metric(service, "voiceai_store_healthy") == 1
    assert metric(service, "voiceai_store_write_failures_total") == 0
