"""The README stays true: every setting is documented, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from voiceai.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(VOICEAI_[A-Z0-9_]+)`", readme))
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from README"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^pip install rust-just && just test\b.*$", readme, re.M)
    assert command is not None
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert command.group(0) in ci_lines  # the whole line, comment included
