"""docs/chatops.md agrees with the grammar: every command is documented with its exact usage and
default levels, and every documented command exists (Datasette-style docs test)."""

from __future__ import annotations

import re
from pathlib import Path

from bot.chatops import SPECS, level_name, required_level
from bot.config import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "chatops.md"
ROW = re.compile(r"^\| `/repotune (?P<usage>[^`]+)` \| (?P<what>[^|]+) \| (?P<github>[^|]+) \| "
                 r"(?P<gitlab>[^|]+) \|$")


def _commands_table() -> dict[str, dict[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = ROW.match(line.strip())
        if m:
            rows[m["usage"].split()[0]] = {k: v.strip() for k, v in m.groupdict().items()}
    return rows


def test_every_command_is_documented_and_every_documented_command_exists():
    documented = _commands_table()
    assert set(documented) == set(SPECS), (
        f"undocumented: {sorted(set(SPECS) - set(documented))}; "
        f"documented but not in the grammar: {sorted(set(documented) - set(SPECS))}")
    assert list(documented) == list(SPECS)  # the order `help` lists them in


def test_documented_usage_and_default_levels_match_the_code():
    settings = Settings()
    for name, row in _commands_table().items():
        assert row["usage"] == SPECS[name].usage, name
        assert row["github"] == level_name("github", required_level(settings, "github", name)), name
        assert row["gitlab"] == level_name("gitlab", required_level(settings, "gitlab", name)), name


def test_the_module_docstring_lists_the_same_commands():
    import bot.chatops

    listed = re.findall(r"^\s+/repotune (\S+)", bot.chatops.__doc__ or "", re.MULTILINE)
    assert listed == list(SPECS)
