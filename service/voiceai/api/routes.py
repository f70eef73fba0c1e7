"""REST routes: health, readiness, call records."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from voiceai.api.deps import require_token, services

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when calls can be answered and recorded: engines loaded, an event socket up (of
    several FreeSWITCH, any one: this replica serves the calls of those it reaches; `switches`
    shows each), the call records writable."""
    svc = services(request)
    if not svc.settings.public_readyz:
        require_token(request)
    switches = svc.switches
    ready = not switches or switches.connected
    ready = ready and svc.store.healthy  # calls unrecorded would be lost: not ready
    body = {
        "status": "ready" if ready else "not ready",
        "esl": switches.summary(),
        "esl_error": switches.last_error(),
        "switches": switches.states(),
        "database": "ok" if svc.store.healthy else "cannot write",
        "database_error": svc.store.last_error,
        "llm": svc.engines.llm.name if svc.engines.llm else None,
        "active_calls": len(svc.calls),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; needs the API token unless VOICEAI_PUBLIC_METRICS is set."""
    svc = services(request)
    if not svc.settings.public_metrics:
        require_token(request)
    body, content_type = svc.metrics.render()
    return Response(body, media_type=content_type)
