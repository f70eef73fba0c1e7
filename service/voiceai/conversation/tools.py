"""What happens when the model calls a tool in the middle of a reply.

The rules, in one place:
- the model's arguments are checked first; bad ones go back to the model as the tool's result
  (it may try again), never to the caller and never as a crash;
- `take_message` is stored (a `message.taken` event) and the model is told so;
- `transfer_to_person` and `end_call` end the reply: the session plays what was already said,
  then transfers or says goodbye and hangs up, through the same state table as an operator;
- a webhook slower than the filler delay gets a short filler ("One moment, please.") from the
  prompt cache; one that fails or times out gets an apology line, and the model is told it
  failed, so it answers without the data;
- each call is published as a `tool.called` event with its result and duration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from voiceai import events
from voiceai.engines.llm import ToolCall
from voiceai.tools.toolbox import Toolbox, ToolFailed

log = logging.getLogger(__name__)

Handover = Literal["transfer", "end_call"]


@dataclass(frozen=True)
class ToolOutcome:
    result: str  # what the model is told
    ok: bool
    handover: Handover | None = None  # the reply ends here, and the call goes on like this
    reason: str = ""


@dataclass(frozen=True)
class ToolLines:
    """Fixed phrases a tool call may need, by the call's language, spoken from the prompt
    cache (so the same words cost one synthesis per service, not one per call)."""

    filler: tuple[tuple[str, str], ...] = (
        ("en", "One moment, please."),
        ("ru", "Одну минуту, пожалуйста."),
    )
    failed: tuple[tuple[str, str], ...] = (
        ("en", "Sorry, I couldn't do that just now."),
        ("ru", "Извините, сейчас это не получилось."),
    )
    goodbye: tuple[tuple[str, str], ...] = (
        ("en", "Thank you for calling. Goodbye."),
        ("ru", "Спасибо за звонок. До свидания."),
    )
    filler_after_s: float = 0.7

    def say(self, which: Literal["filler", "failed", "goodbye"], language: str) -> str:
        lines = dict(getattr(self, which))
        return lines.get(language, lines["en"])


class ToolRunner:
    def __init__(
        self,
        call_id: str,
        toolbox: Toolbox,
        publish: Callable[[events.BaseEvent], object],
        lines: ToolLines,
        *,
        can_transfer: bool,
    ) -> None:
        self.call_id = call_id
        self.toolbox = toolbox
        self._publish = publish  # the session's: it keeps them for late viewers too
        self._lines = lines
        self._can_transfer = can_transfer

    def specs(self) -> list[dict[str, Any]]:
        return self.toolbox.specs()

    async def run(
        self, call: ToolCall, language: str, say: Callable[[str], Awaitable[None]]
    ) -> ToolOutcome:
        """Carry out `call`; `say` queues a fixed phrase after what the caller already hears."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        problem = self.toolbox.check(call.name, call.arguments)
        if problem is not None:
            outcome = ToolOutcome(f"error: {problem}", ok=False)
        elif (tool := self.toolbox.get(call.name)) is not None and tool.builtin:
            outcome = self._builtin(call)
        else:
            outcome = await self._webhook(call, language, say)
        duration_ms = round((loop.time() - started) * 1000)
        log.info(
            "call %s: tool %s %s in %d ms",
            self.call_id,
            call.name,
            "ok" if outcome.ok else "failed",
            duration_ms,
        )
        self._publish(
            events.ToolCalled(
                call_id=self.call_id,
                name=call.name,
                arguments=call.arguments,
                result=outcome.result,
                ok=outcome.ok,
                duration_ms=duration_ms,
            )
        )
        return outcome

    def _builtin(self, call: ToolCall) -> ToolOutcome:
        args = call.arguments
        reason = str(args.get("reason", ""))
        if call.name == "transfer_to_person":
            if not self._can_transfer:
                return ToolOutcome("error: there is no person to transfer to", ok=False)
            return ToolOutcome("transferring the caller", True, "transfer", reason)
        if call.name == "end_call":
            return ToolOutcome("ending the call", True, "end_call", reason)
        if call.name == "take_message":
            self._publish(
                events.MessageTaken(
                    call_id=self.call_id,
                    name=str(args.get("name", "")),
                    callback_number=str(args.get("callback_number", "")),
                    message=str(args.get("message", "")),
                )
            )
            return ToolOutcome("the message is saved and will be passed on", ok=True)
        return ToolOutcome(f"error: {call.name} is not available", ok=False)

    async def _webhook(
        self, call: ToolCall, language: str, say: Callable[[str], Awaitable[None]]
    ) -> ToolOutcome:
        work = asyncio.create_task(self.toolbox.run_webhook(call.name, call.arguments))
        try:
            done, _ = await asyncio.wait({work}, timeout=self._lines.filler_after_s)
            if not done:
                await say(self._lines.say("filler", language))  # no dead air meanwhile
            return ToolOutcome(await work, ok=True)
        except ToolFailed as exc:
            log.warning("call %s: %s", self.call_id, exc)
            await say(self._lines.say("failed", language))
            return ToolOutcome(
                f"error: the tool failed ({exc}); the caller was told it could not be done now",
                ok=False,
            )
        finally:
            work.cancel()  # the caller interrupted, or the call ended: nobody wants the answer
