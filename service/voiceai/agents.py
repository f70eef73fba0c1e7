"""Who answers a dialled number: its prompt, greeting, language, voice, tools and fallback
number (VOICEAI_AGENTS_FILE), with the `.env` settings as the default agent; reloaded on SIGHUP
without touching calls in progress, which keep the agent they started with."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from voiceai.config import Settings, SettingsError
from voiceai.tools import BUILTIN_TOOLS, TRANSFER_TO_PERSON, Tool, Toolbox, load_tools
from voiceai.tools.declarations import describe_errors
from voiceai.yamlfile import YamlFileError, load_yaml

if TYPE_CHECKING:  # the conversation's module loads models' code; this one stays light
    from voiceai.conversation.session import CallPolicy

log = logging.getLogger(__name__)

DEFAULT = "default"
RELOAD_TIMEOUT_S = 10.0  # two small files; longer means a stuck file system
_DID = re.compile(r"\+?([0-9]{1,20})")  # as the dialplan passes it: digits, no +
_NUMBER = re.compile(r"\+?[0-9]{1,20}")  # what a transfer accepts (telephony/commands.py)


class AgentsFileError(SettingsError):
    """VOICEAI_AGENTS_FILE is unusable; one line naming the file, the entry and the problem."""


@dataclass(frozen=True)
class Agent:
    """Everything a call takes from the number it was dialled on; immutable, so a call keeps
    the agent it started with whatever a reload does."""

    name: str  # "default", a DID, or "settings" (the .env settings)
    prompt: str
    greeting: str
    language: Literal["en", "ru", "auto"]  # what callers speak; auto = detected per turn
    voice: str  # edge-tts voices as VOICEAI_TTS_VOICE writes them; "" = built-in
    fallback_number: str
    toolbox: Toolbox

    def policy(self, base: CallPolicy) -> CallPolicy:
        """`base` (from the settings) with this agent's prompt, greeting, fallback number and
        tools; language and voice are on the agent for the call to apply."""
        return dataclasses.replace(
            base,
            system_prompt=self.prompt,
            greeting=self.greeting,
            fallback_number=self.fallback_number,
            tools=self.toolbox if len(self.toolbox) else None,
        )

    def voices(self) -> dict[str, str]:
        """The voice setting by language (engines/tts.py's parse_voices); {} = built-in."""
        from voiceai.engines.tts import parse_voices

        return parse_voices(self.voice)

    def call_language(self) -> str | None:
        """The language a call starts in: None = detect it from the caller's first words."""
        return None if self.language == "auto" else self.language


@dataclass(frozen=True)
class Agents:
    default: Agent  # unknown numbers, or calls without one
    by_did: Mapping[str, Agent]
    tools: Mapping[str, Tool]  # the webhook tools of VOICEAI_TOOLS_FILE

    def for_did(self, did: str | None) -> Agent:
        """The agent of a dialled number as the fork metadata's "did" carries it."""
        match = _DID.fullmatch(did.strip()) if did else None
        return self.by_did.get(match.group(1), self.default) if match else self.default


class AgentEntry(BaseModel):
    """One entry as written in the file; a missing field comes from the settings."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    greeting: str | None = None
    language: Literal["en", "ru", "auto"] | None = None
    voice: str | None = None
    tools: list[str] | None = None
    fallback_number: str | None = None

    @field_validator("language", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("voice")
    @classmethod
    def _edge_voices(cls, value: str | None) -> str | None:
        from voiceai.engines.tts import parse_voices

        if value is not None:
            parse_voices(value)  # its ValueError names the bad voice
        return value

    @field_validator("fallback_number")
    @classmethod
    def _dialable(cls, value: str | None) -> str | None:
        if value is not None and value.strip() and not _NUMBER.fullmatch(value.strip()):
            raise ValueError("must be digits with an optional leading + (or empty: none)")
        return value.strip() if value is not None else None


def settings_agent(settings: Settings, tools: Mapping[str, Tool]) -> Agent:
    """The agent the `.env` settings describe, for numbers the agents file leaves out."""
    return _agent("settings", AgentEntry(), settings, tools)


def load_agents(path: Path | None, settings: Settings, tools: Mapping[str, Tool]) -> Agents:
    """The agents of `path` (None = no file: the settings answer every number, with the
    built-ins and every webhook tool). `tools` are the webhook tools (load_tools)."""
    if path is None:  # else a tools file without an agents file would offer nothing
        agent = _agent("settings", AgentEntry(), settings, tools, every_webhook=True)
        return Agents(agent, {}, dict(tools))

    def fail(entry: str | None, problem: str) -> AgentsFileError:
        where = f"entry {entry!r}: " if entry is not None else ""
        return AgentsFileError(f"invalid setting VOICEAI_AGENTS_FILE: {path}: {where}{problem}")

    try:
        document = load_yaml(path, typed=False)
    except YamlFileError as exc:
        raise fail(None, str(exc)) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise fail(None, 'must map dialled numbers (and "default") to their agents')
    default: Agent | None = None
    by_did: dict[str, Agent] = {}
    for key, value in document.items():
        match = _DID.fullmatch(key.strip())
        if key != DEFAULT and match is None:
            raise fail(key, 'must be "default" or a dialled number (digits, optional leading +)')
        if value == "":  # `15551230001:` alone: the settings as they are
            value = {}
        if not isinstance(value, dict):
            raise fail(key, "must be a mapping (prompt, greeting, language, voice, tools...)")
        try:
            entry = AgentEntry.model_validate(value)
            agent = _agent(key, entry, settings, tools)
        except ValidationError as exc:
            raise fail(key, describe_errors(exc)) from None
        except ValueError as exc:
            raise fail(key, str(exc)) from None
        if match is None:
            default = agent
            continue
        did = match.group(1)
        if did in by_did:
            raise fail(key, f"the number {did} is listed twice")
        by_did[did] = dataclasses.replace(agent, name=did)
    return Agents(default or settings_agent(settings, tools), by_did, dict(tools))


def load_configured_agents(settings: Settings) -> Agents:
    """VOICEAI_TOOLS_FILE then VOICEAI_AGENTS_FILE, as start-up and SIGHUP read them."""
    tools = load_tools(settings.tools_file, default_timeout_s=settings.tool_timeout_s)
    return load_agents(settings.agents_file, settings, tools)


def _agent(
    name: str,
    entry: AgentEntry,
    settings: Settings,
    tools: Mapping[str, Tool],
    *,
    every_webhook: bool = False,
) -> Agent:
    fallback = entry.fallback_number
    if fallback is None:
        fallback = settings.fallback_number.strip()
    names = entry.tools
    if names is None:
        names = _default_tools(fallback) + (list(tools) if every_webhook else [])
    if TRANSFER_TO_PERSON in names and not fallback:
        raise ValueError(
            f"tools: {TRANSFER_TO_PERSON} needs a fallback_number (here or "
            "VOICEAI_FALLBACK_NUMBER) to transfer to"
        )
    return Agent(
        name=name,
        prompt=entry.prompt if entry.prompt is not None else settings.prompt(),
        greeting=entry.greeting if entry.greeting is not None else settings.greeting,
        language=entry.language or settings.stt_language,
        voice=entry.voice if entry.voice is not None else settings.tts_voice,
        fallback_number=fallback,
        toolbox=_toolbox(names, tools),
    )


def _default_tools(fallback_number: str) -> list[str]:
    """The built-ins; a transfer only where there is a number to transfer to."""
    return [name for name in BUILTIN_TOOLS if name != TRANSFER_TO_PERSON or fallback_number]


def _toolbox(names: list[str], tools: Mapping[str, Tool]) -> Toolbox:
    known = {**BUILTIN_TOOLS, **tools}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"tools: unknown tool {unknown[0]!r} (the built-ins and VOICEAI_TOOLS_FILE's: "
            f"{', '.join(known)})"
        )
    if len(set(names)) != len(names):
        raise ValueError("tools: a tool is listed twice")
    return Toolbox(known[name] for name in names)


class AgentsReloader:
    """Reads both files again on SIGHUP and hands the new agents to `apply`; a broken file is
    one error line, and the agents in use stay."""

    def __init__(self, settings: Settings, apply: Callable[[Agents], None]) -> None:
        self._settings = settings
        self._apply = apply
        self._lock = asyncio.Lock()  # two quick signals: applied in the order they came
        self._tasks: set[asyncio.Task[bool]] = set()

    async def reload(self) -> bool:
        """True when the new agents were applied."""
        async with self._lock:
            try:
                agents = await asyncio.wait_for(
                    asyncio.to_thread(load_configured_agents, self._settings), RELOAD_TIMEOUT_S
                )
            except SettingsError as exc:
                log.error("reload refused, the agents in use stay: %s", exc)
                return False
            except TimeoutError:
                log.error(
                    "reload refused, the agents in use stay: the files took over %.0f s to read",
                    RELOAD_TIMEOUT_S,
                )
                return False
            except Exception:  # a reload must never take the service down
                log.exception("reload failed, the agents in use stay")
                return False
            self._apply(agents)
        log.info(
            "reloaded VOICEAI_AGENTS_FILE %s: %d numbers%s, %d webhook tools",
            self._settings.agents_file or "(none)",
            len(agents.by_did),
            " and a default" if agents.default.name == DEFAULT else "",
            len(agents.tools),
        )
        return True

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Reload on SIGHUP; False where signals cannot reach this loop (not the main thread,
        as when tests run the app in a thread)."""
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_signal)
        except (RuntimeError, ValueError, NotImplementedError, AttributeError):
            log.info("SIGHUP reload is off: the event loop does not run in the main thread")
            return False
        return True

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError, AttributeError):
            loop.remove_signal_handler(signal.SIGHUP)  # False, not an error, when none is set

    def _on_signal(self) -> None:
        log.info("SIGHUP: reloading the tools and agents files")
        task = asyncio.get_running_loop().create_task(self.reload(), name="agents-reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
