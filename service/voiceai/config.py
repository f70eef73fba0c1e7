"""All settings of the service, read once from the environment (prefix VOICEAI_) or `.env`."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from voiceai.telephony.fork import SWITCH_NAME

CALLS_PER_CORE = 2  # bench/capacity.py, tiny.en, 2 cores: 5 calls p50 0.9 s, 10 calls 1.3 s
ENV_PREFIX = "VOICEAI_"


def available_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Web server
    host: str = Field("127.0.0.1", description="Address the service listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port of the REST API and fork socket.")
    api_token: SecretStr = Field(
        SecretStr(""), description="Bearer token required on /api and /ws/live; empty = none."
    )
    allowed_hosts: str = Field(
        "",
        description="Host names the service answers to besides IP addresses, localhost and this "
        "machine's names (comma list, `*.example.com`; `*` = any).",
    )
    max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body; a larger one gets 413 before it is read.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # FreeSWITCH
    esl_host: str = Field("127.0.0.1", description="FreeSWITCH event socket host.")
    esl_port: int = Field(8021, ge=1, le=65535, description="FreeSWITCH event socket port.")
    esl_password: SecretStr = Field(SecretStr(""), description="FreeSWITCH event socket password.")
    esl_heartbeat_s: float = Field(
        5.0, ge=0.1, le=60, description="`api status` this often; no answer within it = down."
    )
    freeswitches: str = Field(
        "",
        description="Several FreeSWITCH, as `name=host:port,...` (the name is the switch's "
        "FS_SWITCHNAME); replaces VOICEAI_ESL_HOST/PORT; all use VOICEAI_ESL_PASSWORD.",
    )
    fork_user: str = Field("", description="Basic-auth user mod_audio_fork must present.")
    fork_password: SecretStr = Field(
        SecretStr(""), description="Basic-auth password for the fork socket; empty = no auth."
    )

    # Speech to text
    stt_model: str = Field(
        "auto",
        description="faster-whisper model: a hub name (base, small...), a local path, or auto "
        "(the packaged offline model when installed, else the hub model `base`).",
    )
    stt_device: Literal["cpu", "cuda", "auto"] = "cpu"
    stt_compute_type: str = Field(
        "int8", description="CTranslate2 compute type (int8, float16...)."
    )
    stt_language: Literal["en", "ru", "auto"] = Field(
        "auto", description="Language callers speak; auto detects per turn (multilingual model)."
    )
    stt_workers: int = Field(0, ge=0, le=16, description="Transcriptions at once; 0 = a core each.")
    stt_threads: int = Field(0, ge=0, le=64, description="CPU threads a transcription; 0 = auto.")
    stt_timeout_s: float = Field(30.0, gt=0, description="Longest a transcription may take.")
    stt_no_speech_threshold: float = Field(
        0.6, ge=0, le=1, description="Segments Whisper rates more likely silence are dropped."
    )
    stt_engine: Literal["whisper", "openai"] = Field(
        "whisper",
        description="whisper (faster-whisper in this process) or openai (an OpenAI-compatible "
        "transcription server at VOICEAI_STT_URL, asked for VOICEAI_STT_MODEL).",
    )
    stt_url: str = Field(
        "", description="Base URL of the transcription server, e.g. http://gpu-box:8000/v1."
    )
    stt_api_key: SecretStr = Field(
        SecretStr(""), description="Bearer key of the transcription server; empty = none."
    )

    # Turn detection
    vad: Literal["silero", "webrtc"] = Field(
        "silero",
        description="Speech detector: silero (neural, tells speech from line noise) or webrtc.",
    )
    vad_threshold: float = Field(
        0.5, ge=0.05, le=0.95, description="Speech probability that counts as speech (silero)."
    )
    vad_aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode, 3 = strictest.")
    pause_ms: int = Field(
        120, ge=60, le=1000, description="Silence after which a turn is transcribed and judged."
    )
    end_of_turn_ms: int = Field(
        700,
        ge=100,
        le=5000,
        description="Silence that ends a turn judged neither finished nor unfinished.",
    )
    incomplete_turn_ms: int = Field(
        1200,
        ge=100,
        le=5000,
        description="Silence that ends a turn judged unfinished (it ends in 'for', 'and', ...).",
    )
    turn_model: Literal["smart-turn", "off"] = Field(
        "smart-turn", description="End-of-turn model heard at each pause (off: words only)."
    )
    turn_complete_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Turn-model probability that counts as finished."
    )
    min_speech_ms: int = Field(
        200, ge=20, le=2000, description="Voiced audio needed before a turn starts."
    )
    babble_margin_db: float = Field(
        8.0,
        ge=0.0,
        le=30.0,
        description="With other voices behind the caller, how far over them the caller's speech "
        "must stand to count (0: no level gate on babble).",
    )
    resume_hold_ms: int = Field(
        300,
        ge=0,
        le=2000,
        description="Longest a reply's first audio waits while a caller who just finished a "
        "turn makes a sound that may be them going on.",
    )
    max_utterance_ms: int = Field(
        20000, ge=1000, le=120000, description="A turn longer than this is cut and transcribed."
    )
    pre_roll_ms: int = Field(
        300, ge=0, le=2000, description="Audio kept before speech start, so no syllable is lost."
    )

    # Dialog and LLM
    llm: Literal["ollama", "embedded", "auto", "openai"] = Field(
        "auto",
        description="ollama, embedded (llama.cpp), auto (Ollama when it answers), or openai (an "
        "OpenAI-compatible server at VOICEAI_OPENAI_URL).",
    )
    ollama_url: str = Field("http://127.0.0.1:11434", description="Ollama server URL.")
    ollama_model: str = Field("llama3.2:3b", description="Ollama model name.")
    ollama_keep_alive: str = Field("30m", description="How long Ollama keeps the model loaded.")
    embedded_model: str = Field(
        "auto", description="GGUF file for the embedded engine; auto = the packaged SmolLM2."
    )
    openai_url: str = Field(
        "", description="Base URL of an OpenAI-compatible chat server, e.g. http://gpu-box:8000/v1."
    )
    openai_model: str = Field("", description="The model that server is asked for.")
    openai_api_key: SecretStr = Field(
        SecretStr(""), description="Bearer key of the OpenAI-compatible chat server; empty = none."
    )
    llm_timeout_s: float = Field(
        8.0, gt=0, le=120, description="Longest wait for the LLM's first token."
    )
    llm_max_tokens: int = Field(200, ge=16, le=4096, description="Longest reply, in tokens.")
    system_prompt: str = Field(
        "You are a friendly, concise phone receptionist. Answer in one or two short sentences, "
        "in the caller's language. Never use lists, markdown or emoji: your words are spoken.",
        description="System prompt of every call.",
    )
    system_prompt_file: Path | None = Field(
        None, description="A file whose text replaces VOICEAI_SYSTEM_PROMPT."
    )
    greeting: str = Field(
        "Hello, thank you for calling. How can I help you?",
        description="Spoken when a call is answered; empty = none.",
    )
    apology: str = Field(
        "I'm sorry, I'm having trouble right now.",
        description="Spoken when the LLM fails, before the transfer or the polite end.",
    )
    fallback_number: str = Field(
        "", description="Number or extension a failing or DTMF-requested call is sent to."
    )
    transfer_digit: str = Field(
        "0",
        pattern=r"^[0-9*#]?$",
        description="DTMF digit that transfers to a person; empty = off.",
    )

    # Tools and agents (service/voiceai/tools, service/voiceai/agents.py)
    tools_file: Path | None = Field(
        None, description="YAML file declaring webhook tools the model may call; empty = none."
    )
    agents_file: Path | None = Field(
        None,
        description="YAML file mapping dialled numbers to their prompt, greeting, voice, tools; "
        "empty = these settings for every call.",
    )
    tool_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Longest a webhook tool may take (unless it sets its own)."
    )
    tool_filler_ms: int = Field(
        700, ge=0, le=10000, description="A tool slower than this gets a short filler line."
    )
    max_tool_rounds: int = Field(
        3, ge=1, le=10, description="Tool calls the model may make, one after another, in a turn."
    )

    # Speech synthesis
    tts: Literal["edge", "piper", "espeak", "auto"] = Field(
        "auto", description="First TTS engine tried; the offline ones follow it as fallbacks."
    )
    tts_voice: str = Field(
        "",
        description="Voices by language, e.g. `en:en-US-GuyNeural,ru:ru-RU-DmitryNeural`; "
        "empty = built-in defaults.",
    )
    tts_timeout_s: float = Field(
        3.0, gt=0, le=60, description="Longest edge-tts may take before the fallback speaks."
    )

    # Capacity
    max_calls: int = Field(
        0,
        ge=0,
        le=10000,
        description="Calls at once; a fork beyond it is refused (close 1013). 0: 2 per CPU core.",
    )

    # Turn-taking
    barge_in_min_ms: int = Field(
        250, ge=0, le=3000, description="Caller speech that interrupts the bot; shorter is ignored."
    )

    # Operator features
    fork_url: str = Field(
        "",
        description="Websocket base FreeSWITCH uses to reach this service, for forks the service "
        "starts itself (outbound calls); empty = ws://127.0.0.1:VOICEAI_PORT.",
    )
    fork_rate: Literal[8000, 16000] = Field(
        16000, description="Sample rate of forks the service starts itself (outbound calls)."
    )
    partial_transcripts: bool = Field(
        True, description="Publish partial transcripts about once a second while callers speak."
    )
    record_calls: bool = Field(
        False, description="Record every call (uuid_record) into VOICEAI_MEDIA_DIR/recordings."
    )
    retention_days: int = Field(
        90, ge=0, description="Call records older than this are pruned; 0 = keep forever."
    )
    public_readyz: bool = Field(True, description="/readyz answers without the API token.")
    public_metrics: bool = Field(False, description="/metrics answers without the API token.")

    # Storage
    media_dir: Path = Field(Path("data/media"), description="Folder shared with FreeSWITCH.")
    database_url: str = Field(
        "sqlite:///data/voiceai.db", description="SQLAlchemy URL of the call records."
    )

    # Replicas (several services on one PostgreSQL: voiceai/cluster.py)
    replica_id: str = Field(
        "",
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="This replica's name in call records and among replicas; empty = host "
        "name and process id.",
    )
    replica_timeout_s: float = Field(
        15.0,
        ge=2,
        le=3600,
        description="A replica without a heartbeat this long is lost: its calls are ended.",
    )

    @field_validator("stt_model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model, a path, or auto")
        return value.strip()

    @field_validator(
        "stt_language",
        "stt_device",
        "log_level",
        "llm",
        "tts",
        "vad",
        "turn_model",
        "stt_engine",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _pauses_in_order(self) -> Settings:
        if not self.pause_ms < self.end_of_turn_ms <= self.incomplete_turn_ms:
            raise ValueError(
                "VOICEAI_PAUSE_MS < VOICEAI_END_OF_TURN_MS <= VOICEAI_INCOMPLETE_TURN_MS must "
                f"hold (now {self.pause_ms}, {self.end_of_turn_ms}, {self.incomplete_turn_ms})"
            )
        return self

    @field_validator("openai_url", "stt_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if value and not (value.startswith(("http://", "https://")) and urlsplit(value).hostname):
            raise ValueError("must be an http:// or https:// URL, e.g. http://gpu-box:8000/v1")
        return value

    @model_validator(mode="after")
    def _servers_named(self) -> Settings:
        if self.llm == "openai" and not (self.openai_url and self.openai_model.strip()):
            raise ValueError("VOICEAI_LLM=openai needs VOICEAI_OPENAI_URL and VOICEAI_OPENAI_MODEL")
        if self.stt_engine == "openai" and not self.stt_url:
            raise ValueError("VOICEAI_STT_ENGINE=openai needs VOICEAI_STT_URL")
        if self.stt_engine == "openai" and self.stt_model == "auto":
            raise ValueError(
                "VOICEAI_STT_ENGINE=openai needs VOICEAI_STT_MODEL to name the server's model "
                "(e.g. Systran/faster-whisper-small, whisper-1), not auto"
            )
        return self

    @field_validator("freeswitches")
    @classmethod
    def _switches_parse(cls, value: str) -> str:
        parse_switches(value)  # raises ValueError naming the entry that does not parse
        return value.strip()

    def event_sockets(self) -> list[EventSocket]:
        """Every FreeSWITCH to connect to: VOICEAI_FREESWITCHES, else ESL_HOST/PORT as one."""
        if self.freeswitches:
            return parse_switches(self.freeswitches)
        return [EventSocket(DEFAULT_SWITCH, self.esl_host, self.esl_port)]

    def call_limit(self) -> int:
        """VOICEAI_MAX_CALLS, or what this machine's cores hold (bench/capacity.py)."""
        return self.max_calls or CALLS_PER_CORE * available_cores()

    def stt_concurrency(self) -> tuple[int, int]:
        """(transcriptions at once, CPU threads each): by default one a core, one thread each,
        which transcribes the most turns a second (a 2-core box: 3.0 clips/s against 2.7 with
        two threads each); a single transcription is ~15 % slower than on two threads."""
        workers = self.stt_workers or available_cores()
        return workers, self.stt_threads or max(1, available_cores() // workers)

    def fork_base_url(self) -> str:
        return (self.fork_url or f"ws://127.0.0.1:{self.port}").rstrip("/")

    def prompt(self) -> str:
        """The system prompt: the file's text when one is set, else the setting."""
        if self.system_prompt_file is not None:
            return self.system_prompt_file.read_text(encoding="utf-8").strip()
        return self.system_prompt

    @field_validator("tools_file", "agents_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("system_prompt_file")
    @classmethod
    def _prompt_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("api_token", "esl_password", "fork_password", "openai_api_key", "stt_api_key")
    @classmethod
    def _secret_one_line(cls, value: SecretStr) -> SecretStr:
        # A newline would end the ESL `auth` command early, and a header value cannot hold one.
        if any(ch < " " or ch == "\x7f" for ch in value.get_secret_value()):
            raise ValueError("must be one line without control characters (a trailing newline?)")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(value).get_dialect()
        except NoSuchModuleError:  # a subclass of ArgumentError
            raise ValueError(f"unknown database kind; use e.g. {DATABASE_URL_EXAMPLES}") from None
        except ArgumentError:
            raise ValueError(f"not a database URL; use e.g. {DATABASE_URL_EXAMPLES}") from None
        return value

    def secret_values(self) -> list[str]:
        """Every secret that is set, in each form it travels in, so logs and errors can be
        scrubbed of them: the tokens and passwords, the passwords inside URLs, and the fork's
        basic-auth credential."""
        secrets = [s.get_secret_value() for s in (self.api_token, self.esl_password)]
        secrets += [s.get_secret_value() for s in (self.openai_api_key, self.stt_api_key)]
        fork_password = self.fork_password.get_secret_value()
        if fork_password:
            credential = f"{self.fork_user}:{fork_password}".encode()
            secrets += [fork_password, base64.b64encode(credential).decode()]
        secrets.append(_database_password(self.database_url))
        secrets += [_url_password(url) for url in (self.ollama_url, self.fork_url)]
        secrets += [_url_password(url) for url in (self.openai_url, self.stt_url)]
        return [s for s in secrets if s]

    def masked(self) -> dict[str, str]:
        """The effective settings as `VOICEAI_NAME -> value`, secrets masked (passwords inside
        URLs too)."""
        from voiceai.logs import SecretScrubber

        credentials_only = SecretScrubber([])  # ?token=, ?password=... in any URL
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********" if value.get_secret_value() else "(not set)"
            elif name == "database_url":
                text = credentials_only.scrub(_hide_database_password(value))
            else:
                text = credentials_only.scrub(hide_url_password(str(value)))
            shown[ENV_PREFIX + name.upper()] = text
        return shown


DEFAULT_SWITCH = "default"  # the one FreeSWITCH of VOICEAI_ESL_HOST/PORT
_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})")


class EventSocket(NamedTuple):
    name: str  # the FreeSWITCH's switchname, as its fork metadata names it
    host: str
    port: int


def parse_switches(text: str) -> list[EventSocket]:
    """`fs1=10.0.0.11:8021,fs2=10.0.0.12:8021` → the event sockets; ValueError at a bad entry."""
    found: list[EventSocket] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, address = (piece.strip() for piece in entry.partition("="))
        match = _HOST_PORT.fullmatch(address)
        if not SWITCH_NAME.match(name) or match is None or not 0 < int(match["port"]) < 65536:
            raise ValueError(
                f"{entry!r} is not name=host:port (e.g. fs1=10.0.0.11:8021; a name is letters, "
                "digits, . _ -)"
            )
        if any(s.name == name for s in found):
            raise ValueError(f"FreeSWITCH {name!r} is named twice")
        found.append(EventSocket(name, match["host"].strip("[]"), int(match["port"])))
    return found


DATABASE_URL_EXAMPLES = "sqlite:///data/voiceai.db or postgresql+psycopg://user:password@host/db"


def _database_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(url).password or "")


def _hide_database_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _url_password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:  # not a URL: it holds no password
        return ""


def hide_url_password(text: str) -> str:
    """`text` with the password of a URL (scheme://user:password@host) as ***; else as is."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:  # not a URL after all
        return text
    if password is None:
        return text
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class SettingsError(Exception):
    """A setting is invalid; the message names it and says what is wrong, never its secret."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else "settings"
        # A secret, or a URL that may hold one, is never echoed back.
        hidden = "PASSWORD" in name or "TOKEN" in name or name.endswith("_URL")
        # An API key too, and a check of several settings: its input holds every one.
        hidden = hidden or name.endswith("_KEY") or not error["loc"]
        shown = "" if hidden else f" (got {error.get('input')!r})"
        lines.append(f"invalid setting {name}: {error['msg']}{shown}")
    return "; ".join(lines)
