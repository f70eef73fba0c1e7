"""/api/calls: the call records, and an operator's controls over calls in progress;
/api/messages: the messages callers left (the take_message tool)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, field_validator

from voiceai import events
from voiceai.api.deps import Services, require_token, services
from voiceai.conversation.session import CallNotReady, CallSession
from voiceai.telephony import commands

log = logging.getLogger(__name__)
calls_router = APIRouter(prefix="/api/calls", tags=["calls"])
messages_router = APIRouter(prefix="/api/messages", tags=["messages"])

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
# A number or an extension: what the dialplan's fallback bridges to the gateway (and what
# commands.transfer sends); `*98`-style codes would only fail at FreeSWITCH.
DESTINATION = re.compile(r"\+?[0-9]{2,20}")
MAX_OFFSET = 1_000_000_000  # the database's integers end somewhere: refuse before, with a 422
ORIGINATE_TIMEOUT_S = 60.0


class NewCall(BaseModel):
    to: str = Field(description="E.164 number to call, e.g. +14155550100")
    prompt: str | None = Field(None, max_length=8000, description="System prompt for this call")
    greeting: str | None = Field(None, max_length=1000, description="Greeting for this call")

    @field_validator("to")
    @classmethod
    def _e164(cls, value: str) -> str:
        value = value.strip()
        if not E164.match(value):
            raise ValueError("must be an E.164 number such as +14155550100")
        return value


class Transfer(BaseModel):
    to: str = Field(description="Number or extension to blind-transfer the caller to")

    @field_validator("to")
    @classmethod
    def _destination(cls, value: str) -> str:
        value = value.strip()
        if not DESTINATION.fullmatch(value):
            raise ValueError(
                "must be a phone number (+ and 2-20 digits) or an extension (2-20 digits)"
            )
        return value


class Say(BaseModel):
    text: str = Field(min_length=1, max_length=2000, description="What the bot says now")


@calls_router.get("")
async def list_calls(
    request: Request,
    status: Literal["dialing", "active", "ended", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """Active and recent calls, newest first."""
    records, total = await services(request).store.list_calls(status, limit, offset)
    return {"calls": records, "total": total, "limit": limit, "offset": offset}


@calls_router.get("/{call_id}")
async def get_call(call_id: str, request: Request) -> dict[str, Any]:
    """One call with its turns, timings, tool calls, messages, engines, hangup cause, errors."""
    record = await services(request).store.get_call(call_id)
    if record is None:
        raise HTTPException(404, f"no call {call_id!r}")
    return record


@calls_router.get("/{call_id}/recording")
async def get_recording(call_id: str, request: Request) -> FileResponse:
    svc = services(request)
    record = await svc.store.get_call(call_id)
    if record is None:
        raise HTTPException(404, f"no call {call_id!r}")
    path = record.get("recording")
    if not path:
        raise HTTPException(404, f"call {call_id!r} was not recorded")
    local = svc.settings.media_dir / "recordings" / f"{call_id}.wav"
    if not local.is_file():
        raise HTTPException(404, f"the recording of {call_id!r} is not in the media folder")
    return FileResponse(local, media_type="audio/wav", filename=f"{call_id}.wav")


@calls_router.post("", status_code=202)
async def place_call(body: NewCall, request: Request) -> dict[str, str]:
    """Call a number through the RingCentral gateway; the bot talks when the callee answers."""
    svc = services(request)
    esl = svc.esl
    if esl is None or not esl.connected:
        raise HTTPException(503, "FreeSWITCH's event socket is not connected")
    call_id = str(uuid.uuid4())
    overrides: dict[str, Any] = {}
    if body.prompt is not None:
        overrides["system_prompt"] = body.prompt
    if body.greeting is not None:
        overrides["greeting"] = body.greeting
    if overrides:
        svc.overrides[call_id] = overrides
    svc.bus.publish(events.CallDialing(call_id=call_id, to=body.to))
    task = asyncio.create_task(_dial(svc, call_id, body.to))
    svc.background.add(task)
    task.add_done_callback(svc.background.discard)
    return {"id": call_id, "status": "dialing"}


async def _dial(svc: Services, call_id: str, number: str) -> None:
    esl = svc.esl
    assert esl is not None
    settings = svc.settings
    try:
        await commands.originate(
            esl,
            number.lstrip("+"),
            uuid=call_id,
            timeout_s=ORIGINATE_TIMEOUT_S,
            variables={"origination_caller_id_number": "voiceai"},
        )
        metadata = {
            "callId": call_id,
            "callee": number,
            "direction": "outbound",
            "rate": f"{settings.fork_rate // 1000}k",
        }
        await commands.start_fork(
            esl,
            call_id,
            f"{settings.fork_base_url()}/fork/{call_id}",
            settings.fork_rate,
            metadata=metadata,
        )
    except Exception as exc:
        svc.overrides.pop(call_id, None)
        log.warning("call %s to %s failed: %s", call_id, number, exc)
        svc.bus.publish(events.CallError(call_id=call_id, kind="originate", message=str(exc)))
        svc.bus.publish(events.CallEnded(call_id=call_id, reason=f"originate failed: {exc}"))


async def _active_or_ended(request: Request, call_id: str) -> CallSession:
    """The call in progress; 409 for one that ended, 404 for one never seen."""
    svc = services(request)
    call = svc.calls.get(call_id)
    if call is not None and str(call.state) != "ended":
        return call
    if call is not None or await svc.store.get_call(call_id) is not None:
        raise HTTPException(409, f"call {call_id!r} has already ended")
    raise HTTPException(404, f"no call {call_id!r}")


def _require_esl(svc: Services) -> None:
    if svc.esl is None or not svc.esl.connected:
        raise HTTPException(503, "FreeSWITCH's event socket is not connected")


@calls_router.post("/{call_id}/hangup", status_code=202)
async def hangup(call_id: str, request: Request) -> dict[str, str]:
    call = await _active_or_ended(request, call_id)
    _require_esl(services(request))
    try:
        await call.hangup("NORMAL_CLEARING")
    except CallNotReady as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"status": "hanging up"}


@calls_router.post("/{call_id}/transfer", status_code=202)
async def transfer(call_id: str, body: Transfer, request: Request) -> dict[str, str]:
    call = await _active_or_ended(request, call_id)
    _require_esl(services(request))
    # Also while a transfer is under way (state first, `transferred_to` once FreeSWITCH agreed).
    if call.transferred_to is not None or str(call.state) == "transferred":
        raise HTTPException(409, f"call {call_id!r} was already transferred")
    if not await call.transfer(body.to, reason="operator"):
        raise HTTPException(502, "FreeSWITCH did not transfer the call (see the call's errors)")
    return {"status": "transferred", "to": body.to}


@calls_router.post("/{call_id}/say", status_code=202)
async def say(call_id: str, body: Say, request: Request) -> dict[str, str]:
    call = await _active_or_ended(request, call_id)
    try:
        call.say(body.text)
    except CallNotReady as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"status": "speaking"}


@calls_router.post("/{call_id}/mute")
async def mute(call_id: str, request: Request) -> JSONResponse:
    call = await _active_or_ended(request, call_id)
    call.set_muted(True)
    return JSONResponse({"muted": True})


@calls_router.post("/{call_id}/unmute")
async def unmute(call_id: str, request: Request) -> JSONResponse:
    call = await _active_or_ended(request, call_id)
    call.set_muted(False)
    return JSONResponse({"muted": False})


@messages_router.get("")
async def list_messages(
    request: Request,
    since: Annotated[
        datetime | None,
        Query(description="Only messages taken at or after this time (ISO 8601 or unix seconds)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """Messages callers left, newest first, each with its call and the caller's number."""
    start = None if since is None else _utc(since)
    messages, total = await services(request).store.list_messages(start, limit, offset)
    return {"messages": messages, "total": total, "limit": limit, "offset": offset}


def _utc(moment: datetime) -> datetime:
    """`since` in UTC (a time without an offset is UTC); one UTC cannot hold is a 422."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:  # e.g. 9999-12-31T23:00-05:00: after year 9999 in UTC
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "since"), "msg": "out of range"}]
        ) from exc


# Both behind the API token; the app includes this one router.
router = APIRouter(dependencies=[Depends(require_token)])
router.include_router(calls_router)
router.include_router(messages_router)
