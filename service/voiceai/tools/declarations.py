"""What a tool is: its name, description and JSON schema, the built-in tools the conversation
carries out itself, and the webhook tools an operator declares in VOICEAI_TOOLS_FILE."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from voiceai.config import SettingsError
from voiceai.yamlfile import YamlFileError, load_yaml

DEFAULT_TIMEOUT_S = 5.0
TRANSFER_TO_PERSON = "transfer_to_person"
END_CALL = "end_call"
TAKE_MESSAGE = "take_message"
SHOWN_CHARS = 200  # a validator's message may quote a whole schema: keep error lines short

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ToolsFileError(SettingsError):
    """VOICEAI_TOOLS_FILE is unusable; one line naming the file, the tool and the problem."""


class Tool(BaseModel):
    """One tool the model may call: a built-in (carried out by the conversation) or a webhook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # OpenAI's rule for function names, which Ollama's models were trained on.
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    description: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    builtin: bool = False
    url: str = ""
    method: Literal["GET", "POST"] = "POST"
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=60)
    auth_header: str = ""  # the header's name; its value is in the environment variable auth_env
    auth_env: str = ""

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("parameters")
    @classmethod
    def _a_json_schema_of_an_object(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            where = f" at {exc.json_path}" if exc.path else ""
            raise ValueError(f"not a valid JSON schema{where}: {_short(exc.message)}") from None
        if value.get("type") != "object":
            raise ValueError('must be a JSON schema with "type": "object" (the arguments)')
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (a port out of range raises only when read)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("auth_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if value and not _HEADER_NAME.fullmatch(value):
            raise ValueError("must be an HTTP header name, e.g. Authorization or X-Api-Key")
        return value

    @field_validator("auth_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if value and not _ENV_NAME.fullmatch(value):
            raise ValueError("must be an environment variable's name, e.g. SHOP_API_TOKEN")
        return value

    @model_validator(mode="after")
    def _webhook_complete(self) -> Tool:
        if self.builtin:
            if self.url:
                raise ValueError("a built-in tool has no url")
            return self
        if not self.url:
            raise ValueError("url: Field required")
        if bool(self.auth_header) != bool(self.auth_env):
            raise ValueError(
                "auth_header and auth_env go together (the header, and the "
                "environment variable holding its value)"
            )
        return self

    def spec(self) -> dict[str, Any]:
        """The declaration the model sees, in Ollama's (and OpenAI's) shape."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def host(self) -> str:
        """Where a webhook goes, for log lines and errors: never its path, query or password."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _text_parameters(**fields: str) -> dict[str, Any]:
    """An object schema whose fields are all required strings, each with its description."""
    return {
        "type": "object",
        "properties": {
            name: {"type": "string", "description": text} for name, text in fields.items()
        },
        "required": list(fields),
        "additionalProperties": False,
    }


BUILTIN_TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            name=TRANSFER_TO_PERSON,
            builtin=True,
            description="Transfer the caller to a person (a member of staff). Use it when the "
            "caller asks for a human, or when you cannot help them yourself. Tell them you are "
            "transferring them before you call it.",
            parameters=_text_parameters(reason="Why the caller wants a person, in a few words."),
        ),
        Tool(
            name=END_CALL,
            builtin=True,
            description="Say goodbye and hang up. Use it only when the caller is done or asks to "
            "end the call.",
            parameters=_text_parameters(reason="Why the call ends, in a few words."),
        ),
        Tool(
            name=TAKE_MESSAGE,
            builtin=True,
            description="Take a message for the staff, who will call back. Ask for the caller's "
            "name, a number to call back and the message first; read the number back to check it.",
            parameters=_text_parameters(
                name="The caller's name.",
                callback_number="The phone number to call back, digits only.",
                message="The message, in the caller's words.",
            ),
        ),
    )
}


def load_tools(
    path: Path | None, *, default_timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Tool]:
    """The webhook tools declared in `path` (a YAML list), by name; None = no file, no tools.

    Every problem is a ToolsFileError naming the file and the tool: bad YAML, a missing or
    unknown field, a parameters schema that is not valid JSON schema, a built-in's name, an
    auth_env not set in the environment.
    """
    if path is None:
        return {}

    def fail(problem: str) -> ToolsFileError:
        return ToolsFileError(f"invalid setting VOICEAI_TOOLS_FILE: {path}: {problem}")

    try:
        entries = load_yaml(path, typed=True)
    except YamlFileError as exc:
        raise fail(str(exc)) from None
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise fail("must be a list of tools (each `- name: ...`)")
    tools: dict[str, Tool] = {}
    for number, entry in enumerate(entries, start=1):
        name = entry.get("name") if isinstance(entry, dict) else None
        label = f"tool {name!r}" if isinstance(name, str) and name else f"tool #{number}"
        if not isinstance(entry, dict):
            raise fail(f"{label}: must be a mapping (name, description, url, parameters...)")
        if "builtin" in entry:
            raise fail(f"{label}: builtin: only the service's own tools are built-in")
        try:
            tool = Tool.model_validate({"timeout_s": default_timeout_s, **entry})
        except ValidationError as exc:
            raise fail(f"{label}: {describe_errors(exc)}") from None
        if tool.name in BUILTIN_TOOLS:
            raise fail(f"{label}: name: {tool.name} is a built-in tool; choose another name")
        if tool.name in tools:
            raise fail(f"{label}: name: declared twice")
        if tool.auth_env and not os.environ.get(tool.auth_env):
            raise fail(f"{label}: auth_env: the environment variable {tool.auth_env} is not set")
        tools[tool.name] = tool
    return tools


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as `field: problem; ...`, on one line, never echoing a value."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(
            message if not where or message.startswith(f"{where}:") else f"{where}: {message}"
        )
    return "; ".join(parts)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
