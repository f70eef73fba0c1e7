"""Call records: a call, its turns, its tool calls and the messages taken, written as they
happen (SQLAlchemy; SQLite by default).

The schema is migrated by Alembic at start (voiceai/migrations). While the database cannot be
written, each call's events are held and retried; what is given up is said once per call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    case,
    create_engine,
    delete,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from voiceai.events import (
    BaseEvent,
    BotSaid,
    CallDialing,
    CallEnded,
    CallError,
    CallHangup,
    CallRecording,
    CallStarted,
    CallTransferred,
    EventBus,
    MessageTaken,
    Subscription,
    ToolCalled,
    TranscriptFinal,
    TtsAudio,
)

log = logging.getLogger(__name__)
# Alembic tells of its set-up at every start; migrate() says what it changes, in one line.
logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision whose schema the releases before migrations started from (see versions/0002).
BEFORE_MIGRATIONS = "0001"
ENDED = frozenset({"ended", "failed"})
# Holding events while the database cannot be written: how often to try again; how many events
# one call may hold, and how many calls; how long a call that ended waits for the database.
RETRY_S = 2.0
HOLD_EVENTS_PER_CALL = 5000
HOLD_CALLS = 1000
KEEP_ENDED_S = 60.0
# The advisory lock replicas migrating one PostgreSQL database take in turn (any fixed number).
MIGRATION_LOCK = 0x766F6963656169  # "voiceai"
# A PostgreSQL server that does not answer must not stall the store's thread for long.
PG_CONNECT_TIMEOUT_S = 10

T = TypeVar("T")


class Base(DeclarativeBase):
    pass


def _clean(value: str | None, length: int | None) -> str | None:
    """Text as every backend takes it: PostgreSQL refuses a NUL in text and a string longer
    than its column (SQLite keeps both), and a caller's metadata may carry either."""
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    return value[:length] if length else value


class _Str(TypeDecorator[str]):
    """A bounded string column: NULs replaced, cut to the column's length."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return _clean(value, self.impl_instance.length)


class _Text(TypeDecorator[str]):
    """An unbounded text column: NULs replaced."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return _clean(value, None)


class CallRow(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(_Str(16), default="active", index=True)
    direction: Mapped[str] = mapped_column(_Str(16), default="inbound")
    caller: Mapped[str | None] = mapped_column(_Str(128))
    callee: Mapped[str | None] = mapped_column(_Str(128))
    language: Mapped[str | None] = mapped_column(_Str(16))
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(_Str(64))
    hangup_cause: Mapped[str | None] = mapped_column(_Str(64))
    transferred_to: Mapped[str | None] = mapped_column(_Str(64))
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    engines: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    recording: Mapped[str | None] = mapped_column(_Str(512))
    replica: Mapped[str | None] = mapped_column(_Str(64))  # the service replica that served it
    turns: Mapped[list[TurnRow]] = relationship(order_by="TurnRow.id", cascade="all, delete-orphan")
    tool_calls: Mapped[list[ToolCallRow]] = relationship(
        order_by="ToolCallRow.id", cascade="all, delete-orphan"
    )
    messages: Mapped[list[MessageRow]] = relationship(
        order_by="MessageRow.id", cascade="all, delete-orphan"
    )


class TurnRow(Base):
    __tablename__ = "turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    speaker: Mapped[str] = mapped_column(_Str(16))
    text: Mapped[str] = mapped_column(_Text())
    language: Mapped[str | None] = mapped_column(_Str(16))
    start_ms: Mapped[int | None] = mapped_column(Integer)
    end_ms: Mapped[int | None] = mapped_column(Integer)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ToolCallRow(Base):
    """A tool the model used during a reply (tool.called)."""

    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(_Str(128))
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[str] = mapped_column(_Text())
    ok: Mapped[bool] = mapped_column(Boolean)
    duration_ms: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReplicaRow(Base):
    """A service replica's heartbeat (cluster.py): one that stops beating has its calls ended."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class MessageRow(Base):
    """A message for the business, taken by the take_message tool (message.taken)."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    name: Mapped[str] = mapped_column(_Str(256))
    callback_number: Mapped[str] = mapped_column(_Str(64))
    message: Mapped[str] = mapped_column(_Text())


def _at(event: BaseEvent) -> datetime:
    return datetime.fromtimestamp(event.at, UTC)


def _update(row: CallRow, event: BaseEvent) -> None:
    """Applies an event about a call already recorded (the caller skips calls never seen).

    An ended record keeps what it says: only a hang-up cause that came late is added to it.
    """
    if row.status in ENDED:
        if isinstance(event, CallHangup) and row.hangup_cause is None:
            row.hangup_cause = event.cause
        return
    match event:
        case CallEnded():
            row.status = "failed" if row.status == "dialing" else "ended"
            row.ended_at = _at(event)
            row.end_reason = event.reason
            row.hangup_cause = event.hangup_cause or row.hangup_cause
        case CallHangup():
            row.hangup_cause = event.cause
        case CallTransferred():
            row.transferred_to = event.to
        case TtsAudio():
            row.engines = _with_tts(dict(row.engines or {}), event.engine)
        case CallRecording():
            row.recording = event.path
        case CallError():
            error = {"kind": event.kind, "message": event.message, "at": event.at}
            row.errors = [*(row.errors or []), error]


def _with_tts(engines: dict[str, Any], engine: str | None) -> dict[str, Any]:
    """`engines` with `tts` as the list of TTS engines of the call: the one configured when it
    started (call.started's `engines.tts`), then each that spoke a sentence (a fallback too)."""
    have = engines.get("tts") or []
    tts = [have] if isinstance(have, str) else list(have)
    if engine and engine not in tts:
        tts.append(engine)
    return {**engines, "tts": tts} if tts else engines


@dataclass(frozen=True)
class LostCall:
    """A call in progress whose replica was lost, as its record was ended."""

    call_id: str
    replica: str
    turns: int
    switch: str | None  # the FreeSWITCH it is on, as its fork metadata named it


class StoreUnavailable(Exception):
    """The database cannot be written now; the same write may work later."""


@dataclass
class StoreHealth:
    """What /readyz and /metrics tell of the call records."""

    healthy: bool = True  # the last write (or probe) worked
    last_error: str | None = None  # why the last one failed: the driver's message, no SQL
    write_failures: int = 0  # writes and probes that failed, retries included
    held_events: int = 0  # events waiting for the database
    lost_events: int = 0  # events given up on


class CallStore:
    """Blocking SQLAlchemy work runs on one dedicated thread, behind async methods; the
    replicas' heartbeats on another, so a backlog of events never delays one.

    `replica`: the replica whose calls this store records (written in each call's record)."""

    def __init__(self, url: str, *, replica: str | None = None) -> None:
        self.replica = replica
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        is_uri = parsed.query.get("uri") == "true"  # sqlite:///file:...?mode=ro&uri=true
        if backend == "sqlite" and not is_uri and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {}
        if backend == "postgresql":
            # A server restarted or failed over leaves dead pooled connections: test each first.
            options = {
                "pool_pre_ping": True,
                "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S},
            }
        self._engine = create_engine(url, **options)
        migrate(self._engine)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._beats = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heartbeat")
        self.health = StoreHealth()

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    @property
    def last_error(self) -> str | None:
        return self.health.last_error

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def apply(self, event: BaseEvent) -> None:
        """Writes one event. Raises StoreUnavailable when the database cannot be written (the
        event may be tried again), anything else when this event cannot be (it never will)."""
        await self._run(self._writing, self._apply, event)

    async def check(self) -> bool:
        """Whether the database can be written now (a write rolled back); updates `health`."""
        try:
            await self._run(self._writing, self._probe)
        except StoreUnavailable:
            return False
        return True

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        return await self._run(self._get_call, call_id)

    async def list_calls(
        self, status: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        return await self._run(self._list_calls, status, limit, offset)

    async def list_messages(
        self, since: datetime | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Messages taken, newest first; `since`: only those taken at or after it."""
        return await self._run(self._list_messages, since, limit, offset)

    async def prune(self, older_than_days: int) -> int:
        """Delete ended calls that started more than `older_than_days` ago; returns how many."""
        return await self._run(self._prune, older_than_days)

    # -- replicas (PostgreSQL only: times are the server's, so hosts' clocks never matter) ----

    async def heartbeat(self, replica: str) -> float | None:
        """Says `replica` is alive now; returns how many seconds ago it last said so (None:
        never, or its row was removed as lost)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._beats, self._heartbeat, replica)

    async def end_lost_calls(self, me: str, timeout_s: float, reason: str) -> list[LostCall]:
        """Ends the calls still active of every replica but `me` without a heartbeat for
        `timeout_s`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._beats, self._end_lost, me, timeout_s, reason)

    async def end_own_calls(self, me: str, reason: str) -> list[LostCall]:
        """Ends the calls still active of `me`, from before this start (it crashed with them:
        a replica with a fixed id comes back before the others notice it was gone)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._beats, self._end_own, me, reason)

    async def active_calls_elsewhere(self, me: str) -> list[dict[str, Any]]:
        """The calls in progress on other replicas, whole (with their turns)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._beats, self._active_elsewhere, me)

    def _writing(self, write: Callable[..., None], *args: Any) -> None:
        """Runs a write, keeping `health`: a failure of the database (not of this write's data)
        becomes StoreUnavailable, logged once when the store turns unhealthy."""
        try:
            write(*args)
        except (IntegrityError, DataError):
            raise  # this event's data, not the database: writing it again would fail again
        except (DBAPIError, PoolTimeout) as exc:
            error = _describe(exc)
            self.health.write_failures += 1
            if self.health.healthy:
                log.error(
                    "database: call records cannot be written (%s); each call's events are "
                    "held until they can",
                    error,
                )
            self.health.healthy, self.health.last_error = False, error
            raise StoreUnavailable(error) from exc
        if not self.health.healthy:
            log.warning("database: call records can be written again")
        self.health.healthy, self.health.last_error = True, None

    def _probe(self) -> None:
        with self._engine.connect() as db, db.begin() as transaction:
            db.execute(text("UPDATE alembic_version SET version_num = version_num"))
            transaction.rollback()

    def _apply(self, event: BaseEvent) -> None:
        with Session(self._engine) as db, db.begin():
            row = db.get(CallRow, event.call_id)
            match event:
                case CallDialing():
                    if row is None:
                        db.add(
                            CallRow(
                                id=event.call_id,
                                status="dialing",
                                direction="outbound",
                                callee=event.to,
                                meta={},
                                errors=[],
                                engines={},
                                started_at=_at(event),
                                replica=self.replica,
                            )
                        )
                    else:
                        log.warning(
                            "call %s: dialled with the id of a call recorded already: "
                            "its record is kept, the new call is not recorded",
                            event.call_id,
                        )
                case CallStarted() if row is not None and row.status in ENDED:
                    log.warning(
                        "call %s: started with the id of a call that ended: that call's record "
                        "is kept, this one is not recorded",
                        event.call_id,
                    )
                case CallStarted():
                    db.add(_started(row, event, self.replica))
                case TranscriptFinal() if _open(row):
                    db.add(
                        TurnRow(
                            call_id=event.call_id,
                            speaker="caller",
                            text=event.text,
                            language=event.language,
                            start_ms=event.start_ms,
                            end_ms=event.end_ms,
                            timings={"stt_ms": event.stt_ms, "backchannel": event.backchannel},
                            created_at=_at(event),
                        )
                    )
                case BotSaid() if _open(row):
                    db.add(
                        TurnRow(
                            call_id=event.call_id,
                            speaker="bot",
                            text=event.text,
                            language=None,
                            timings={**event.timings, "interrupted": event.interrupted},
                            created_at=_at(event),
                        )
                    )
                case ToolCalled() if _open(row):
                    db.add(
                        ToolCallRow(
                            call_id=event.call_id,
                            name=event.name,
                            arguments=event.arguments,
                            result=event.result,
                            ok=event.ok,
                            duration_ms=event.duration_ms,
                            at=_at(event),
                        )
                    )
                case MessageTaken() if _open(row):
                    db.add(
                        MessageRow(
                            call_id=event.call_id,
                            at=_at(event),
                            name=event.name,
                            callback_number=event.callback_number,
                            message=event.message,
                        )
                    )
                case MessageTaken():
                    # A message someone waits on: its loss is said (not its words: the caller's).
                    log.warning(
                        "call %s: a message was taken for a call %s: it is not stored",
                        event.call_id,
                        "that was never recorded" if row is None else "that had ended",
                    )
                case TranscriptFinal() | BotSaid() | ToolCalled():
                    pass  # a turn of a call never recorded, or of one that ended: not this call's
                case _:
                    if row is not None:
                        _update(row, event)

    def _get_call(self, call_id: str) -> dict[str, Any] | None:
        with Session(self._engine) as db:
            row = db.scalars(select(CallRow).where(CallRow.id == call_id)).one_or_none()
            return None if row is None else _as_record(row)

    def _list_calls(
        self, status: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        with Session(self._engine) as db:
            query = select(CallRow)
            if status is not None:
                query = query.where(CallRow.status == status)
            total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = db.scalars(
                query.order_by(CallRow.started_at.desc()).limit(limit).offset(offset)
            ).all()
            return [_as_record(row, with_turns=False) for row in rows], total

    def _list_messages(
        self, since: datetime | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        with Session(self._engine) as db:
            query = select(MessageRow, CallRow.caller).join(CallRow)
            if since is not None:
                query = query.where(MessageRow.at >= _utc(since))
            total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
            newest_first = query.order_by(MessageRow.at.desc(), MessageRow.id.desc())
            rows = db.execute(newest_first.limit(limit).offset(offset)).all()
            return [{**_as_message(m), "caller": caller} for m, caller in rows], total

    def _heartbeat(self, replica: str) -> float | None:
        with self._engine.begin() as db:
            before = db.scalar(
                select(func.extract("epoch", func.now() - ReplicaRow.seen_at)).where(
                    ReplicaRow.id == replica
                )
            )
            upsert = pg_insert(ReplicaRow).values(id=replica, seen_at=func.now())
            now = {"seen_at": func.now()}
            db.execute(upsert.on_conflict_do_update(index_elements=["id"], set_=now))
        return None if before is None else float(before)

    def _end_lost(self, me: str, timeout_s: float, reason: str) -> list[LostCall]:
        stale = func.now() - timedelta(seconds=timeout_s)
        alive = select(ReplicaRow.id).where(ReplicaRow.seen_at >= stale)
        with self._engine.begin() as db:
            ended = _end_calls(db, reason, CallRow.replica != me, CallRow.replica.not_in(alive))
            db.execute(delete(ReplicaRow).where(ReplicaRow.seen_at < stale))
        return ended

    def _end_own(self, me: str, reason: str) -> list[LostCall]:
        with self._engine.begin() as db:
            return _end_calls(db, reason, CallRow.replica == me)

    def _active_elsewhere(self, me: str) -> list[dict[str, Any]]:
        with Session(self._engine) as db:
            rows = db.scalars(
                select(CallRow).where(CallRow.status == "active", CallRow.replica != me)
            ).all()
            return [_as_record(row) for row in rows]

    def _prune(self, older_than_days: int) -> int:
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        with Session(self._engine) as db, db.begin():
            old = db.scalars(
                select(CallRow).where(CallRow.started_at < cutoff, CallRow.status != "active")
            ).all()
            for row in old:
                db.delete(row)  # its turns, tool calls and messages go with it (cascade)
            return len(old)

    async def aclose(self) -> None:
        self._thread.shutdown(wait=True)
        self._beats.shutdown(wait=True)
        self._engine.dispose()


def _open(row: CallRow | None) -> bool:
    """Whether a call is recorded and has not ended (its turns belong to it)."""
    return row is not None and row.status not in ENDED


def _started(row: CallRow | None, event: CallStarted, replica: str | None) -> CallRow:
    """The record of a call that starts: new, or the one made when we dialled it (perhaps on
    another replica: the one whose fork took it serves it)."""
    dialled = row is not None and row.status == "dialing"
    row = row or CallRow(id=event.call_id, meta={})
    row.status = "active"
    row.replica = replica
    row.direction = "outbound" if dialled else event.direction or "inbound"
    row.engines = _with_tts(dict(event.engines), event.engines.get("tts"))
    row.caller = event.caller
    row.callee = event.callee or row.callee
    row.language = event.language
    row.sample_rate = event.sample_rate
    row.meta = dict(event.metadata)
    row.started_at = row.started_at if dialled else _at(event)
    row.ended_at = None
    row.end_reason = None
    row.hangup_cause = None
    row.errors = []
    return row


def _end_calls(db: Connection, reason: str, *where: Any) -> list[LostCall]:
    """Ends the calls in progress that `where` picks, in one UPDATE … WHERE: replicas that
    notice the same loss at once cannot both end a call (the second finds it ended), so each
    call.ended is published once."""
    ended = db.execute(
        update(CallRow)
        .where(CallRow.status.in_(("active", "dialing")), CallRow.replica.is_not(None), *where)
        .values(
            status=case((CallRow.status == "dialing", "failed"), else_="ended"),
            ended_at=func.now(),
            end_reason=reason,
        )
        .returning(CallRow.id, CallRow.replica, CallRow.meta)
    ).all()
    if not ended:
        return []
    turns = dict(
        db.execute(
            select(TurnRow.call_id, func.count())
            .where(TurnRow.call_id.in_([call_id for call_id, _, _ in ended]))
            .group_by(TurnRow.call_id)
        ).all()
    )
    return [
        LostCall(call_id, replica, turns.get(call_id, 0), _switch_of(meta))
        for call_id, replica, meta in ended
    ]


def _switch_of(meta: Any) -> str | None:
    switch = meta.get("switch") if isinstance(meta, dict) else None
    return switch if isinstance(switch, str) else None


def _describe(exc: Exception) -> str:
    """The driver's own message, first line: no SQL, no parameters (callers' words), no URL."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0][:200]}"


def migrate(engine: Engine) -> None:
    """Brings the schema to the newest revision. A database made before migrations (its tables
    but no alembic_version) is first marked as the first release's, which it started from."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.begin() as db:
        if db.dialect.name == "postgresql":
            # Replicas starting together: one migrates, the others wait here and find it done.
            db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = db
        current = MigrationContext.configure(db).get_current_revision()
        if current is None and inspect(db).has_table("calls"):
            current = BEFORE_MIGRATIONS
            command.stamp(config, current)
            log.info("database: made before migrations, taken as revision %s", current)
        if current != head:
            command.upgrade(config, "head")
            log.info("database: schema migrated from revision %s to %s", current or "none", head)


def _as_record(row: CallRow, *, with_turns: bool = True) -> dict[str, Any]:
    """A call as the API shows it (without its turns in lists)."""
    record: dict[str, Any] = {
        "id": row.id,
        "status": row.status,
        "direction": row.direction,
        "caller": row.caller,
        "callee": row.callee,
        "language": row.language,
        "sample_rate": row.sample_rate,
        "metadata": row.meta,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        "end_reason": row.end_reason,
        "hangup_cause": row.hangup_cause,
        "transferred_to": row.transferred_to,
        "errors": row.errors,
        "engines": row.engines,
        "recording": row.recording,
        "replica": row.replica,
    }
    if with_turns:
        record["turns"] = [
            {
                "speaker": t.speaker,
                "text": t.text,
                "language": t.language,
                "start_ms": t.start_ms,
                "end_ms": t.end_ms,
                "timings": t.timings,
                "at": t.created_at.isoformat(),
            }
            for t in row.turns
        ]
        record["tool_calls"] = [
            {
                "name": t.name,
                "arguments": t.arguments,
                "result": t.result,
                "ok": t.ok,
                "duration_ms": t.duration_ms,
                "at": t.at.isoformat(),
            }
            for t in row.tool_calls
        ]
        record["messages"] = [_as_message(m) for m in row.messages]
    return record


def _as_message(row: MessageRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "call_id": row.call_id,
        "at": row.at.isoformat(),
        "name": row.name,
        "callback_number": row.callback_number,
        "message": row.message,
    }


def _utc(moment: datetime) -> datetime:
    """A time as the records hold it: SQLite compares the text of UTC times (a naive one is UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


RECORDED: tuple[type[BaseEvent], ...] = (
    CallDialing,
    CallStarted,
    TtsAudio,
    CallRecording,
    TranscriptFinal,
    BotSaid,
    CallEnded,
    CallHangup,
    CallTransferred,
    CallError,
    ToolCalled,
    MessageTaken,
)


async def record_events(bus: EventBus, store: CallStore) -> None:
    """Writes every event that changes a call record, in order, for the app's lifetime."""
    await Recorder(store).run(bus)


@dataclass
class _Held:
    """One call's events that wait for the database, in order."""

    events: collections.deque[BaseEvent] = field(default_factory=collections.deque)
    ended_at: float | None = None  # time.monotonic() when its call.ended was held


class Recorder:
    """Feeds the store from the bus. While the database cannot be written each call's events
    are held, in order, and tried again every `retry_s`; a call is given up on (one error line
    says what was lost) when it holds over `hold_events` events, when over `hold_calls` calls
    hold some, or `keep_ended_s` after it ended."""

    def __init__(
        self,
        store: CallStore,
        *,
        retry_s: float = RETRY_S,
        hold_events: int = HOLD_EVENTS_PER_CALL,
        hold_calls: int = HOLD_CALLS,
        keep_ended_s: float = KEEP_ENDED_S,
    ) -> None:
        self._store = store
        self._retry_s = retry_s
        self._hold_events = hold_events
        self._hold_calls = hold_calls
        self._keep_ended_s = keep_ended_s
        self._held: dict[str, _Held] = {}
        self._lost: dict[str, None] = {}  # calls given up on before they ended, oldest first
        self._next_retry = 0.0

    async def run(self, bus: EventBus) -> None:
        """For the app's lifetime. When cancelled at shutdown it first writes what is still
        queued or held (what cannot be written is reported), so nothing said is lost silently."""
        with bus.subscribe(maxsize=100_000) as sub:
            try:
                await self._store.check()  # /readyz tells of an unwritable database at once
                self._next_retry = time.monotonic() + self._retry_s
                while True:
                    if (event := await self._next_event(sub)) is not None:
                        await self.record(event)
                    if self._waiting() and time.monotonic() >= self._next_retry:
                        await self.retry()
            except asyncio.CancelledError:
                while not sub.queue.empty():
                    await self.record(sub.queue.get_nowait())
                if self._held:
                    await self.retry(final=True)
                raise

    def _waiting(self) -> bool:
        return bool(self._held) or not self._store.healthy

    async def _next_event(self, sub: Subscription) -> BaseEvent | None:
        """The next event, or None when a retry is due first. Queued events come first, so a
        slow retry never leaves them in the bus's queue (which drops the oldest when full)."""
        if not sub.queue.empty():
            return sub.queue.get_nowait()
        wait = max(0.0, self._next_retry - time.monotonic()) if self._waiting() else None
        try:
            return await asyncio.wait_for(sub.get(), wait)
        except TimeoutError:
            return None

    async def record(self, event: BaseEvent) -> None:
        """Writes an event, or holds it behind its call's held events or an unwritable store.
        Another replica's events are its own to write (cluster.py)."""
        if not isinstance(event, RECORDED) or event.remote:
            return
        call_id = event.call_id
        if call_id in self._lost:  # given up on: the rest of the call is not recorded either
            self._store.health.lost_events += 1
            if isinstance(event, CallEnded):
                del self._lost[call_id]
            return
        held = self._held.get(call_id)
        if held is None:
            if self._store.healthy:
                try:
                    await self._store.apply(event)
                    return
                except StoreUnavailable:
                    self._next_retry = time.monotonic() + self._retry_s
                except Exception:
                    log.exception("could not record %s for call %s", event.type, call_id)
                    return
            held = self._held[call_id] = _Held()
            if len(self._held) > self._hold_calls:
                self._give_up(next(iter(self._held)), f"more than {self._hold_calls} calls wait")
        held.events.append(event)
        self._store.health.held_events += 1
        if isinstance(event, CallEnded):
            held.ended_at = time.monotonic()
        if len(held.events) > self._hold_events:
            self._give_up(call_id, f"more than {self._hold_events} of its events wait")

    async def retry(self, *, final: bool = False) -> None:
        """Writes the held events, call by call, in order; stops at the first the database
        refuses. Probes the database when nothing is held. `final`: give up on what is left."""
        try:
            if not self._held:
                await self._store.check()
                return
            for call_id in list(self._held):
                if not await self._flush(call_id):
                    break
        finally:  # counted from the end: a database slow to fail is not tried back to back
            self._next_retry = time.monotonic() + self._retry_s
        now = time.monotonic()
        for call_id, held in list(self._held.items()):
            if final:
                self._give_up(call_id, "the service stopped")
            elif held.ended_at is not None and now - held.ended_at >= self._keep_ended_s:
                self._give_up(call_id, f"it ended {self._keep_ended_s:g} s ago")

    async def _flush(self, call_id: str) -> bool:
        """Writes one call's held events; False when the database is still unwritable."""
        held = self._held[call_id]
        while held.events:
            event = held.events[0]
            try:
                await self._store.apply(event)
            except StoreUnavailable:
                return False
            except Exception:
                log.exception("could not record %s for call %s", event.type, call_id)
            held.events.popleft()
            self._store.health.held_events -= 1
        del self._held[call_id]
        return True

    def _give_up(self, call_id: str, why: str) -> None:
        """Drops a call's held events, saying in one error line what its record lacks."""
        held = self._held.pop(call_id)
        lost = len(held.events)
        self._store.health.held_events -= lost
        self._store.health.lost_events += lost
        rest = ""
        if held.ended_at is None:
            self._lost[call_id] = None
            while len(self._lost) > self._hold_calls:
                del self._lost[next(iter(self._lost))]
            rest = "; nor will the rest of the call be"
        log.error(
            "call %s: %d events not recorded (%s), the database could not be written (%s) and %s%s",
            call_id,
            lost,
            _kinds(held.events),
            self._store.last_error or "unknown error",
            why,
            rest,
        )


def _kinds(events: Iterable[BaseEvent]) -> str:
    """What a list of events holds: 'call.started, 4 transcript.final, call.ended'."""
    counts = collections.Counter(event.type for event in events)
    return ", ".join(kind if n == 1 else f"{n} {kind}" for kind, n in counts.items())
