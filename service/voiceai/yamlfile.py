"""Reading the operator's YAML files (VOICEAI_TOOLS_FILE, VOICEAI_AGENTS_FILE): a duplicate key
is an error, not a silent overwrite, and every problem is one short line."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_BYTES = 1024 * 1024  # far beyond any real setup; a bigger file is a mistake


class YamlFileError(ValueError):
    """The file cannot be read or is not YAML; the message is one line."""


def _unique_keys(loader: yaml.BaseLoader, node: MappingNode) -> None:
    """A key written twice in one mapping (a DID listed twice) is refused; `<<` merges may
    still be overridden, as YAML intends."""
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue
        if key in seen:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)


class _TypedLoader(yaml.SafeLoader):
    """YAML's usual types (numbers, booleans, null): JSON schemas need them."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        _unique_keys(self, node)
        return super().construct_mapping(node, deep=deep)


class _TextLoader(yaml.BaseLoader):
    """Every scalar as written: a number `0123` stays "0123" (YAML 1.1 would read octal 83)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        _unique_keys(self, node)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path, *, typed: bool) -> Any:
    """The document in `path`; `typed=False` keeps every scalar a string (phone numbers)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlFileError(f"cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_BYTES:
        raise YamlFileError(f"larger than {MAX_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
        return yaml.load(text, Loader=_TypedLoader if typed else _TextLoader)
    except UnicodeDecodeError:
        raise YamlFileError("not UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(exc.problem or exc.context or "unreadable").split())
        raise YamlFileError(f"not valid YAML: {problem}{where}") from None
    except yaml.YAMLError as exc:
        raise YamlFileError(f"not valid YAML: {' '.join(str(exc).split())}") from None
