"""The docs stay true: every setting is documented with its default, every relative link in the
README and docs/ resolves, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from pydantic import SecretStr

from voiceai.config import ENV_PREFIX, Settings
from voiceai.conversation.states import table_markdown

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DOC = ROOT / "docs" / "settings.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCED = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`]*`")
INLINE_LINK = re.compile(r"\]\(\s*<?([^()\s<>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def test_readme_documents_every_setting() -> None:
    """Every Settings field appears in docs/settings.md as `VOICEAI_NAME`."""
    documented = set(re.findall(r"`(VOICEAI_[A-Z0-9_]+)`", SETTINGS_DOC.read_text()))
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from docs/settings.md"


def test_settings_doc_states_the_defaults() -> None:
    """Each setting's row shows the default config.py gives it (long texts: anywhere in the doc)."""
    doc = SETTINGS_DOC.read_text()
    rows = dict(re.findall(r"^\| `(VOICEAI_[A-Z0-9_]+)` \| ([^|]*) \|", doc, re.M))
    flat_doc = " ".join(doc.split())
    wrong = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None or isinstance(default, SecretStr) or default == "":
            continue
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, float):
            shown = f"{default:g}"
        else:
            shown = str(default)
        setting = ENV_PREFIX + name.upper()
        if len(shown) > 60:
            if " ".join(shown.split()) not in flat_doc:
                wrong.append(f"{setting}: default text not in the doc")
        elif f"`{shown}`" not in rows.get(setting, ""):
            wrong.append(f"{setting}: row does not show `{shown}`")
    assert wrong == []


def test_settings_doc_lists_every_deployment_variable() -> None:
    """Every variable of .env.example (RC_*, FS_*, the image build's) is in docs/settings.md."""
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", SETTINGS_DOC.read_text()))
    assert names, ".env.example lists no variables"
    assert names - documented == set(), ".env.example variables missing from docs/settings.md"


def _prose(markdown: str) -> str:
    """The text links can live in: fenced code blocks and inline code removed."""
    return INLINE_CODE.sub("", FENCED.sub("", markdown))


def _anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub gives a document (`-1`, `-2`… for repeated headings)."""
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCED.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    """Every relative link points into the repo, at something that exists (and at a heading
    that exists, when it names one in a markdown file)."""
    text = _prose(doc.read_text())
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    broken = []
    for target in targets:
        if not target or EXTERNAL.match(target):
            continue
        path_part, _, fragment = target.partition("#")
        path = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(f"{target}: no such file in the repo")
        elif fragment and path.suffix == ".md" and fragment not in _anchors(path.read_text()):
            broken.append(f"{target}: no heading #{fragment} in {path.relative_to(ROOT)}")
    assert broken == [], f"broken links in {doc.relative_to(ROOT)}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^pip install rust-just && just test\b.*$", readme, re.M)
    assert command is not None
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert command.group(0) in ci_lines  # the whole line, comment included


def test_readme_shows_the_state_table_the_code_enforces() -> None:
    assert table_markdown() in (ROOT / "README.md").read_text()
