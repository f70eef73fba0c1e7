"""`voiceai simulate`: one call from WAV files against a running service, printed as it goes.

With VOICEAI_ESL_PASSWORD set, this command plays FreeSWITCH: it serves the event socket on
VOICEAI_ESL_HOST:PORT (the service connects to it), rings the service, forks the caller's
audio, plays the bot's replies and can write the whole call to a WAV. Without it, only the
fork is emulated and the transcripts are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake

from voiceai import events
from voiceai.config import Settings
from voiceai.sim.fork_client import CallAudio, ForkCall, ForkStreamOptions
from voiceai.sim.freeswitch import EslServer
from voiceai.sim.phone import PhoneCall
from voiceai.telephony.fork import check_rate

END_WAIT_S = 120.0
STAGES = (
    ("transcript", "transcript"),
    ("llm_first_token", "first token"),
    ("first_sentence", "first sentence"),
    ("first_audio", "first audio"),
    ("playback_started", "playing"),
)


def base_urls(settings: Settings, url: str | None) -> tuple[str, str]:
    """(http base, ws base) of the service."""
    if url is None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        url = f"http://{host}:{settings.port}"
    url = url.rstrip("/")
    ws = "ws" + url[4:] if url.startswith("http") else url
    return url, ws


def describe(event: dict[str, Any]) -> str | None:
    """One printed line for the events a person watching a call cares about."""
    data = event["data"]
    kind = event["type"]
    if kind == events.CALL_STARTED:
        return f"call {event['call_id']} started ({data.get('sample_rate')} Hz)"
    if kind == events.TRANSCRIPT_FINAL:
        span = f"{data['start_ms'] / 1000:5.1f}-{data['end_ms'] / 1000:5.1f}s"
        note = ", backchannel" if data.get("backchannel") else ""
        return (
            f"caller [{span}] {data['text']}   (stt {data['stt_ms']} ms, {data['language']}{note})"
        )
    if kind == events.BOT_SAID:
        cut = "  [interrupted]" if data.get("interrupted") else ""
        return f"bot: {data.get('text') or '(nothing heard)'}{cut}"
    if kind == events.TURN_LATENCY:
        parts = [f"{label} {data[key]} ms" for key, label in STAGES if key in data]
        return "      after the caller's last word: " + " · ".join(parts)
    if kind == events.BARGE_IN:
        return f"      (caller barged in at {data['at_ms'] / 1000:.1f}s)"
    if kind == events.DTMF:
        return f"      (caller pressed {data['digit']})"
    if kind == events.CALL_TRANSFERRED:
        return f"call transferred to {data['to']} ({data['reason']})"
    if kind == events.CALL_ERROR:
        return f"error ({data.get('kind')}): {data.get('message')}"
    if kind == events.CALL_ENDED:
        return f"call ended: {data.get('reason')} ({data.get('turns')} caller turns)"
    return None


def print_event(event: dict[str, Any]) -> None:
    line = describe(event)
    if line:
        print(line, flush=True)


async def simulate(settings: Settings, args: argparse.Namespace) -> int:
    http, ws_base = base_urls(settings, args.url)
    rate = check_rate(args.rate)
    audio = CallAudio.from_files(args.wavs, rate)
    try:
        async with httpx.AsyncClient(timeout=3) as client:
            (await client.get(f"{http}/healthz")).raise_for_status()
    except httpx.HTTPError as exc:
        print(f"voiceai: cannot reach the service at {http}: {exc}", file=sys.stderr)
        return 1
    if settings.esl_password.get_secret_value():
        return await simulate_call(settings, http, ws_base, audio, rate, args.call_id, args.out)
    return await simulate_fork(settings, ws_base, audio, rate, args)


async def simulate_call(
    settings: Settings,
    http: str,
    ws_base: str,
    audio: CallAudio,
    rate: int,
    call_id: str | None,
    out: Path | None,
    switch: EslServer | None = None,
    ready_limit_s: float = 60.0,
) -> int:
    """Play FreeSWITCH: serve the event socket, ring the service, talk, hang up."""
    own_switch = switch is None
    if switch is None:
        password = settings.esl_password.get_secret_value()
        switch = EslServer(password, host=settings.esl_host, port=settings.esl_port)
        try:
            await switch.start()
        except OSError as exc:
            print(
                f"voiceai: cannot serve the event socket on {settings.esl_port}: {exc}",
                file=sys.stderr,
            )
            return 1
    token = settings.api_token.get_secret_value() or None
    try:
        if not await wait_ready(http, token, ready_limit_s):
            print("voiceai: the service did not connect to the event socket", file=sys.stderr)
            return 1
        async with PhoneCall(
            switch, ws_base, rate=rate, call_id=call_id, token=token, on_event=print_event
        ) as call:
            await call.dial()
            await call.converse(audio.utterances, reply_limit_s=END_WAIT_S)
            await call.wait_bot_done(END_WAIT_S)
            await call.end()
            if out is not None:
                print(f"whole call (left caller, right bot): {call.write_wav(out)}")
    finally:
        if own_switch:
            await switch.stop()
    print(f"record: {http}/api/calls/{call.call_id}")
    return 0


async def wait_ready(http: str, token: str | None, limit_s: float = 60.0) -> bool:
    """Until /readyz says the service is connected to (our) event socket."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(timeout=3, headers=headers) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{http}/readyz")).status_code == 200:
                    return True
            await asyncio.sleep(0.25)
    return False


async def simulate_fork(
    settings: Settings, ws_base: str, audio: CallAudio, rate: int, args: argparse.Namespace
) -> int:
    """Only the fork: stream the caller's audio and print the transcripts."""
    call_id = args.call_id or str(uuid.uuid4())
    options = ForkStreamOptions(
        rate=rate, frame_ms=args.frame_ms, speed=args.speed, gap_ms=args.gap_ms
    )
    token = settings.api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    fork_password = settings.fork_password.get_secret_value()
    auth = (settings.fork_user, fork_password) if fork_password else None
    try:
        live = await connect(f"{ws_base}/ws/live?call={call_id}", additional_headers=headers)
    except (OSError, InvalidHandshake) as exc:
        print(f"voiceai: cannot reach the service at {ws_base}: {exc}", file=sys.stderr)
        return 1
    async with live:
        call = ForkCall(ws_base, call_id, audio, options, auth=auth)
        streaming = asyncio.create_task(call.run())
        printing = asyncio.create_task(_print_until_ended(live))
        limit = END_WAIT_S + len(audio.utterances) * 60
        done, _ = await asyncio.wait(
            {streaming, printing}, timeout=limit, return_when="FIRST_EXCEPTION"
        )
        if streaming in done and streaming.exception() is not None:
            print(f"voiceai: the fork stream failed: {streaming.exception()}", file=sys.stderr)
        elif printing not in done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(printing), limit)
        for task in (streaming, printing):
            task.cancel()
        await asyncio.gather(streaming, printing, return_exceptions=True)
        ended = printing.done() and not printing.cancelled() and printing.result()
    if not ended:
        print("voiceai: the call did not end cleanly", file=sys.stderr)
        return 1
    return 0


async def _print_until_ended(live: ClientConnection) -> bool:
    async for raw in live:
        event = json.loads(raw)
        print_event(event)
        if event["type"] == events.CALL_ENDED:
            return True
    return False
