"""Tool calls and messages taken, through the real service: events published on its bus reach
GET /api/calls/{id} and GET /api/messages (issue 12)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import RunningService
from voiceai.events import CallEnded, CallStarted, MessageTaken, ToolCalled, TranscriptFinal

TOKEN = "messages-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def eventually(service: RunningService, path: str, done: Any, timeout_s: float = 15) -> Any:
    """The JSON at `path` once `done(json)` holds (the recorder writes asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = service.get(path, headers=AUTH)
        if response.status_code == 200 and done(response.json()):
            return response.json()
        assert time.monotonic() < deadline, f"never: {path} -> {response.text}"
        time.sleep(0.05)


@pytest.fixture
def service(service_factory: Any) -> RunningService:
    return service_factory(api_token=TOKEN)


def test_published_tool_calls_and_messages_show_in_the_call_and_in_api_messages(
    service: RunningService,
) -> None:
    t0 = time.time() - 60
    for event in (
        CallStarted(call_id="c1", caller="+15550101", at=t0),
        TranscriptFinal(call_id="c1", text="where is order 123", start_ms=0, end_ms=900, at=t0),
        ToolCalled(
            call_id="c1",
            name="order_status",
            arguments={"order_number": 123},
            result="shipped",
            ok=True,
            duration_ms=420,
            at=t0 + 1,
        ),
        MessageTaken(
            call_id="c1", name="Ann", callback_number="5550100", message="first", at=t0 + 2
        ),
        CallStarted(call_id="c2", caller="+15550102", at=t0 + 3),
        MessageTaken(
            call_id="c2", name="Bob", callback_number="5550111", message="second", at=t0 + 4
        ),
        CallEnded(call_id="c1", reason="hangup", at=t0 + 5),
    ):
        service.publish(event)

    listed = eventually(service, "/api/messages", lambda body: body["total"] == 2)
    record = eventually(service, "/api/calls/c1", lambda body: body["status"] == "ended")
    since_iso = datetime.fromtimestamp(t0 + 3, UTC).isoformat()
    after_iso = service.get("/api/messages", params={"since": since_iso}, headers=AUTH).json()
    after_unix = service.get("/api/messages", params={"since": t0 + 3}, headers=AUTH).json()
    paged = service.get("/api/messages?limit=1&offset=1", headers=AUTH).json()

    assert [(m["call_id"], m["name"], m["message"]) for m in listed["messages"]] == [
        ("c2", "Bob", "second"),
        ("c1", "Ann", "first"),
    ]
    assert listed["messages"][0]["callback_number"] == "5550111"
    assert listed["messages"][0]["caller"] == "+15550102"
    assert (listed["limit"], listed["offset"]) == (50, 0)
    (tool,) = record["tool_calls"]
    assert tool["name"] == "order_status" and tool["arguments"] == {"order_number": 123}
    assert (tool["result"], tool["ok"], tool["duration_ms"]) == ("shipped", True, 420)
    assert [(m["name"], m["callback_number"], m["message"]) for m in record["messages"]] == [
        ("Ann", "5550100", "first")
    ]
    assert [m["message"] for m in after_iso["messages"]] == ["second"]
    assert after_unix == after_iso
    assert (paged["total"], [m["message"] for m in paged["messages"]]) == (2, ["first"])


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=ten",
        "offset=-1",
        "offset=1e400",
        "offset=99999999999999999999",
        "since=yesterday",
        "since=nan",
        "since=1e400",
        "since=9999-12-31T23:00:00-05:00",
        "since=0001-01-01T00:00:00%2B05:00",
    ],
)
def test_api_messages_refuses_bad_paging_and_times_with_422(
    service: RunningService, query: str
) -> None:
    response = service.get(f"/api/messages?{query}", headers=AUTH)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


def test_api_messages_needs_the_token(service: RunningService) -> None:
    assert service.get("/api/messages").status_code == 401
    wrong = service.get("/api/messages", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(f"{service.http}/api/messages", headers=AUTH, timeout=10).status_code == 200
