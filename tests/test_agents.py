"""Agents by dialled number: the file's entries over the .env settings, one-line errors at
start (`voiceai serve` exits 2), and SIGHUP reloads that keep the agents in use on a bad file."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import free_port
from tests.test_config_and_cli import voiceai
from voiceai.agents import Agents, AgentsFileError, AgentsReloader, load_agents
from voiceai.app import call_policy, create_app
from voiceai.config import Settings
from voiceai.tools import Tool, load_tools

ROOT = Path(__file__).resolve().parent.parent

TWO_NUMBERS = """
default:
  greeting: This number is not in service; leave a message.
"15551230001":
  prompt: You answer for the bakery.
  greeting: Bakery, hello!
  language: EN
  voice: en:en-US-JennyNeural
  tools: [end_call, order_status]
  fallback_number: "+15551230100"
"+15551230002":
  prompt: Вы отвечаете за клинику.
  greeting: Клиника, здравствуйте!
  language: ru
"""

WEBHOOK = Tool(name="order_status", description="Look up an order.", url="http://127.0.0.1:9/")


def _settings(tmp_path: Path, **values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "system_prompt": "The .env prompt.",
        "greeting": "The .env greeting.",
        "fallback_number": "",
        "tts_voice": "",
        "stt_language": "auto",
        "database_url": f"sqlite:///{tmp_path}/calls.db",
        "media_dir": tmp_path / "media",
    }
    return Settings(**{**defaults, **values})


def _agents(tmp_path: Path, text: str, **settings: Any) -> Agents:
    path = tmp_path / "agents.yaml"
    path.write_text(text)
    return load_agents(path, _settings(tmp_path, **settings), {WEBHOOK.name: WEBHOOK})


def test_two_numbers_get_their_own_prompt_and_greeting_and_others_the_default(
    tmp_path: Path,
) -> None:
    agents = _agents(tmp_path, TWO_NUMBERS)
    bakery, clinic = agents.for_did("15551230001"), agents.for_did("15551230002")
    assert (bakery.prompt, bakery.greeting) == ("You answer for the bakery.", "Bakery, hello!")
    assert (clinic.prompt, clinic.greeting) == (
        "Вы отвечаете за клинику.",
        "Клиника, здравствуйте!",
    )
    assert agents.for_did("+15551230001") is bakery  # a DID with its + finds the same agent
    for unknown in ("15550000000", "unknown", "", None):
        other = agents.for_did(unknown)
        assert other.name == "default"
        assert other.greeting == "This number is not in service; leave a message."
    assert bakery.language == "en" and bakery.voices() == {"en": "en-US-JennyNeural"}
    assert bakery.toolbox.names == ("end_call", "order_status")
    assert bakery.fallback_number == "+15551230100"


def test_missing_fields_come_from_the_env_settings_not_from_default(tmp_path: Path) -> None:
    agents = _agents(
        tmp_path, TWO_NUMBERS, fallback_number="1000", tts_voice="ru:ru-RU-DmitryNeural"
    )
    clinic, default = agents.for_did("15551230002"), agents.for_did("1")
    assert clinic.fallback_number == "1000" and clinic.voice == "ru:ru-RU-DmitryNeural"
    assert clinic.call_language() == "ru"
    assert default.prompt == "The .env prompt." and default.call_language() is None
    # No `tools`: the built-ins, the transfer too now that there is a number to transfer to.
    assert clinic.toolbox.names == ("transfer_to_person", "end_call", "take_message")


def test_an_agent_maps_onto_the_call_policy(tmp_path: Path) -> None:
    settings = _settings(tmp_path, fallback_number="1000", apology="Sorry!")
    bakery = _agents(tmp_path, TWO_NUMBERS).for_did("15551230001")
    policy = bakery.policy(call_policy(settings))
    assert policy.system_prompt == "You answer for the bakery."
    assert policy.greeting == "Bakery, hello!"
    assert policy.fallback_number == "+15551230100"
    assert policy.apology == "Sorry!" and policy.turn == call_policy(settings).turn


def test_without_an_agents_file_the_settings_answer_with_every_tool(tmp_path: Path) -> None:
    tools = {WEBHOOK.name: WEBHOOK}
    agents = load_agents(None, _settings(tmp_path), tools)
    agent = agents.for_did("15551230001")
    assert agent is agents.default and agent.greeting == "The .env greeting."
    assert agent.toolbox.names == ("end_call", "take_message", "order_status")  # no number
    with_number = load_agents(None, _settings(tmp_path, fallback_number="1000"), tools)
    assert "transfer_to_person" in with_number.default.toolbox


def test_an_agents_file_without_default_leaves_other_numbers_to_the_settings(
    tmp_path: Path,
) -> None:
    agents = _agents(tmp_path, '"15551230001": {greeting: Hi}\n')
    assert agents.for_did("2").greeting == "The .env greeting."
    assert agents.for_did("2").toolbox.names == ("end_call", "take_message")


def test_the_example_agents_file_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHOP_API_TOKEN", "Bearer x")
    tools = load_tools(ROOT / "tools.example.yaml")
    agents = load_agents(ROOT / "agents.example.yaml", _settings(tmp_path), tools)
    assert set(agents.by_did) == {"15551230001", "74951234567"}
    assert "order_status" in agents.for_did("15551230001").toolbox


BAD_AGENTS = {
    "unknown-tool": (
        '"15551230001": {tools: [end_call, lookup]}\n',
        "entry '15551230001': tools: unknown tool 'lookup' (the built-ins and",
    ),
    "transfer-without-number": (
        '"15551230001": {tools: [transfer_to_person]}\n',
        "entry '15551230001': tools: transfer_to_person needs a fallback_number",
    ),
    "bad-number-key": ("reception: {greeting: Hi}\n", "entry 'reception': must be \"default\" or"),
    "bad-language": ("default: {language: fr}\n", "entry 'default': language: Input should be"),
    "bad-voice": ("default: {voice: Jenny}\n", "entry 'default': voice: invalid TTS voice 'Jenny'"),
    "bad-fallback": (
        '"1": {fallback_number: "100 XML default"}\n',
        "entry '1': fallback_number: must be digits",
    ),
    "unknown-field": ("default: {greting: Hi}\n", "entry 'default': greting: Extra inputs"),
    "listed-twice": (
        '"15551230001": {}\n"+15551230001": {}\n',
        "entry '+15551230001': the number 15551230001 is listed twice",
    ),
    "duplicate-key": (
        '"15551230001": {}\n"15551230001": {}\n',
        "not valid YAML: duplicate key '15551230001' (line 2, column 1)",
    ),
    "not-a-mapping": ("- default\n", 'must map dialled numbers (and "default") to their agents'),
    "entry-not-a-mapping": ("default: [a]\n", "entry 'default': must be a mapping"),
}


@pytest.mark.parametrize(("text", "expected"), BAD_AGENTS.values(), ids=BAD_AGENTS.keys())
def test_a_bad_agents_file_is_one_line_naming_the_entry(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(AgentsFileError) as error:
        _agents(tmp_path, text)
    message = str(error.value)
    assert message.startswith(f"invalid setting VOICEAI_AGENTS_FILE: {tmp_path}/agents.yaml: ")
    assert expected in message and "\n" not in message


# --- reloading -----------------------------------------------------------------------------


def _files(tmp_path: Path, agents: str, tools: str = "") -> Settings:
    (tmp_path / "agents.yaml").write_text(agents)
    (tmp_path / "tools.yaml").write_text(tools)
    return _settings(
        tmp_path, agents_file=tmp_path / "agents.yaml", tools_file=tmp_path / "tools.yaml"
    )


def test_a_reload_applies_the_new_agents(tmp_path: Path) -> None:
    settings = _files(tmp_path, '"1": {greeting: Old}\n')
    applied: list[Agents] = []
    (tmp_path / "agents.yaml").write_text('"1": {greeting: New}\n"2": {tools: [ping]}\n')
    (tmp_path / "tools.yaml").write_text("- {name: ping, description: d, url: 'http://h/'}\n")
    assert asyncio.run(AgentsReloader(settings, applied.append).reload()) is True
    [agents] = applied
    assert agents.for_did("1").greeting == "New" and "ping" in agents.for_did("2").toolbox


@pytest.mark.parametrize(
    ("agents", "tools", "named"),
    [
        ('"1": {tools: [nope]}\n', "", "VOICEAI_AGENTS_FILE"),
        (
            '"1": {}\n',
            "- {name: end_call, description: d, url: 'http://h/'}\n",
            "VOICEAI_TOOLS_FILE",
        ),
    ],
    ids=["agents-file", "tools-file"],
)
def test_a_broken_file_on_reload_keeps_the_agents_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, agents: str, tools: str, named: str
) -> None:
    settings = _files(tmp_path, '"1": {greeting: Old}\n')
    in_use = load_agents(settings.agents_file, settings, {})
    current = [in_use]
    (tmp_path / "agents.yaml").write_text(agents)
    (tmp_path / "tools.yaml").write_text(tools)
    with caplog.at_level(logging.INFO, logger="voiceai.agents"):
        assert asyncio.run(AgentsReloader(settings, current.append).reload()) is False
    assert current == [in_use] and in_use.for_did("1").greeting == "Old"
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("reload refused, the agents in use stay: invalid setting " + named)
    assert "\n" not in line


def test_sighup_reloads_the_files_in_the_running_loop(tmp_path: Path) -> None:
    settings = _files(tmp_path, '"1": {greeting: Old}\n')

    async def scenario() -> list[Agents]:
        applied: list[Agents] = []
        loop = asyncio.get_running_loop()
        reloader = AgentsReloader(settings, applied.append)
        assert reloader.install(loop)
        try:
            (tmp_path / "agents.yaml").write_text('"1": {greeting: New}\n')
            os.kill(os.getpid(), signal.SIGHUP)  # without the handler this ends the test run
            for _ in range(200):
                if applied:
                    break
                await asyncio.sleep(0.01)
        finally:
            reloader.uninstall(loop)
        return applied

    [agents] = asyncio.run(scenario())
    assert agents.for_did("1").greeting == "New"


def test_sighup_reload_is_off_when_the_loop_is_not_in_the_main_thread(tmp_path: Path) -> None:
    installed: list[bool] = []

    async def install() -> None:
        reloader = AgentsReloader(_settings(tmp_path), lambda agents: None)
        installed.append(reloader.install(asyncio.get_running_loop()))

    thread = threading.Thread(target=asyncio.run, args=(install(),))
    thread.start()
    thread.join(10)
    assert installed == [False]


def test_the_app_serves_the_agents_of_its_files(tmp_path: Path, stt: Any, tts: Any) -> None:
    settings = _files(tmp_path, TWO_NUMBERS.replace("order_status", "take_message"))
    with TestClient(create_app(settings, stt=stt, tts=tts)) as client:
        agents = client.app.state.services.agents  # type: ignore[attr-defined]
        assert agents.for_did("15551230001").greeting == "Bakery, hello!"
        assert agents.for_did("15550000000").name == "default"


def test_every_agents_greeting_and_the_tool_lines_are_made_before_the_first_call(
    tmp_path: Path, stt: Any, tts: Any
) -> None:
    settings = _files(tmp_path, TWO_NUMBERS.replace("order_status", "take_message"))
    with TestClient(create_app(settings, stt=stt, tts=tts)):
        made = {p.name for p in (settings.media_dir / "prompts").glob("prompt-*.wav")}

    def file_of(text: str, language: str) -> str:
        key = hashlib.sha256(f"{language}|{settings.fork_rate}|{text}".encode()).hexdigest()[:16]
        return f"prompt-{key}.wav"

    assert file_of("Bakery, hello!", "en") in made
    assert file_of("Клиника, здравствуйте!", "ru") in made
    assert file_of("One moment, please.", "en") in made  # the bakery has tools: its filler


def test_an_agent_with_its_own_voice_gets_its_own_voice_and_prompt_cache(
    tmp_path: Path, stt: Any, tts: Any
) -> None:
    settings = _files(tmp_path, TWO_NUMBERS.replace("order_status", "take_message"))
    settings = settings.model_copy(update={"tts": "edge", "tts_voice": ""})
    with TestClient(create_app(settings, stt=stt, tts=tts)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        bakery = services.agents.for_did("15551230001")
        voiced = services.engines_for(bakery)
        assert voiced.tts.engines[0].voices["en"] == "en-US-JennyNeural"
        assert voiced.prompts is not services.engines.prompts
        assert services.engines_for(bakery) is voiced  # made once a voice
        assert services.engines_for(services.agents.for_did("15550000000")) is services.engines


# --- `voiceai serve` -----------------------------------------------------------------------


def test_serve_with_a_bad_agents_file_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "agents.yaml").write_text('default: {}\n"15551230001": {tools: [lookup]}\n')
    env = {
        "VOICEAI_AGENTS_FILE": "agents.yaml",
        "VOICEAI_PORT": str(free_port()),
        "HF_HUB_OFFLINE": "1",
    }
    started = time.monotonic()
    result = voiceai("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "invalid setting VOICEAI_AGENTS_FILE: agents.yaml: entry '15551230001': " in lines[0]
    assert "unknown tool 'lookup'" in lines[0]
    assert time.monotonic() - started < 60  # refused before any model loads


def test_serve_with_a_bad_tools_file_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "tools.yaml").write_text("- name: lookup\n  description: d\n")
    env = {"VOICEAI_TOOLS_FILE": "tools.yaml", "HF_HUB_OFFLINE": "1"}
    result = voiceai("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert (
        "invalid setting VOICEAI_TOOLS_FILE: tools.yaml: tool 'lookup': url: Field required" in line
    )


def test_serve_reloads_on_sighup_and_keeps_its_agents_on_a_broken_file(tmp_path: Path) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text('"15551230001": {greeting: Hello}\n')
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOICEAI_")},
        "VOICEAI_AGENTS_FILE": str(agents_file),
        "VOICEAI_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "voiceai", "serve"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in server.stderr], daemon=True
    ).start()

    def wait_for(text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                assert server.poll() is None, f"the service ended (exit {server.returncode})"
                continue
            if text in line:
                return line
        raise AssertionError(f"no log line with {text!r}")

    def healthy() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

    try:
        wait_for("Application startup complete", timeout=120)
        assert healthy()
        agents_file.write_text('"15551230001": {tools: [no_such_tool]}\n')
        server.send_signal(signal.SIGHUP)
        refused = wait_for("reload refused")
        assert "entry '15551230001': tools: unknown tool 'no_such_tool'" in refused
        assert server.poll() is None and healthy()
        agents_file.write_text('"15551230001": {greeting: Hi}\n"15551230002": {greeting: Yo}\n')
        server.send_signal(signal.SIGHUP)
        reloaded = wait_for("reloaded VOICEAI_AGENTS_FILE")
        assert f"{agents_file}: 2 numbers, 0 webhook tools" in reloaded
        assert server.poll() is None and healthy()
    finally:
        server.terminate()
        server.wait(timeout=30)
