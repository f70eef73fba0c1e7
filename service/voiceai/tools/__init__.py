"""Tools the model may call during a call: the built-ins the conversation carries out
(transfer, end the call, take a message) and webhook tools declared in VOICEAI_TOOLS_FILE."""

from voiceai.tools.declarations import (
    BUILTIN_TOOLS,
    DEFAULT_TIMEOUT_S,
    END_CALL,
    TAKE_MESSAGE,
    TRANSFER_TO_PERSON,
    Tool,
    ToolsFileError,
    load_tools,
)
from voiceai.tools.toolbox import MAX_RESULT_BYTES, Toolbox, ToolFailed

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TIMEOUT_S",
    "END_CALL",
    "MAX_RESULT_BYTES",
    "TAKE_MESSAGE",
    "TRANSFER_TO_PERSON",
    "Tool",
    "ToolFailed",
    "Toolbox",
    "ToolsFileError",
    "load_tools",
]
