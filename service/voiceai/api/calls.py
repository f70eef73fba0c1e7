"""/api/calls: the call records, and an operator's controls over calls in progress;
/api/messages: the messages callers left (the take_message tool)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, ValidationError, field_validator

from voiceai import events
from voiceai.api.deps import Services, require_token, services
from voiceai.conversation.session import CallNotReady, CallSession
from voiceai.telephony import commands
from voiceai.telephony.fork import SWITCH_NAME
from voiceai.telephony.switches import Switch

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
    switch: str | None = Field(
        None, description="The FreeSWITCH to call from (a VOICEAI_FREESWITCHES name); the first"
    )

    @field_validator("to")
    @classmethod
    def _e164(cls, value: str) -> str:
        value = value.strip()
        if not E164.match(value):
            raise ValueError("must be an E.164 number such as +14155550100")
        return value

    @field_validator("switch")
    @classmethod
    def _switch_name(cls, value: str | None) -> str | None:
        if value is not None and not SWITCH_NAME.match(value):
            raise ValueError("must be a FreeSWITCH name: letters, digits, . _ -")
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
    switch = svc.switches.named(body.switch) if body.switch else svc.switches.default
    if switch is None and body.switch and svc.switches:
        raise HTTPException(422, f"no FreeSWITCH named {body.switch!r} in VOICEAI_FREESWITCHES")
    if switch is None or not switch.connected:
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
    task = asyncio.create_task(_dial(svc, switch, call_id, body.to))
    svc.background.add(task)
    task.add_done_callback(svc.background.discard)
    return {"id": call_id, "status": "dialing"}


async def _dial(svc: Services, switch: Switch, call_id: str, number: str) -> None:
    esl = switch.esl
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
            "switch": switch.name,  # the call's commands go where it was placed
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


async def _active_or_ended(svc: Services, call_id: str) -> CallSession:
    """The call in progress; 409 for one that ended, 404 for one never seen."""
    call = svc.calls.get(call_id)
    if call is not None and str(call.state) != "ended":
        return call
    if call is not None or await svc.store.get_call(call_id) is not None:
        raise HTTPException(409, f"call {call_id!r} has already ended")
    raise HTTPException(404, f"no call {call_id!r}")


def _require_esl(svc: Services, call_id: str) -> None:
    switch = svc.switches.serving(call_id)  # the FreeSWITCH the call is on
    if switch is None or not switch.connected:
        raise HTTPException(503, "FreeSWITCH's event socket is not connected")


@calls_router.post("/{call_id}/hangup", status_code=202)
async def hangup(call_id: str, request: Request) -> dict[str, Any]:
    return await _control(services(request), call_id, "hangup", {})


@calls_router.post("/{call_id}/transfer", status_code=202)
async def transfer(call_id: str, body: Transfer, request: Request) -> dict[str, Any]:
    return await _control(services(request), call_id, "transfer", body.model_dump())


@calls_router.post("/{call_id}/say", status_code=202)
async def say(call_id: str, body: Say, request: Request) -> dict[str, Any]:
    return await _control(services(request), call_id, "say", body.model_dump())


@calls_router.post("/{call_id}/mute")
async def mute(call_id: str, request: Request) -> dict[str, Any]:
    return await _control(services(request), call_id, "mute", {})


@calls_router.post("/{call_id}/unmute")
async def unmute(call_id: str, request: Request) -> dict[str, Any]:
    return await _control(services(request), call_id, "unmute", {})


async def _hangup(svc: Services, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
    call = await _active_or_ended(svc, call_id)
    _require_esl(svc, call_id)
    try:
        await call.hangup("NORMAL_CLEARING")
    except CallNotReady as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"status": "hanging up"}


async def _transfer(svc: Services, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
    to = Transfer.model_validate(body).to
    call = await _active_or_ended(svc, call_id)
    _require_esl(svc, call_id)
    # Also while a transfer is under way (state first, `transferred_to` once FreeSWITCH agreed).
    if call.transferred_to is not None or str(call.state) == "transferred":
        raise HTTPException(409, f"call {call_id!r} was already transferred")
    if not await call.transfer(to, reason="operator"):
        raise HTTPException(502, "FreeSWITCH did not transfer the call (see the call's errors)")
    return {"status": "transferred", "to": to}


async def _say(svc: Services, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
    text = Say.model_validate(body).text
    call = await _active_or_ended(svc, call_id)
    try:
        call.say(text)
    except CallNotReady as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"status": "speaking"}


async def _mute(svc: Services, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
    (await _active_or_ended(svc, call_id)).set_muted(True)
    return {"muted": True}


async def _unmute(svc: Services, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
    (await _active_or_ended(svc, call_id)).set_muted(False)
    return {"muted": False}


# An operator's controls of a call in progress, with their success status: the same code runs
# a request made here and one another replica forwards (voiceai/cluster.py).
Control = Callable[[Services, str, dict[str, Any]], Awaitable[dict[str, Any]]]
CONTROLS: dict[str, tuple[Control, int]] = {
    "hangup": (_hangup, 202),
    "transfer": (_transfer, 202),
    "say": (_say, 202),
    "mute": (_mute, 200),
    "unmute": (_unmute, 200),
}


async def _control(svc: Services, call_id: str, action: str, body: dict[str, Any]) -> Any:
    """Runs a control here, or, for a call another replica has, there (its answer, or 504)."""
    owner = await _owner_elsewhere(svc, call_id)
    if owner is None or svc.cluster is None:
        return await CONTROLS[action][0](svc, call_id, body)
    status, answer = await svc.cluster.forward(owner, call_id, action, body)
    if status >= 400:
        raise HTTPException(status, answer.get("detail", f"replica {owner} refused"))
    return answer


async def _owner_elsewhere(svc: Services, call_id: str) -> str | None:
    """The replica that has this call in progress, when it is another one (from its record)."""
    if svc.cluster is None or svc.calls.get(call_id) is not None:
        return None
    record = await svc.store.get_call(call_id)
    if record is None or record["status"] not in ("active", "dialing"):
        return None
    owner = record.get("replica")
    return owner if owner and owner != svc.cluster.replica else None


async def run_forwarded(
    svc: Services, call_id: str, action: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """A control another replica forwarded for a call here: its status and answer, as a
    request made here would get them (never forwarded again)."""
    if action not in CONTROLS:
        return 400, {"detail": f"unknown control {action!r}"}
    run, ok = CONTROLS[action]
    try:
        return ok, await run(svc, call_id, body)
    except HTTPException as exc:
        return exc.status_code, {"detail": exc.detail}
    except ValidationError as exc:
        return 422, {"detail": [error["msg"] for error in exc.errors()]}


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
