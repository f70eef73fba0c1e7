"""Logging set-up: one format, every record one line, secrets scrubbed in every encoding."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DETAIL_INDENT = "    "  # a traceback's lines: never at column 0, where a record starts
MASK = "***"

# C0, DEL, C1 (NEL), line/paragraph separators and bidi overrides: each can fake a new line
# or reorder what an operator reads.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The value of any query parameter that carries a credential (the viewer's ?token=, ...).
_QUERY_SECRET = re.compile(r"(?i)([?&][\w.-]*(?:token|password|passwd|secret|key)=)[^&\s\"#]*")
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?(?:bearer|basic)\s+)[^\s'\"]+")


def escape_controls(text: str) -> str:
    """`text` with every control character as a visible escape (\\n, \\x00, \\u2028...)."""
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _hex(value: int, digits: int) -> str:
    """`value` in hex, matching either letter case (%2f and %2F are the same byte)."""
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in f"{value:0{digits}x}")


def _char_forms(char: str) -> str:
    """A pattern for `char` as itself, percent-encoded (once or twice), form-encoded, or
    escaped the way JSON and Python's repr write it."""
    code = ord(char)
    forms = [re.escape(char), "".join(f"%(?:25)?{_hex(b, 2)}" for b in char.encode())]
    if char == " ":
        forms.append(r"\+")
    if char in "\"'\\/":
        forms.append(re.escape("\\" + char))
    if code <= 0xFFFF:
        forms.append(r"\\u" + _hex(code, 4))
    if code < 0x100:
        forms.append(r"\\x" + _hex(code, 2))
    return "(?:" + "|".join(forms) + ")"


def _secret_pattern(secret: str) -> str:
    encoded = secret.encode()
    base64_forms = {
        base64.b64encode(encoded).decode().rstrip("="),
        base64.urlsafe_b64encode(encoded).decode().rstrip("="),
    }
    alternatives = ["".join(_char_forms(c) for c in secret)]
    padding = "(?:=|%(?:25)?3[dD]){0,2}"
    alternatives += [
        "".join(_char_forms(c) for c in form) + padding for form in sorted(base64_forms)
    ]
    return "|".join(alternatives)


class SecretScrubber:
    """Replaces each secret with *** in any encoding a log line may carry it (raw, %-encoded
    as a browser or Python would, +-encoded, JSON- or repr-escaped, base64), and the value of
    every credential query parameter (?token=...) and Authorization header."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole.
        known = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._secrets = re.compile("|".join(_secret_pattern(s) for s in known)) if known else None

    def scrub(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(MASK, text)
        text = _QUERY_SECRET.sub(r"\1" + MASK, text)
        return _AUTH_HEADER.sub(r"\1" + MASK, text)


class OneLineFormatter(logging.Formatter):
    """Each record is one line, control characters escaped and secrets scrubbed, whatever a
    caller or a library put in it; a traceback follows on indented lines, so no logged text can
    pass for a record of its own."""

    def __init__(self, scrubber: SecretScrubber, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self._scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        lines = [escape_controls(self._scrubber.scrub(self.formatMessage(record)))]
        details = []
        # Formatted here, not cached on the record: another handler may have cached it raw.
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        elif record.exc_text:
            details.append(record.exc_text)
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for detail in details:
            for line in self._scrubber.scrub(detail).splitlines():
                lines.append(DETAIL_INDENT + escape_controls(line))
        return "\n".join(lines)


def configure_logging(level: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(SecretScrubber(secrets)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings too go through the scrubber, one line each
