"""The README stays true: every setting is documented, and CI runs the README's test command."""

from __future__ import annotations

import re

from settings import ENV_PREFIX, Settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [
        ENV_PREFIX + name.upper()
        for name in Settings.model_fields
        if f"`{ENV_PREFIX}{name.upper()}`" not in README
    ]
    assert missing == []


def test_ci_runs_the_readme_test_command_verbatim():
    command = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.+?)\n```", README, re.S).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert command.strip() in ci
