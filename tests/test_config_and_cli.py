"""Settings and the `voiceai` command: clear errors, masked secrets, a simulated call."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningService, free_port, words
from tests.speech import KEYWORDS, Speech
from voiceai.engines.stt import resolve_model
from voiceai.logs import OneLineFormatter, SecretScrubber


def voiceai(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAI_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "voiceai", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_config_prints_settings_with_secrets_masked(tmp_path: Path) -> None:
    env = {
        "VOICEAI_ESL_PASSWORD": "esl-s3cret",
        "VOICEAI_API_TOKEN": "tok-s3cret",
        "VOICEAI_PORT": "9090",
    }
    result = voiceai("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "VOICEAI_PORT=9090" in result.stdout
    assert "VOICEAI_ESL_PASSWORD=********" in result.stdout
    assert "VOICEAI_FORK_PASSWORD=(not set)" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr


def test_invalid_setting_stops_with_one_line_naming_it(tmp_path: Path) -> None:
    result = voiceai("check-config", env={"VOICEAI_END_OF_TURN_MS": "soon"}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "VOICEAI_END_OF_TURN_MS" in lines[0]


def test_out_of_range_and_unknown_choices_are_refused(tmp_path: Path) -> None:
    result = voiceai(
        "serve", env={"VOICEAI_STT_LANGUAGE": "fr", "VOICEAI_PORT": "70000"}, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "VOICEAI_STT_LANGUAGE" in result.stderr and "VOICEAI_PORT" in result.stderr


def test_settings_come_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("VOICEAI_END_OF_TURN_MS=900\nVOICEAI_STT_LANGUAGE=RU\n")
    result = voiceai("check-config", cwd=tmp_path)
    assert "VOICEAI_END_OF_TURN_MS=900" in result.stdout
    assert "VOICEAI_STT_LANGUAGE=ru" in result.stdout


def test_log_lines_have_configured_secrets_scrubbed() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "auth %s failed", ("pw-123",), None)
    line = OneLineFormatter(SecretScrubber(["pw-123"]), "%(message)s").format(record)
    assert line == "auth *** failed"


def test_check_config_masks_the_password_inside_urls(tmp_path: Path) -> None:
    env = {
        "VOICEAI_DATABASE_URL": "postgresql+psycopg://voice:db-s3cret@db.example/voiceai",
        "VOICEAI_OLLAMA_URL": "http://bob:llm-s3cret@127.0.0.1:11434",
        "VOICEAI_SYSTEM_PROMPT": "Be brief.\nVOICEAI_PORT=1",
    }
    result = voiceai("check-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "VOICEAI_DATABASE_URL=postgresql+psycopg://voice:***@db.example/voiceai" in result.stdout
    assert "VOICEAI_OLLAMA_URL=http://bob:***@127.0.0.1:11434" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr
    # A multi-line value cannot pass for another setting.
    assert "VOICEAI_SYSTEM_PROMPT=Be brief.\\nVOICEAI_PORT=1" in result.stdout
    assert "VOICEAI_PORT=8080" in result.stdout.splitlines()


def test_an_unparsable_database_url_is_refused_without_showing_it(tmp_path: Path) -> None:
    url = "postgresql://voice:db-s3cret@db.example:port/voiceai"
    result = voiceai("check-config", env={"VOICEAI_DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 2
    assert "VOICEAI_DATABASE_URL" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


def _file_in_the_way(tmp_path: Path) -> Path:
    # Root may write anywhere, but no one can make a folder beneath a file.
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("VOICEAI_DATABASE_URL", "postgresql+psycopg://voice:db-s3cret@127.0.0.1:1/voiceai"),
        ("VOICEAI_DATABASE_URL", "sqlite:///{file}/calls.db"),
        ("VOICEAI_DATABASE_URL", "nosuchdb://voice:db-s3cret@host/voiceai"),
        ("VOICEAI_MEDIA_DIR", "{file}/media"),
        ("VOICEAI_STT_MODEL", "{tmp}/no-such-model"),
        ("VOICEAI_STT_MODEL", "{tmp}"),
        ("VOICEAI_STT_MODEL", "small"),
        ("VOICEAI_ESL_PASSWORD", "s3cret-line-one\nline-two"),
    ],
    ids=[
        "db-unreachable",
        "db-folder",
        "db-kind",
        "media-unwritable",
        "stt-missing",
        "stt-no-model-bin",
        "stt-not-downloaded",
        "esl-multi-line",
    ],
)
def test_a_bad_setting_stops_serve_with_one_line_naming_it(
    tmp_path: Path, setting: str, value: str
) -> None:
    value = value.format(file=_file_in_the_way(tmp_path), tmp=tmp_path)
    env = {setting: value, "VOICEAI_PORT": str(free_port()), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = voiceai("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"invalid setting {setting}" in lines[0]
    assert "s3cret" not in result.stderr
    assert time.monotonic() - started < 60  # refused before any model loads


def test_auto_stt_model_is_the_packaged_offline_one() -> None:
    path = Path(resolve_model("auto"))
    assert (path / "model.bin").exists()
    assert resolve_model("small") == "small"


def test_simulate_prints_the_transcripts_of_a_call(service: RunningService, speech: Speech) -> None:
    result = voiceai(
        "simulate",
        str(speech["booking"]),
        str(speech["callback"]),
        "--url",
        service.http,
        "--speed",
        "0",
        "--rate",
        "8k",
        "--call-id",
        "sim-1",
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("caller")]
    assert len(lines) == 2
    assert KEYWORDS["booking"] <= words(lines[0])
    assert KEYWORDS["callback"] <= words(lines[1])
    assert "call ended" in result.stdout
    assert len(service.wait_for_call("sim-1")["turns"]) == 2


def test_simulate_plays_freeswitch_and_writes_the_whole_call(
    service_factory, speech: Speech, tmp_path: Path
) -> None:
    from tests.conftest import free_port
    from voiceai.sim.ollama_server import OllamaEmulator

    esl_port = free_port()
    with OllamaEmulator(reply=lambda m: "Sure, a table for two at seven. See you tomorrow!") as llm:
        service = service_factory(
            esl_port=esl_port, esl_password="sim-pw", llm="ollama", ollama_url=llm.url, tts="piper"
        )
        out = tmp_path / "call.wav"
        env = {"VOICEAI_ESL_PORT": str(esl_port), "VOICEAI_ESL_PASSWORD": "sim-pw"}
        result = voiceai(
            "simulate",
            str(speech["booking"]),
            "--url",
            service.http,
            "--rate",
            "8k",
            "--out",
            str(out),
            env=env,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("bot: Hello, thank you for calling") for line in lines)
    assert any(line.startswith("bot: Sure, a table for two") for line in lines)
    assert any("after the caller's last word" in line and "playing" in line for line in lines)
    with wave.open(str(out)) as recording:
        assert recording.getnchannels() == 2
        assert recording.getnframes() / recording.getframerate() > 5


def test_simulate_says_so_when_the_service_is_down(speech: Speech) -> None:
    result = voiceai("simulate", str(speech["booking"]), "--url", "http://127.0.0.1:9")
    assert result.returncode != 0
    assert "cannot reach" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_is_open_and_the_api_needs_the_token(service_factory) -> None:
    service = service_factory(api_token="t0ken")
    assert service.get("/healthz").json() == {"status": "ok"}
    assert service.get("/api/calls/nope").status_code == 401
    assert (
        service.get("/api/calls/nope", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    found = service.get("/api/calls/nope", headers={"Authorization": "Bearer t0ken"})
    assert found.status_code == 404
    assert "nope" in found.json()["detail"]


def test_live_socket_needs_the_token_when_set(service_factory) -> None:
    service = service_factory(api_token="t0ken")
    response = httpx.get(
        service.http + "/ws/live",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert response.status_code == 401


def test_serve_without_a_token_listens_on_loopback_only_and_says_so(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VOICEAI_")},
        "VOICEAI_HOST": "0.0.0.0",
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
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None, "did not start"
                time.sleep(0.2)
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert "no VOICEAI_API_TOKEN set: listening on 127.0.0.1 only" in stderr
    local_addresses = {line.split()[3] for line in listening.splitlines()}
    assert local_addresses == {f"127.0.0.1:{port}"}


def test_speech_recognition_uses_a_worker_a_core_with_one_thread_each_by_default() -> None:
    from voiceai.config import Settings, available_cores

    cores = available_cores()
    assert Settings().stt_concurrency() == (cores, 1)
    assert Settings(stt_workers=1).stt_concurrency() == (1, cores)
    assert Settings(stt_workers=3, stt_threads=2).stt_concurrency() == (3, 2)
