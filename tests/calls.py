"""Helpers that place simulated calls against a running service and collect its events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import connect

from voiceai.sim.fork_client import ForkCall


async def collect_events(
    ws_base: str,
    call_id: str,
    action: Callable[[], Awaitable[Any]],
    limit_s: float = 90,
    token: str | None = None,
) -> list[dict[str, Any]]:
    """Runs `action` while listening to /ws/live for `call_id`; returns its events to call.ended."""
    received: list[dict[str, Any]] = []
    query = f"&token={token}" if token else ""
    async with connect(f"{ws_base}/ws/live?call={call_id}{query}") as live:
        task = asyncio.create_task(action())
        async with asyncio.timeout(limit_s):
            async for raw in live:
                event = json.loads(raw)
                received.append(event)
                if event["type"] == "call.ended":
                    break
        await task
    return received


async def place(call: ForkCall, token: str | None = None) -> list[dict[str, Any]]:
    return await collect_events(call.base_url, call.call_id, call.run, token=token)


def transcripts(received: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["text"] for e in received if e["type"] == "transcript.final"]
