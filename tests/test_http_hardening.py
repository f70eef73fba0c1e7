"""What a hostile client or web page can make the service do over HTTP, against real uvicorn
with `voiceai serve`'s options: huge bodies, slow or oversized request heads, foreign Host
names, cross-site websockets and forms, numbers JSON cannot hold, bad transfer targets."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from playwright.async_api import expect

from tests.conftest import RunningService
from tests.test_conversation import RATE, talking_service
from tests.test_viewer import viewer
from voiceai import events
from voiceai.api.guards import CLIENT_TIMEOUT_S, http_server_options
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall

TOKEN = "hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVE = {"server_options": http_server_options()}  # what `voiceai serve` gives uvicorn
JSON = {"Content-Type": "application/json"}
EVIL = "http://evil.example"
CLOSE_WITHIN_S = CLIENT_TIMEOUT_S + 3


def exchange(service: RunningService, data: bytes, *, trickle_s: float = 0, wait_s: float = 15):
    """Sends `data` on a fresh connection (a byte every `trickle_s` if set) and reads until the
    server closes it: (what came back, seconds until the close), or None for the time if it
    was still open after `wait_s`."""
    port = int(service.http.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        started = time.monotonic()
        try:
            for i in range(len(data) if trickle_s else 1):
                sock.sendall(data[i : i + 1] if trickle_s else data)
                time.sleep(trickle_s)
        except OSError:  # closed under the trickle: the point
            return b"", time.monotonic() - started
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, None
        except ConnectionResetError:
            pass
        return received, time.monotonic() - started


def status_of(response: bytes) -> int | None:
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[0].startswith(b"HTTP/") else None


def handshake(service: RunningService, path: str, headers: dict[str, str]) -> int | None:
    """The status a websocket handshake gets (101: accepted), with exactly these headers."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    port = int(service.http.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return status_of(sock.recv(4096))


def test_a_huge_body_is_refused_before_it_is_read_or_the_token_checked(service_factory) -> None:
    service = service_factory(api_token=TOKEN, **SERVE)
    head = "POST /api/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    announced, announced_s = exchange(
        service, f"{head}Content-Length: 1000000000\r\n\r\n{{".encode(), wait_s=4
    )
    chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"  # 16 KiB chunks, no length announced
    chunked, _ = exchange(
        service, f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunk * 5 + b"0\r\n\r\n"
    )
    small = httpx.post(f"{service.http}/api/calls", json={"to": "+14155550100"}, timeout=10)

    assert announced_s is not None and announced_s < 2, "the server waited for the gigabyte"
    assert status_of(announced) == 413
    assert status_of(chunked) == 413
    assert b"65536" in chunked  # the detail names the limit
    assert small.status_code == 401  # a body within the limit goes on to the token check


def test_slow_oversized_or_silent_clients_are_answered_or_closed_within_seconds(
    service_factory,
) -> None:
    service = service_factory(**SERVE)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body_head = b"POST /api/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
    probes = {
        "long line": (b"GET /" + b"a" * 20_000, 0),
        "long header": (head + b"X-Padding: " + b"a" * 20_000, 0),
        "silent": (b"", 0),
        "head never ends": (head, 0),
        "head trickles": (head + b"X-Slow: " + b"a" * 20, 0.5),
        "body never comes": (body_head + b"\r\nContent-Length: 100\r\n\r\n{", 0),
    }
    with ThreadPoolExecutor(len(probes)) as pool:
        futures = {
            name: pool.submit(exchange, service, data, trickle_s=trickle, wait_s=15)
            for name, (data, trickle) in probes.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    polite = service.get("/healthz")

    for name in ("long line", "long header"):
        response, closed_s = results[name]
        assert status_of(response) == 400, name
        assert closed_s is not None and closed_s < 2, name
    for name in ("silent", "head never ends", "head trickles"):
        _, closed_s = results[name]
        assert closed_s is not None and closed_s < CLOSE_WITHIN_S, f"{name}: still open"
    response, closed_s = results["body never comes"]
    assert status_of(response) == 408 and closed_s is not None and closed_s < CLOSE_WITHIN_S
    assert polite.status_code == 200


def test_host_names_the_service_does_not_know_are_refused(service_factory) -> None:
    service = service_factory(allowed_hosts="voice.example.com, *.corp.example", **SERVE)
    port = service.http.rsplit(":", 1)[1]

    def status(host: str) -> int:
        response = httpx.get(f"{service.http}/api/calls", headers={"Host": host}, timeout=10)
        return response.status_code

    rebound = httpx.get(f"{service.http}/api/calls", headers={"Host": "evil.example"}, timeout=10)
    assert rebound.status_code == 400 and "VOICEAI_ALLOWED_HOSTS" in rebound.json()["detail"]
    assert status(f"evil.example:{port}") == 400
    assert status(f"voice.example.com.evil.example:{port}") == 400
    assert handshake(service, "/ws/live", {"Host": f"evil.example:{port}"}) == 400
    for known in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"[::1]:{port}",
        f"{socket.gethostname()}:{port}",
        f"192.0.2.7:{port}",  # an address: no page can rebind it
        "voice.example.com",
        f"team.corp.example:{port}",
    ):
        assert status(known) == 200, known
    # FreeSWITCH names the service as FS_FORK_URL does, and mod_audio_fork sends its bare host
    # as the Origin: the fork socket keeps taking it.
    assert handshake(service, "/fork/any-call", {"Host": "voiceai", "Origin": "voiceai"}) == 101


def test_cross_site_pages_cannot_watch_or_control_calls_without_a_token(
    service_factory, tts
) -> None:
    async def scenario() -> dict[str, Any]:
        with OllamaEmulator(reply=lambda m: "Certainly.") as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, greeting="", **SERVE
            ) as (switch, service):
                out: dict[str, Any] = {}
                own = service.http  # the viewer's origin
                host = own.removeprefix("http://")
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    await call.wait_event(events.CALL_STARTED)
                    path = f"/api/calls/{call.call_id}"
                    async with httpx.AsyncClient(base_url=own, timeout=10) as client:

                        async def post(action: str, **kwargs: Any) -> int:
                            return (await client.post(f"{path}/{action}", **kwargs)).status_code

                        out["watch"] = await asyncio.to_thread(
                            handshake, service, "/ws/live", {"Host": host, "Origin": EVIL}
                        )
                        out["watch_null"] = await asyncio.to_thread(
                            handshake, service, "/ws/live", {"Host": host, "Origin": "null"}
                        )
                        out["fork_from_page"] = await asyncio.to_thread(
                            handshake, service, "/fork/x", {"Host": host, "Origin": EVIL}
                        )
                        out["mute_json"] = await post(
                            "mute", headers={**JSON, "Origin": EVIL}, content=b"{}"
                        )
                        form = {"Content-Type": "application/x-www-form-urlencoded"}
                        out["hangup_form"] = await post("hangup", headers=form, content=b"a=1")
                        out["hangup_form_cross"] = await post(
                            "hangup", headers={**form, "Origin": EVIL}, content=b"a=1"
                        )
                        out["hangup_bare"] = await post("hangup")
                        out["transfer_text"] = await post(
                            "transfer",
                            headers={"Content-Type": "text/plain", "Origin": EVIL},
                            content=b'{"to": "1001"}',
                        )
                        out["untouched"] = (
                            not switch.channels[call.call_id].hung_up
                            and not switch.channels[call.call_id].transfers
                            and not call.log.of(events.CALL_MUTED)
                        )
                        out["watch_own"] = await asyncio.to_thread(
                            handshake, service, "/ws/live", {"Host": host, "Origin": own}
                        )
                        same_site = {**JSON, "Origin": own}
                        out["mute_own"] = await post("mute", headers=same_site, content=b"{}")
                        out["hangup_own"] = await post("hangup", headers=same_site)
                    await call.wait_event(events.CALL_ENDED)
                    out["hung_up"] = switch.channels[call.call_id].hung_up
                    out["muted"] = [e["data"]["muted"] for e in call.log.of(events.CALL_MUTED)]
                return out

    out = asyncio.run(scenario())
    assert out["watch"] == 403 and out["watch_null"] == 403
    assert out["fork_from_page"] == 403  # a browser never opens FreeSWITCH's socket
    assert out["mute_json"] == 403
    assert out["hangup_form"] == 415 and out["hangup_form_cross"] == 403
    assert out["hangup_bare"] == 415  # fetch(..., {method: "POST", mode: "no-cors"})
    assert out["transfer_text"] == 403
    assert out["untouched"], "a refused request reached the call or FreeSWITCH"
    assert out["watch_own"] == 101
    assert out["mute_own"] == 200 and out["hangup_own"] == 202
    assert out["hung_up"] is True and out["muted"] == [True]


def test_the_viewer_still_controls_calls_without_a_token(service_factory, tts) -> None:
    async def scenario() -> tuple[PhoneCall, bool]:
        with OllamaEmulator(reply=lambda m: "Certainly.") as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, **SERVE) as (
                    switch,
                    service,
                ),
                viewer() as view,
                PhoneCall(switch, service.ws, rate=RATE) as call,
            ):
                await view.open(service)
                await expect(view.page.locator("#conn")).to_have_attribute("data-state", "live")
                await call.dial()
                await call.wait_bot_done()
                card = view.card(call.call_id)
                mute = card.locator(".act-mute")
                await mute.click()
                await expect(mute).to_have_text("Unmute")
                await call.wait_event(events.CALL_MUTED)
                await card.locator(".act-hangup").click()
                await expect(card.locator(".act-hangup")).to_have_text("Confirm")
                await card.locator(".act-hangup").click()
                await call.wait_event(events.CALL_ENDED)
                await expect(card).to_have_attribute("data-state", "ended")
                return call, switch.channels[call.call_id].hung_up

    call, hung_up = asyncio.run(scenario())
    assert [e["data"]["muted"] for e in call.log.of(events.CALL_MUTED)] == [True]
    assert hung_up is True


def test_numbers_json_or_sqlite_cannot_hold_are_422_not_500(service_factory) -> None:
    service = service_factory(api_token=TOKEN, **SERVE)
    with httpx.Client(base_url=service.http, headers=AUTH, timeout=10) as client:
        offset = client.get("/api/calls", params={"offset": "99999999999999999999"})
        huge_to = client.post("/api/calls", headers=JSON, content=b'{"to":1e400}')
        nan_to = client.post("/api/calls", headers=JSON, content=b'{"to":NaN}')
        transfer = client.post("/api/calls/x/transfer", headers=JSON, content=b'{"to":-1e400}')
        listed = client.get("/api/calls", params={"offset": "1000"})

    assert offset.status_code == 422 and offset.json()["detail"][0]["loc"] == ["query", "offset"]
    assert huge_to.status_code == 422 and huge_to.json()["detail"][0]["input"] == "inf"
    assert nan_to.status_code == 422
    assert transfer.status_code == 422 and transfer.json()["detail"][0]["input"] == "-inf"
    assert listed.status_code == 200 and listed.json()["calls"] == []


def test_a_transfer_target_is_checked_before_anything_is_sent_and_only_once(
    service_factory, tts
) -> None:
    async def scenario() -> dict[str, Any]:
        with OllamaEmulator(reply=lambda m: "Certainly.") as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, api_token=TOKEN, greeting=""
            ) as (switch, service):
                out: dict[str, Any] = {}
                async with httpx.AsyncClient(base_url=service.http, headers=AUTH, timeout=30) as c:

                    async def transfer(call: PhoneCall, to: Any) -> httpx.Response:
                        body = json.dumps({"to": to})
                        url = f"/api/calls/{call.call_id}/transfer"
                        return await c.post(url, headers=JSON, content=body)

                    async with PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as first:
                        await first.dial()
                        await first.wait_event(events.CALL_STARTED)
                        out["star_code"] = await transfer(first, "*98")
                        out["one_digit"] = await transfer(first, "7")
                        out["sent_before"] = list(switch.channels[first.call_id].transfers)
                        out["first"] = await transfer(first, "1001")
                        out["again"] = await transfer(first, "1002")
                        out["again_invalid"] = await transfer(first, "*98")
                        out["sent"] = list(switch.channels[first.call_id].transfers)
                        await first.end()
                    async with PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as second:
                        await second.dial()
                        await second.wait_event(events.CALL_STARTED)
                        both = await asyncio.gather(
                            transfer(second, "+14155550100"), transfer(second, "1003")
                        )
                        out["together"] = sorted(r.status_code for r in both)
                        out["sent_together"] = list(switch.channels[second.call_id].transfers)
                        await second.end()
                return out

    out = asyncio.run(scenario())
    assert out["star_code"].status_code == 422 and "2-20 digits" in out["star_code"].text
    assert out["one_digit"].status_code == 422
    assert out["sent_before"] == []  # nothing reached FreeSWITCH for either
    assert out["first"].status_code == 202
    assert out["again"].status_code == 409 and "already transferred" in out["again"].text
    assert out["again_invalid"].status_code == 422
    assert [dest for dest, *_ in out["sent"]] == ["bridge:sofia/gateway/ringcentral/1001"]
    assert out["together"] == [202, 409]
    assert len(out["sent_together"]) == 1
