"""The live viewer page in real Chromium, against the service with emulated FreeSWITCH, Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Locator, Page, WebSocketRoute, async_playwright, expect

from tests.conftest import RunningService, words
from tests.speech import KEYWORDS, Speech
from tests.test_conversation import BOOKING_REPLY, RATE, caller_says, talking_service
from voiceai import events
from voiceai.config import Settings
from voiceai.engines.tts import build_tts
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall

TOKEN = "viewer-test-token"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; playwright must not download a browser
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
UI_TIMEOUT_MS = 30_000  # real STT and TTS are behind every text the page waits for
SCREENSHOT = Path("/tmp/viewer.png")
FAILURE_SCREENSHOT = Path("/tmp/viewer-failure.png")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
# Reply text that would run script or add elements if the page ever parsed event data as HTML.
MARKUP_REPLY = 'Sure. <img src=x onerror="window.pwned=1"><b id="injected">We open at noon.</b>'

# Records every text the caller's growing (partial) line shows, however briefly.
RECORD_PARTIALS = """
window.partialsSeen = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll(".line.caller.partial .text")) {
    const text = node.textContent;
    if (text && window.partialsSeen.at(-1) !== text) window.partialsSeen.push(text);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="session")
def tts() -> Any:
    return build_tts(Settings(tts="piper"))


@dataclass
class Viewer:
    page: Page
    errors: list[str] = field(default_factory=list)

    def card(self, call_id: str) -> Locator:
        return self.page.locator(f'article.call[data-call-id="{call_id}"]')

    async def open(self, service: RunningService, fragment: str = "") -> None:
        await self.page.goto(f"{service.http}/{fragment}")


@contextlib.asynccontextmanager
async def viewer(
    viewport: dict[str, int] = DESKTOP, *, phone: bool = False
) -> AsyncIterator[Viewer]:
    """A fresh Chromium profile (empty localStorage) showing the page; fails on script errors."""
    expect.set_options(timeout=UI_TIMEOUT_MS)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                viewport=viewport, is_mobile=phone, has_touch=phone, device_scale_factor=2
            )
            await context.add_init_script(RECORD_PARTIALS)
            page = await context.new_page()
            view = Viewer(page)
            page.on("pageerror", lambda exc: view.errors.append(f"uncaught: {exc}"))
            # A blocked script or style (CSP) would break the page silently otherwise.
            page.on(
                "console",
                lambda msg: (
                    view.errors.append(msg.text)
                    if msg.type == "error" and "Content Security Policy" in msg.text
                    else None
                ),
            )
            try:
                yield view
            except BaseException:
                # What the operator would have seen when it went wrong.
                with contextlib.suppress(Exception):
                    await page.screenshot(path=str(FAILURE_SCREENSHOT), full_page=True)
                raise
            assert view.errors == [], view.errors
        finally:
            await browser.close()


async def enter_token(view: Viewer) -> None:
    await view.page.fill("#token", TOKEN)
    await view.page.click("#token-form button[type=submit]")
    await expect(view.page.locator("#conn")).to_have_attribute("data-state", "live")


async def no_horizontal_overflow(page: Page, width: int) -> None:
    scroll_width = await page.evaluate("document.scrollingElement.scrollWidth")
    assert scroll_width <= width, f"the page is {scroll_width}px wide in a {width}px viewport"


def test_page_is_served_with_a_strict_policy(service: RunningService) -> None:
    page = service.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert 'src="static/app.js"' in page.text
    script = service.get("/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text  # event data is caller-controlled: textContent only
    assert service.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert service.get("/static/index.html").status_code == 404  # only the named assets
    assert service.get("/static/..%2Fviewer.py").status_code == 404


def test_operator_watches_a_call_live_and_hangs_it_up(
    service_factory: Callable[..., RunningService], tts: Any, speech: Speech
) -> None:
    async def scenario() -> tuple[PhoneCall, dict[str, Any], dict[str, Any]]:
        with OllamaEmulator(reply=lambda messages: BOOKING_REPLY) as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, api_token=TOKEN) as (
                    switch,
                    service,
                ),
                viewer() as view,
            ):
                page = view.page
                await view.open(service)
                # Without a token the live socket is refused and the page says so.
                await expect(page.locator("#conn")).to_have_attribute("data-state", "auth")
                await enter_token(view)
                stored = await page.evaluate("localStorage.getItem('voiceai.token')")
                await expect(page.locator("#esl")).to_have_attribute("data-state", "connected")

                async with PhoneCall(
                    switch, service.ws, rate=RATE, token=TOKEN, caller="+15550142"
                ) as call:
                    await call.dial()
                    card = view.card(call.call_id)
                    await expect(card.locator(".caller-name")).to_have_text("+15550142")
                    await expect(card.locator(".line.bot").first).to_contain_text(
                        "thank you for calling"
                    )
                    await call.converse([caller_says(speech, "booking")])
                    heard = call.log.texts(events.TRANSCRIPT_FINAL)[0]
                    said = call.log.of(events.BOT_SAID)[-1]["data"]
                    await expect(card.locator(".line.caller .text")).to_have_text([heard])
                    last_bot = card.locator(".line.bot").last
                    await expect(last_bot.locator(".text")).to_have_text(said["text"])
                    latency = said["timings"]["playback_started"]
                    chip = last_bot.locator(".latency-chip")
                    await expect(chip).to_contain_text(re.compile(r"\d+(\.\d+)? (ms|s)"))
                    await chip.click()  # a tap shows the stages
                    await expect(last_bot.locator(".stages")).to_be_visible()
                    await expect(last_bot.locator(".stages dt")).to_contain_text(
                        ["transcript ready", "LLM first token", "playback started"]
                    )
                    partials_seen = await page.evaluate("window.partialsSeen")
                    assert await card.locator(".line.caller.partial").count() == 0

                    await card.locator(".act-hangup").click()
                    await expect(card.locator(".act-hangup")).to_have_text("Confirm")
                    await card.locator(".act-hangup").click()
                    await expect(card).to_have_attribute("data-state", "ended")
                    await call.wait_event(events.CALL_ENDED)
                    await expect(card).to_have_class(re.compile(r"\bended\b"))
                    await expect(card.locator(".state")).to_contain_text("NORMAL_CLEARING")
                    await expect(card.locator(".actions")).to_be_hidden()
                    channel_hung_up = switch.channels[call.call_id].hung_up
                    kill = f"uuid_kill {call.call_id} NORMAL_CLEARING" in switch.commands
                record = await asyncio.to_thread(service.wait_for_call, call.call_id)
        facts = {
            "stored": stored,
            "latency": latency,
            "partials_seen": partials_seen,
            "channel_hung_up": channel_hung_up,
            "kill": kill,
        }
        return call, facts, record

    call, facts, record = asyncio.run(scenario())
    assert facts["stored"] == TOKEN  # kept for the next visit
    assert KEYWORDS["booking"] <= words(call.log.texts(events.TRANSCRIPT_FINAL)[0])
    assert isinstance(facts["latency"], int | float)
    partials = call.log.texts(events.TRANSCRIPT_PARTIAL)
    assert partials, "the service published no partial transcript for a 4-second sentence"
    assert {p for p in partials if p} <= set(facts["partials_seen"])  # each one was shown
    assert facts["kill"] and facts["channel_hung_up"]
    assert record["status"] == "ended"
    assert record["hangup_cause"] == "NORMAL_CLEARING"


def test_a_late_viewer_sees_the_call_from_the_snapshot_and_never_renders_markup(
    service_factory: Callable[..., RunningService], tts: Any, speech: Speech
) -> None:
    def reply(messages: list[dict[str, Any]]) -> str:
        asked = [m for m in messages if m.get("role") == "user"]
        return BOOKING_REPLY if len(asked) == 1 else MARKUP_REPLY

    async def scenario() -> tuple[PhoneCall, dict[str, Any]]:
        with OllamaEmulator(reply=reply, token_delay_s=0.05) as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, api_token=TOKEN) as (
                    switch,
                    service,
                ),
                PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as call,
            ):
                await call.dial()
                await call.converse([caller_says(speech, "booking")])
                async with viewer() as view:
                    # The token arrives in the link's fragment, which never reaches the server.
                    await view.open(service, f"#token={TOKEN}")
                    page = view.page
                    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
                    card = view.card(call.call_id)
                    await expect(card.locator(".line")).to_have_count(3)
                    texts = await card.locator(".line .text").all_text_contents()
                    chips = await card.locator(".line.bot .latency-chip").count()
                    url = page.url
                    stored = await page.evaluate("localStorage.getItem('voiceai.token')")

                    await call.converse([caller_says(speech, "pharmacy")])
                    await expect(card.locator(".line.bot")).to_have_count(3)
                    reply_line = card.locator(".line.bot").last
                    await expect(reply_line).not_to_have_class(re.compile("streaming"))
                    injected = await page.locator("#injected, .transcript img").count()
                    pwned = await page.evaluate("window.pwned === undefined")
                    streamed = "".join(call.log.texts(events.REPLY_DELTA))
                await call.end()
        facts = {
            "texts": texts,
            "chips": chips,
            "url": url,
            "stored": stored,
            "injected": injected,
            "not_pwned": pwned,
            "streamed": streamed,
        }
        return call, facts

    call, facts = asyncio.run(scenario())
    greeting, question, answer = facts["texts"]
    assert {"thank", "calling"} <= words(greeting)
    assert question == call.log.texts(events.TRANSCRIPT_FINAL)[0]
    assert answer == call.log.texts(events.BOT_SAID)[1]
    assert facts["chips"] == 1  # the answered turn's latency came with the snapshot
    assert "token" not in facts["url"] and facts["stored"] == TOKEN
    assert "<img" in facts["streamed"]  # the markup really reached the page
    assert facts["injected"] == 0 and facts["not_pwned"]


def test_operator_controls_mute_say_and_transfer(
    service_factory: Callable[..., RunningService], tts: Any
) -> None:
    spoken = "Please hold on, a colleague will be with you shortly."

    async def scenario() -> tuple[PhoneCall, dict[str, Any]]:
        with OllamaEmulator(reply=lambda messages: BOOKING_REPLY) as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, api_token=TOKEN) as (
                    switch,
                    service,
                ),
                viewer() as view,
                PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as call,
            ):
                await view.open(service, f"?token={TOKEN}")  # the form the README shows
                await call.dial()
                await call.wait_bot_done()
                card = view.card(call.call_id)
                mute = card.locator(".act-mute")
                await mute.click()
                await expect(mute).to_have_text("Unmute")
                await expect(card.locator(".muted-badge")).to_be_visible()
                await call.wait_event(events.CALL_MUTED)
                await mute.click()
                await expect(mute).to_have_text("Mute")
                await call.wait_event(events.CALL_MUTED, count=2)

                await card.locator(".act-say").click()
                await card.locator(".ask-input").fill(spoken)
                await card.locator(".ask-send").click()
                await expect(card.locator(".ask")).to_be_hidden()
                await call.wait_for(lambda log: spoken in log.texts(events.BOT_SAID))
                await expect(card.locator(".line.bot .text").last).to_have_text(spoken)

                await card.locator(".act-transfer").click()
                await card.locator(".ask-input").fill("call me maybe")
                await card.locator(".ask-send").click()
                notice = card.locator(".notice")
                await expect(notice).to_have_attribute("data-kind", "error")
                await expect(notice).to_contain_text("phone number")  # the service's 422 detail
                await expect(card.locator(".ask")).to_be_visible()  # kept open to correct it

                await card.locator(".ask-input").fill("1001")
                await card.locator(".ask-send").click()
                await call.wait_event(events.CALL_TRANSFERRED)
                await expect(card).to_have_attribute("data-state", "transferred")
                await expect(card.locator(".line.system").last).to_contain_text("1001")
                commands = list(switch.commands)
                await call.end()
                await expect(card).to_have_attribute("data-state", "ended")
        return call, {"commands": commands}

    call, facts = asyncio.run(scenario())
    muted = [e["data"]["muted"] for e in call.log.of(events.CALL_MUTED)]
    assert muted == [True, False]
    assert call.log.of(events.CALL_TRANSFERRED)[0]["data"]["to"] == "1001"
    assert any(
        c.startswith(f"uuid_transfer {call.call_id} ") and c.split()[2].endswith("/1001")
        for c in facts["commands"]
    ), facts["commands"]


def test_phone_sized_page_fits_without_sideways_scrolling(
    service_factory: Callable[..., RunningService], tts: Any, speech: Speech
) -> None:
    async def scenario() -> list[dict[str, float] | None]:
        with OllamaEmulator(reply=lambda messages: BOOKING_REPLY) as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, api_token=TOKEN) as (
                    switch,
                    service,
                ),
                viewer(PHONE, phone=True) as view,
            ):
                page = view.page
                await view.open(service, f"#token={TOKEN}")
                async with PhoneCall(
                    switch, service.ws, rate=RATE, token=TOKEN, caller="+15550100"
                ) as earlier:
                    await earlier.dial()
                    await earlier.wait_bot_done()
                    await earlier.end()
                async with PhoneCall(
                    switch, service.ws, rate=RATE, token=TOKEN, caller="+447700900123"
                ) as call:
                    await call.dial()
                    await call.converse([caller_says(speech, "booking")])
                    cards = page.locator("article.call")
                    await expect(cards).to_have_count(2)
                    await expect(cards.first).to_have_attribute("data-call-id", call.call_id)
                    await expect(cards.last).to_have_attribute("data-state", "ended")
                    await expect(cards.first.locator(".latency-chip")).to_be_visible()
                    await no_horizontal_overflow(page, PHONE["width"])
                    boxes = [await card.bounding_box() for card in await cards.all()]
                    await page.screenshot(path=str(SCREENSHOT), full_page=True)
                    await page.set_viewport_size(DESKTOP)
                    await no_horizontal_overflow(page, DESKTOP["width"])
                    await page.screenshot(path=str(SCREENSHOT.with_name("viewer-desktop.png")))
                    await call.end()
        return boxes

    newer, older = asyncio.run(scenario())
    assert newer and older
    assert older["y"] >= newer["y"] + newer["height"]  # one column: stacked, newest on top
    assert newer["x"] >= 0 and newer["x"] + newer["width"] <= PHONE["width"]
    assert SCREENSHOT.stat().st_size > 10_000


def test_page_reconnects_after_the_live_socket_drops_and_asks_for_a_right_token(
    service_factory: Callable[..., RunningService],
) -> None:
    service = service_factory(api_token=TOKEN)

    async def scenario() -> tuple[int, int]:
        async with viewer() as view:
            page = view.page
            opened: list[WebSocketRoute] = []

            def through(ws: WebSocketRoute) -> None:
                opened.append(ws)
                ws.connect_to_server()  # a real connection to the service, which we can cut

            await page.route_web_socket(re.compile(r"/ws/live"), through)
            await view.open(service, f"#token={TOKEN}")
            conn = page.locator("#conn")
            await expect(conn).to_have_attribute("data-state", "live")
            await opened[0].close(code=1011, reason="network gone")
            await expect(conn).not_to_have_attribute("data-state", "live", timeout=5_000)
            await expect(conn).to_have_attribute("data-state", "live")  # by itself, with backoff
            reconnected = len(opened)

            await page.locator("#token-toggle").click()
            await page.fill("#token", "not-the-token")
            await page.click("#token-form button[type=submit]")
            await expect(conn).to_have_attribute("data-state", "auth")
            await expect(conn).to_have_text("wrong token")
            await expect(page.locator("#token-form")).to_be_visible()
            tries = len(opened)
            await asyncio.sleep(2)  # a refused token is not retried in a loop
            return reconnected, len(opened) - tries

    reconnected, retried_with_wrong_token = asyncio.run(scenario())
    assert reconnected == 2
    assert retried_with_wrong_token == 0


def test_tool_calls_and_messages_show_live_and_in_the_record_as_text_never_markup(
    service_factory: Callable[..., RunningService],
) -> None:
    """tool.called and message.taken from the live socket become lines in the call's
    transcript (a failed tool in red); after a reload the ended call's record shows the same
    lines in the same order; a caller's markup in a message is shown as text, never run."""
    service = service_factory(api_token=TOKEN)
    hostile = '<img src=x onerror="window.pwned=1"><b id="injected">call me</b>'
    t0 = time.time()
    published = [
        events.CallStarted(call_id="c1", caller="+15550142", at=t0),
        events.TranscriptFinal(
            call_id="c1", text="Where is order 123?", start_ms=0, end_ms=900, at=t0 + 0.1
        ),
        events.ToolCalled(
            call_id="c1",
            name="order_status",
            arguments={"order_number": 123},
            result="shipped",
            ok=True,
            duration_ms=420,
            at=t0 + 0.2,
        ),
        events.ToolCalled(
            call_id="c1",
            name="order_eta",
            arguments={"order_number": "123", "note": "as soon as possible"},
            result="timed out after 3 s",
            ok=False,
            duration_ms=3000,
            at=t0 + 0.3,
        ),
        events.BotSaid(call_id="c1", text="It has shipped.", at=t0 + 0.4),
        events.MessageTaken(
            call_id="c1",
            name="Ann <i>",
            callback_number="5550100",
            message=hostile,
            at=t0 + 0.5,
        ),
    ]
    expected = [
        "Where is order 123?",
        "🔧 order_status(order_number=123) → 'shipped' · 420 ms",
        '🔧 order_eta(order_number=123, note="as soon as possible") → '
        "'timed out after 3 s' · 3.00 s",
        "It has shipped.",
        f"✉ message from Ann <i>, call back 5550100: {hostile}",
    ]

    async def scenario() -> dict[str, Any]:
        async with viewer() as view:
            page = view.page
            await view.open(service, f"#token={TOKEN}")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            for event in published:
                service.publish(event)
            card = view.card("c1")
            lines = card.locator(".line .text")
            await expect(lines).to_have_text(expected)
            tools = card.locator(".line.tool")
            await expect(tools.last).to_have_class(re.compile(r"\bfailed\b"))
            colors = [
                await tool.evaluate("node => getComputedStyle(node).color")
                for tool in await tools.all()
            ]
            danger = await page.evaluate(
                "getComputedStyle(document.body).getPropertyValue('--danger').trim()"
            )
            live_injected = await page.locator("#injected, .transcript img, .transcript i").count()

            service.publish(events.CallEnded(call_id="c1", reason="hangup", at=t0 + 1))
            await asyncio.to_thread(service.wait_for_call, "c1")
            await page.reload()  # a fresh page: the ended call comes from its record
            await expect(card).to_have_attribute("data-state", "ended")
            await expect(lines).to_have_text(expected)
            await expect(card.locator(".line.message")).to_have_count(1)
            await expect(card.locator(".line.tool.failed")).to_have_count(1)
            return {
                "colors": colors,
                "danger": danger,
                "live_injected": live_injected,
                "injected": await page.locator("#injected, .transcript img, .transcript i").count(),
                "not_pwned": await page.evaluate("window.pwned === undefined"),
            }

    facts = asyncio.run(scenario())
    ok_color, failed_color = facts["colors"]
    assert facts["danger"] == "#c62828"
    assert failed_color == "rgb(198, 40, 40)" != ok_color  # red only when the tool failed
    assert facts["live_injected"] == 0 and facts["injected"] == 0 and facts["not_pwned"]
