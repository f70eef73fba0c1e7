"""Call records: a call and its turns, written as they happen (SQLAlchemy; SQLite by default)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from voiceai import events
from voiceai.events import Event, EventBus

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


class CallRow(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    direction: Mapped[str] = mapped_column(String(16), default="inbound")
    caller: Mapped[str | None] = mapped_column(String(128))
    callee: Mapped[str | None] = mapped_column(String(128))
    language: Mapped[str | None] = mapped_column(String(16))
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(64))
    hangup_cause: Mapped[str | None] = mapped_column(String(64))
    transferred_to: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
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


def _at(event: Event) -> datetime:
    return datetime.fromtimestamp(event.at, UTC)


class CallStore:
    """Blocking SQLAlchemy work runs on one dedicated thread, behind async methods."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_engine(url)
        Base.metadata.create_all(self._engine)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def apply(self, event: Event) -> None:
        await self._run(self._apply, event)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        return await self._run(self._get_call, call_id)

    def _apply(self, event: Event) -> None:
        with Session(self._engine) as db, db.begin():
            data = event.data
            if event.type == events.CALL_STARTED:
                row = db.get(CallRow, event.call_id) or CallRow(id=event.call_id, meta={})
                row.status = "active"
                row.direction = data.get("direction") or "inbound"
                row.caller = data.get("caller")
                row.callee = data.get("callee")
                row.language = data.get("language")
                row.sample_rate = data.get("sample_rate")
                row.meta = data.get("metadata") or {}
                row.started_at = _at(event)
                row.ended_at = None
                row.end_reason = None
                row.hangup_cause = None
                row.errors = []
                db.add(row)
            elif event.type == events.TRANSCRIPT_FINAL:
                db.add(
                    TurnRow(
                        call_id=event.call_id,
                        speaker="caller",
                        text=data["text"],
                        language=data.get("language"),
                        start_ms=data.get("start_ms"),
                        end_ms=data.get("end_ms"),
                        timings={
                            "stt_ms": data.get("stt_ms"),
                            "backchannel": data.get("backchannel", False),
                        },
                        created_at=_at(event),
                    )
                )
            elif event.type == events.BOT_SAID:
                db.add(
                    TurnRow(
                        call_id=event.call_id,
                        speaker="bot",
                        text=data.get("text", ""),
                        language=None,
                        timings={**data.get("timings", {}), "interrupted": data.get("interrupted")},
                        created_at=_at(event),
                    )
                )
            elif (row := db.get(CallRow, event.call_id)) is None:
                return
            elif event.type == events.CALL_ENDED:
                row.status = "ended"
                row.ended_at = _at(event)
                row.end_reason = data.get("reason")
                row.hangup_cause = data.get("hangup_cause") or row.hangup_cause
            elif event.type == events.CALL_HANGUP:
                row.hangup_cause = data.get("cause")
            elif event.type == events.CALL_TRANSFERRED:
                row.transferred_to = data.get("to")
            elif event.type == events.CALL_ERROR:
                error = {"kind": data.get("kind"), "message": data.get("message"), "at": event.at}
                row.errors = [*row.errors, error]

    def _get_call(self, call_id: str) -> dict[str, Any] | None:
        with Session(self._engine) as db:
            row = db.scalars(select(CallRow).where(CallRow.id == call_id)).one_or_none()
            if row is None:
                return None
            return {
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
                "turns": [
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
                ],
            }

    async def aclose(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()


RECORDED = {
    events.CALL_STARTED,
    events.TRANSCRIPT_FINAL,
    events.BOT_SAID,
    events.CALL_ENDED,
    events.CALL_HANGUP,
    events.CALL_TRANSFERRED,
    events.CALL_ERROR,
}


async def record_events(bus: EventBus, store: CallStore) -> None:
    """Writes every event that changes a call record, in order, for the app's lifetime.

    When cancelled at shutdown it first writes what is still queued, so nothing said is lost.
    """
    with bus.subscribe(maxsize=100_000) as sub:
        try:
            while True:
                await _record(store, await sub.get())
        except asyncio.CancelledError:
            while not sub.queue.empty():
                await _record(store, sub.queue.get_nowait())
            raise


async def _record(store: CallStore, event: Event) -> None:
    if event.type not in RECORDED:
        return
    try:
        await store.apply(event)
    except Exception:
        log.exception("could not record %s for call %s", event.type, event.call_id)
