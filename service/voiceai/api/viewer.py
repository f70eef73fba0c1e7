"""The live viewer: a static page at / that shows calls from /ws/live and acts via /api/calls.

The page itself holds no data and needs no token (it asks the operator for one); everything it
shows comes from the authenticated live socket and REST API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC: Final = Path(__file__).with_name("static")

# Only these files are served: nothing else under static/ can be reached by name.
ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# The page runs only its own script and talks only to this service (caller text can't inject).
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Cache-Control": "no-cache",  # an upgraded service serves the new page at the next load
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    page = STATIC / "index.html"
    return FileResponse(page, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "not found")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
