"""REST routes: health, readiness, call records."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from voiceai.api.deps import require_token, services

router = APIRouter()
api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when calls can be answered: engines loaded and FreeSWITCH's event socket up."""
    svc = services(request)
    esl = svc.engines.esl
    esl_state = "disabled" if esl is None else esl.state
    ready = esl is None or esl.connected
    body = {
        "status": "ready" if ready else "not ready",
        "esl": esl_state,
        "esl_error": None if esl is None else esl.last_error,
        "llm": svc.engines.llm.name if svc.engines.llm else None,
        "active_calls": len(svc.calls),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@api.get("/calls/{call_id}")
async def get_call(call_id: str, request: Request) -> dict[str, Any]:
    record = await services(request).store.get_call(call_id)
    if record is None:
        raise HTTPException(404, f"no call {call_id!r}")
    return record
