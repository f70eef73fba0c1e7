"""ws://HOST:PORT/fork/{call_id}: where FreeSWITCH's mod_audio_fork streams a caller."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from fastapi import APIRouter, WebSocket
from starlette.responses import PlainTextResponse

from voiceai import events
from voiceai.agents import Agent
from voiceai.api.deps import Services, services
from voiceai.conversation.session import CallInfo, CallSession, Engines
from voiceai.telephony import commands
from voiceai.telephony.fork import (
    CALL_ID,
    CLOSE_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_LATER,
    DEFAULT_RATE,
    SUBPROTOCOL,
    Audio,
    ForkMetadata,
    ForkProtocolError,
    basic_auth_ok,
    check_rate,
    receive_messages,
)
from voiceai.telephony.switches import Switch

log = logging.getLogger(__name__)
router = APIRouter()
MAX_NOTED_TEXT = 1000  # of a fork's text frame, into the call's events (and their viewers)
METADATA_WAIT_S = 1.0  # mod_audio_fork sends it at once; a refused fork is not kept waiting


@router.websocket("/fork/{call_id}")
async def fork(ws: WebSocket, call_id: str) -> None:
    svc = services(ws)
    settings = svc.settings
    password = settings.fork_password.get_secret_value()
    if password and not basic_auth_ok(
        ws.headers.get("authorization"), settings.fork_user, password
    ):
        log.warning("fork %s refused: missing or wrong basic auth", call_id)
        await ws.send_denial_response(
            PlainTextResponse("unauthorized", 401, headers={"WWW-Authenticate": "Basic"})
        )
        return
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    if not CALL_ID.match(call_id):
        await _close(ws, CLOSE_POLICY, "call id must be letters, digits, dot, dash, underscore")
        return
    refused = svc.calls.admit(call_id, settings.call_limit())
    if refused is not None:
        over = refused.startswith("over capacity")
        log.warning("fork %s refused: %s", call_id, refused)
        svc.metrics.calls_refused.labels("capacity" if over else "duplicate").inc()
        # Over capacity: 1013 "try again later", and the caller goes to the dialplan's apology
        # and fallback at once (its sched_transfer would do it only after FS_TAKE_TIMEOUT).
        # Several switches: the metadata names the one whose safety net takes the caller.
        switch = await _switch_of_refused(ws, svc) if over else None
        await _close(ws, CLOSE_TRY_LATER if over else CLOSE_POLICY, refused)
        if over:
            task = asyncio.create_task(_to_safety_net(switch, call_id))
            svc.background.add(task)
            task.add_done_callback(svc.background.discard)
        return

    call: CallSession | None = None
    reason = "hangup"
    messages = receive_messages(ws)
    try:
        first = await anext(messages, None)
        meta = ForkMetadata()
        if first is not None and not isinstance(first, Audio):
            meta, warning = ForkMetadata.parse(first.text)
            if warning:
                log.warning("fork %s: %s", call_id, warning)
        rate = check_rate(
            meta.rate if meta.rate is not None else ws.query_params.get("rate", DEFAULT_RATE)
        )
        channels = 2 if ws.query_params.get("mix") == "stereo" else meta.channels
        agent, policy = svc.agent_for(call_id, meta.callee)
        language = meta.language or agent.call_language()
        switch = svc.switches.get(meta.switch)
        call = CallSession(
            call_id,
            rate=rate,
            channels=channels,
            language=language,
            engines=_engines_on(svc, agent, switch),
            policy=policy,
            info=CallInfo(meta.caller, meta.caller_name, meta.callee, meta.direction),
        )
        svc.calls.add(call)
        if switch is not None:
            svc.switches.attach(call_id, switch)
        call.start(
            events.CallStarted(
                call_id=call_id,
                caller=meta.caller,
                caller_name=meta.caller_name,
                callee=meta.callee,
                direction=meta.direction,
                language=language,
                sample_rate=rate,
                channels=channels,
                metadata=meta.extra,
                engines=engine_names(svc.engines),
            )
        )
        log.info(
            "call %s: fork connected (%d Hz, %d ch, caller %s)",
            call_id,
            rate,
            channels,
            meta.caller,
        )
        if isinstance(first, Audio):
            call.feed(first.data)
        async for message in messages:
            if isinstance(message, Audio):
                call.feed(message.data)
            else:
                log.info("call %s: text from FreeSWITCH: %.200r", call_id, message.text)
                call.note_text(message.text[:MAX_NOTED_TEXT])
        await _close(ws, CLOSE_NORMAL, "")
    except ForkProtocolError as exc:
        log.warning("fork %s closed: %s", call_id, exc.reason)
        reason = f"protocol error: {exc.reason}"
        await _close(ws, exc.code, exc.reason)
    except Exception:
        log.exception("fork %s failed", call_id)
        reason = "internal error"
        await _close(ws, CLOSE_ERROR, "internal error")
    finally:
        try:
            if call is not None:
                await call.finish(reason)
                log.info("call %s ended: %s", call_id, reason)
        finally:
            svc.calls.remove(call_id)  # the place this fork held since it was admitted
            svc.switches.detach(call_id)


def _engines_on(svc: Services, agent: Agent, switch: Switch | None) -> Engines:
    """The agent's engines, commanding the switch the call is on."""
    engines = svc.engines_for(agent)
    if switch is None or engines.control is switch.control:
        return engines
    return dataclasses.replace(engines, control=switch.control)


async def _switch_of_refused(ws: WebSocket, svc: Services) -> Switch | None:
    """The switch a fork refused at once is on: its metadata's, read when there are several."""
    if len(svc.switches) < 2:
        return svc.switches.default
    meta = ForkMetadata()
    with contextlib.suppress(Exception):  # no metadata in time, or none at all: the default
        message = await asyncio.wait_for(ws.receive(), METADATA_WAIT_S)
        if message.get("text") is not None:
            meta, _ = ForkMetadata.parse(message["text"])
    return svc.switches.get(meta.switch)


async def _to_safety_net(switch: Switch | None, call_id: str) -> None:
    if switch is None or not switch.connected:
        return  # the dialplan's own take timeout sends the caller there
    try:
        await commands.to_safety_net(switch.esl, call_id)
        log.info("call %s: over capacity, sent to the dialplan's apology and fallback", call_id)
    except Exception as exc:
        log.warning(
            "call %s: could not send it to the apology now (%s); its take timeout will",
            call_id,
            exc,
        )


def engine_names(engines: Engines) -> dict[str, str]:
    """Which engines serve the call, for its record."""
    named = {"stt": engines.stt.stt, "llm": engines.llm, "tts": engines.tts}
    return {
        kind: str(
            getattr(engine, "name", None)
            or getattr(engine, "model_name", None)
            or type(engine).__name__
        )
        for kind, engine in named.items()
        if engine is not None
    }


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # the far end may already be gone
        await ws.close(code, reason)
