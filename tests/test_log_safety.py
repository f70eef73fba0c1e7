"""The log is safe to keep and to read: every record is one line, whatever a caller puts in a
URL or a fork frame, and no secret appears in it in any encoding (issue 11, items 5 and 8)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import free_port
from voiceai.logs import DETAIL_INDENT, OneLineFormatter, SecretScrubber
from voiceai.sim.fork_client import ForkClient, ForkStreamOptions, basic_auth
from voiceai.telephony.fork import SUBPROTOCOL

# Every character of it is written differently by a browser, Python, a form and JSON.
TOKEN = "Zx9/+=tök~en! ('*)&"
FORK_USER, FORK_PASSWORD = "fs", "f0rk/pa ss"
FORGED = "2099-01-01 00:00:00,000 ERROR voiceai: FORGED"


def encodings(secret: str) -> dict[str, str]:
    """The forms a secret takes in URLs, forms, JSON, repr and basic auth."""
    js_component = quote(secret, safe="-_.!~*'()")  # encodeURIComponent, as the viewer does
    return {
        "raw": secret,
        "percent": quote(secret, safe=""),
        "encodeURIComponent": js_component,
        "path": quote(secret),
        "plus": quote_plus(secret),
        "lower-hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), js_component),
        "twice": quote(quote(secret, safe=""), safe=""),
        "json": json.dumps(secret)[1:-1],
        "repr": repr(secret)[1:-1],
        "base64": base64.b64encode(secret.encode()).decode(),
    }


def format_line(message: str, *args: object, secrets: tuple[str, ...] = (TOKEN,)) -> str:
    record = logging.LogRecord("voiceai", logging.INFO, __file__, 1, message, args, None)
    return OneLineFormatter(SecretScrubber(secrets)).format(record)


@pytest.mark.parametrize("form", list(encodings(TOKEN)))
def test_a_secret_is_scrubbed_in_every_encoding(form: str) -> None:
    shown = encodings(TOKEN)[form]
    line = format_line("GET /x?t=%s HTTP/1.1", shown)
    assert shown not in line
    assert "?t=***" in line


def test_every_credential_query_parameter_is_masked_even_an_unknown_token() -> None:
    line = format_line('127.0.0.1 - "WebSocket /ws/live?call=a&token=not-the-token" 403')
    assert line.endswith('"WebSocket /ws/live?call=a&token=***" 403')
    assert "access_token=***&" in format_line("/x?access_token=abc&y=1")


def test_the_basic_auth_credential_is_scrubbed_when_given_as_a_secret() -> None:
    credential = base64.b64encode(f"{FORK_USER}:{FORK_PASSWORD}".encode()).decode()
    line = format_line("header %s", credential, secrets=(FORK_PASSWORD, credential))
    assert credential.rstrip("=") not in line


def test_a_record_is_one_line_whatever_its_text() -> None:
    line = format_line("call %s", f"x\n{FORGED}\r\x00\x1b[2J\u2028\x85 end")
    assert "\n" not in line and "\r" not in line
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028]", line)
    assert "call x\\n2099-01-01" in line and "\\x00\\x1b[2J\\u2028\\x85 end" in line


def test_a_traceback_follows_on_indented_lines_scrubbed() -> None:
    try:
        raise ValueError(f"bad id x\n{FORGED} {TOKEN}")
    except ValueError:
        record = logging.LogRecord(
            "voiceai", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    lines = OneLineFormatter(SecretScrubber([TOKEN])).format(record).splitlines()
    assert lines[0].endswith("voiceai: failed")
    assert all(line.startswith(DETAIL_INDENT) for line in lines[1:])
    assert any("FORGED ***" in line for line in lines)
    assert TOKEN not in "\n".join(lines)


@dataclass
class LoggedService:
    """`voiceai serve` as a real process, with the real logging set-up, its stderr kept."""

    http: str
    ws: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"never logged: {text!r}"
            time.sleep(0.05)
        return log


@pytest.fixture(scope="module")
def logged_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedService]:
    workdir = tmp_path_factory.mktemp("logged")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOICEAI_")},
        "HF_HUB_OFFLINE": "1",
        "VOICEAI_PORT": str(port),
        "VOICEAI_API_TOKEN": TOKEN,
        "VOICEAI_FORK_USER": FORK_USER,
        "VOICEAI_FORK_PASSWORD": FORK_PASSWORD,
        "VOICEAI_TTS": "piper",  # no network here: edge-tts would only add a warning
    }
    log_path = workdir / "stderr.log"
    with log_path.open("w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "voiceai", "serve"], env=env, cwd=workdir, stderr=stderr
        )
    service = LoggedService(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(service.http + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None, service.log()
                time.sleep(0.2)
        yield service
    finally:
        server.terminate()
        server.wait(timeout=30)


def assert_no_forged_line(log: str) -> None:
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]", log), "raw control character"
    lines = log.splitlines()
    assert not [line for line in lines if line.startswith("2099")], "a forged record"
    for line in lines:
        if "FORGED" in line:
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line), line
            assert not line.startswith("2099"), line


def test_api_token_in_a_query_string_never_reaches_the_log(
    logged_service: LoggedService,
) -> None:
    forms = encodings(TOKEN)

    async def open_live_socket() -> None:
        # What the viewer does: the token percent-encoded into /ws/live?token=.
        async with connect(f"{logged_service.ws}/ws/live?token={forms['encodeURIComponent']}"):
            pass

    asyncio.run(open_live_socket())
    for n, form in enumerate(("plus", "lower-hex", "path", "twice")):
        httpx.get(f"{logged_service.http}/api/calls?token={forms[form]}&n={n}", timeout=10)
    httpx.get(f"{logged_service.http}/healthz?t={forms['percent']}&last=1", timeout=10)

    log = logged_service.wait_for_log("&last=1")
    assert '"WebSocket /ws/live?token=***"' in log  # the line is there, the token is not
    assert "/api/calls?token=***&n=3" in log
    for name, shown in forms.items():
        assert shown not in log, f"token in the log, {name} form"


def test_a_forged_newline_in_a_fork_path_stays_inside_its_record(
    logged_service: LoggedService,
) -> None:
    path = quote(f"x\n{FORGED}-PATH", safe="")

    async def knock() -> int:
        try:
            async with connect(f"{logged_service.ws}/fork/{path}", subprotocols=[SUBPROTOCOL]):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert asyncio.run(knock()) == 401
    assert_no_forged_line(logged_service.wait_for_log("FORGED-PATH"))


def test_fork_metadata_and_text_frames_are_logged_on_one_line(
    logged_service: LoggedService,
) -> None:
    hostile = f"555\n{FORGED}-META\x00\x1b[2J\r"

    async def call() -> None:
        metadata = {"rate": "8k", "caller": hostile}
        url = f"{logged_service.ws}/fork/log-safety"
        async with ForkClient(url, metadata=metadata, auth=(FORK_USER, FORK_PASSWORD)) as fork:
            await fork.stream(b"\0" * 3200, ForkStreamOptions(rate=8000, speed=0))
            await fork.send_text(f"hello\n{FORGED}-TEXT\x00\u2028")
            await fork.stream(b"\0" * 3200, ForkStreamOptions(rate=8000, speed=0))

    asyncio.run(call())
    log = logged_service.wait_for_log("call log-safety ended")
    assert "FORGED-META" in log  # the hostile text was logged, escaped
    assert_no_forged_line(log)
    assert FORK_PASSWORD not in log


def test_a_call_id_ending_in_a_newline_is_refused(logged_service: LoggedService) -> None:
    async def closed_with() -> int | None:
        headers = basic_auth(FORK_USER, FORK_PASSWORD)
        url = f"{logged_service.ws}/fork/ends-in-newline%0A"
        async with connect(url, subprotocols=[SUBPROTOCOL], additional_headers=headers) as ws:
            with contextlib.suppress(ConnectionClosed):  # closed before or after the metadata
                await ws.send(json.dumps({"rate": "8k"}))
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code

    assert asyncio.run(closed_with()) == 1008
