"""Call records: a call and its turns, written as they happen (SQLAlchemy; SQLite by default)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
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
    TranscriptFinal,
    TtsAudio,
)

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class CallRow(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    direction: Mapped[str] = mapped_column(String(16), default="inbound")
    caller: Mapped[str | None] = mapped_column(String(128))
    callee: Mapped[str | None] = mapped_column(String(128))
    language: Mapped[str | None] = mapped_column(String(16))
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(64))
    hangup_cause: Mapped[str | None] = mapped_column(String(64))
    transferred_to: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    engines: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    recording: Mapped[str | None] = mapped_column(String(512))
    turns: Mapped[list[TurnRow]] = relationship(order_by="TurnRow.id", cascade="all, delete-orphan")


class TurnRow(Base):
    __tablename__ = "turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    speaker: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    start_ms: Mapped[int | None] = mapped_column(Integer)
    end_ms: Mapped[int | None] = mapped_column(Integer)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _at(event: BaseEvent) -> datetime:
    return datetime.fromtimestamp(event.at, UTC)


def _update(row: CallRow, event: BaseEvent) -> None:
    """Applies an event about a call already recorded (the caller skips calls never seen)."""
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


class CallStore:
    """Blocking SQLAlchemy work runs on one dedicated thread, behind async methods."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_engine(url)
        Base.metadata.create_all(self._engine)
        _add_missing_columns(self._engine)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def apply(self, event: BaseEvent) -> None:
        await self._run(self._apply, event)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        return await self._run(self._get_call, call_id)

    async def list_calls(
        self, status: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        return await self._run(self._list_calls, status, limit, offset)

    async def prune(self, older_than_days: int) -> int:
        """Delete ended calls that started more than `older_than_days` ago; returns how many."""
        return await self._run(self._prune, older_than_days)

    def _apply(self, event: BaseEvent) -> None:
        with Session(self._engine) as db, db.begin():
            match event:
                case CallDialing():
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
                        )
                    )
                case CallStarted():
                    row = db.get(CallRow, event.call_id)
                    dialled = row is not None and row.status == "dialing"
                    row = row or CallRow(id=event.call_id, meta={})
                    row.status = "active"
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
                    db.add(row)
                case TranscriptFinal():
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
                case BotSaid():
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
                case _:
                    if (row := db.get(CallRow, event.call_id)) is not None:
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

    def _prune(self, older_than_days: int) -> int:
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        with Session(self._engine) as db, db.begin():
            old = db.scalars(
                select(CallRow).where(CallRow.started_at < cutoff, CallRow.status != "active")
            ).all()
            for row in old:
                db.delete(row)  # its turns go with it (cascade)
            return len(old)

    async def aclose(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()


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
    return record


def _add_missing_columns(engine: Engine) -> None:
    """Upgrade a database made by an older version: add the columns it lacks (all nullable)."""
    existing = inspect(engine)
    with engine.begin() as db:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name not in have:
                    kind = column.type.compile(dialect=engine.dialect)
                    db.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                    log.info("database: added column %s.%s", table.name, column.name)


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
)


async def record_events(bus: EventBus, store: CallStore) -> None:
    """Writes every event that changes a call record, in order, for the app's lifetime.

    When cancelled at shutdown it first writes what is still queued, so nothing said is lost.
    """
    with bus.subscribe(maxsize=100_000) as sub:
        try:
            while True:
                await _write(store, await sub.get())
        except asyncio.CancelledError:
            while not sub.queue.empty():
                await _write(store, sub.queue.get_nowait())
            raise


async def _write(store: CallStore, event: BaseEvent) -> None:
    if not isinstance(event, RECORDED):
        return
    try:
        await store.apply(event)
    except Exception:
        log.exception("could not record %s for call %s", event.type, event.call_id)
