"""`voiceai simulate`: one call from WAV files against a running service, transcripts printed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake

from voiceai import events
from voiceai.config import Settings
from voiceai.sim.fork_client import CallAudio, ForkCall, ForkStreamOptions
from voiceai.telephony.fork import check_rate

END_WAIT_S = 120.0


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
    if event["type"] == events.CALL_STARTED:
        return f"call {event['call_id']} started ({data.get('sample_rate')} Hz)"
    if event["type"] == events.TRANSCRIPT_FINAL:
        span = f"{data['start_ms'] / 1000:5.1f}-{data['end_ms'] / 1000:5.1f}s"
        return f"caller [{span}] {data['text']}   (stt {data['stt_ms']} ms, {data['language']})"
    if event["type"] == events.CALL_ERROR:
        return f"error: {data.get('message')}"
    if event["type"] == events.CALL_ENDED:
        return f"call ended: {data.get('reason')} ({data.get('turns')} turns)"
    return None


async def simulate(settings: Settings, args: argparse.Namespace) -> int:
    http, ws_base = base_urls(settings, args.url)
    call_id = args.call_id or str(uuid.uuid4())
    rate = check_rate(args.rate)
    options = ForkStreamOptions(
        rate=rate, frame_ms=args.frame_ms, speed=args.speed, gap_ms=args.gap_ms
    )
    audio = CallAudio.from_files(args.wavs, rate)
    token = settings.api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    fork_password = settings.fork_password.get_secret_value()
    auth = (settings.fork_user, fork_password) if fork_password else None

    try:
        live = await connect(f"{ws_base}/ws/live?call={call_id}", additional_headers=headers)
    except (OSError, InvalidHandshake) as exc:
        print(f"voiceai: cannot reach the service at {http}: {exc}", file=sys.stderr)
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
    print(f"record: {http}/api/calls/{call_id}")
    return 0


async def _print_until_ended(live: ClientConnection) -> bool:
    async for raw in live:
        event = json.loads(raw)
        line = describe(event)
        if line:
            print(line, flush=True)
        if event["type"] == events.CALL_ENDED:
            return True
    return False
