"""REST routes: health, readiness, call records."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from voiceai.api.deps import require_token, services

router = APIRouter()
api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, Any]:
    svc = services(request)
    return {"status": "ready", "active_calls": len(svc.calls), "stt": "loaded"}


@api.get("/calls/{call_id}")
async def get_call(call_id: str, request: Request) -> dict[str, Any]:
    record = await services(request).store.get_call(call_id)
    if record is None:
        raise HTTPException(404, f"no call {call_id!r}")
    return record
