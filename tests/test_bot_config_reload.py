"""Workers pick up an edited repotune.toml for their next job; pinned settings never reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot import config


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "repotune.toml"
    path.write_text("[training]\nlearning_rate = 0.001\n", encoding="utf-8")
    monkeypatch.setenv(config.CONFIG_ENV, str(path))
    monkeypatch.setenv("REPOTUNE_HOME", str(tmp_path / "home"))
    config.set_current(None)
    yield path
    config.set_current(None)


def _touch_later(path: Path, text: str) -> None:
    """Rewrite ``path`` with a modification time distinct from the previous one."""
    before = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_current_reloads_an_edited_file(config_file: Path) -> None:
    assert config.current().training.learning_rate == 0.001
    assert config.current() is config.current()  # cached while the file is unchanged
    _touch_later(config_file, "[training]\nlearning_rate = 0.5\n")
    assert config.current().training.learning_rate == 0.5


def test_pinned_settings_are_not_reloaded(config_file: Path) -> None:
    pinned = config.load(config_file)
    pinned.training.learning_rate = 0.25
    config.set_current(pinned)
    _touch_later(config_file, "[training]\nlearning_rate = 0.5\n")
    assert config.current() is pinned and config.current().training.learning_rate == 0.25


def test_a_broken_edit_is_reported_not_ignored(config_file: Path) -> None:
    config.current()
    _touch_later(config_file, "[training\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.current()
