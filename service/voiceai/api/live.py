"""/ws/live: the event stream of all calls, or of one with ?call=ID."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket
from starlette.responses import JSONResponse

from voiceai.api.deps import bearer, services, token_ok
from voiceai.events import Snapshot, Subscription

router = APIRouter()


@router.websocket("/ws/live")
async def live(ws: WebSocket) -> None:
    svc = services(ws)
    # Browsers cannot set headers on a websocket, so the token may also come as ?token=.
    given = bearer(ws.headers.get("authorization")) or ws.query_params.get("token")
    if not token_ok(svc.settings, given):
        await ws.send_denial_response(JSONResponse({"detail": "missing or wrong API token"}, 401))
        return
    await ws.accept()
    only = ws.query_params.get("call")
    # Subscribe before the snapshot, so nothing falls between the two.
    with svc.bus.subscribe(call_id=only, maxsize=1000) as sub:
        calls = [c.summary() for c in svc.calls.all() if only is None or c.call_id == only]
        if svc.cluster is not None:  # and those of the other replicas
            calls += [c for c in svc.cluster.remote_calls() if only is None or c["id"] == only]
        snapshot = Snapshot(call_id=only or "", calls=calls)
        await ws.send_text(snapshot.wire_json())
        sender = asyncio.create_task(_send_events(ws, sub))
        try:
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass  # viewers have nothing to say yet; reading notices their close
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


async def _send_events(ws: WebSocket, sub: Subscription) -> None:
    async for event in sub:
        await ws.send_text(event.wire_json())
