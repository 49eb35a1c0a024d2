"""RepoTune's configuration: ``repotune.toml`` plus the environment, read into :class:`Settings`.

The settings are declared once, as dataclasses with attribute docstrings (:mod:`bot.settings`);
:mod:`bot.settings_table` turns them into rows (key, default, env, help) that the loader below,
``repotune init`` (:func:`example_toml`), ``repotune config`` and ``docs/configuration.md`` read.

Precedence: defaults < TOML file < environment. Tokens and webhook secrets come only from the
environment (``VAR`` or a file named by ``VAR_FILE``); a TOML file that contains one is refused.
An unknown key is an error naming it. Only ``bot`` reads configuration; lower packages get
explicit arguments (:meth:`RepoConfig.corpus_spec`, :func:`bot.recipe.finetune_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing as t
from collections.abc import Mapping
from pathlib import Path

from bot.errors import ConfigError
from bot.models import parse_models
from bot.settings import LIST_TABLES
from bot.settings import SECTIONS as _SECTIONS
from bot.settings import ChatopsSettings as ChatopsSettings
from bot.settings import EvalSettings as EvalSettings
from bot.settings import GitHubSettings as GitHubSettings
from bot.settings import GitLabSettings as GitLabSettings
from bot.settings import PolicySettings as PolicySettings
from bot.settings import RepoConfig as RepoConfig
from bot.settings import ServingSettings as ServingSettings
from bot.settings import Settings as Settings
from bot.settings import TrainingSettings as TrainingSettings
from bot.settings import WebhookSettings as WebhookSettings
from bot.settings_table import SETTINGS as SETTINGS
from bot.settings_table import Setting as Setting
from bot.settings_table import example_toml as example_toml
from bot.settings_table import settings_markdown as settings_markdown
from trainer.lora import lora_problems

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CONFIG_ENV = "REPOTUNE_CONFIG"
"""Environment variable naming the TOML file (``repotune.toml`` in the working folder otherwise)."""

CONFIG_FILENAME = "repotune.toml"


def _get(obj: t.Any, key: str) -> t.Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# --- parsing -------------------------------------------------------------------------------


def _base_type(tp: t.Any) -> t.Any:
    """``int | None`` → int; ``list[str]`` → list."""
    args = [a for a in t.get_args(tp) if a is not type(None)]
    origin = t.get_origin(tp)
    if origin in (t.Union, types.UnionType) and len(args) == 1:
        return _base_type(args[0])
    return origin or tp


def _coerce(key: str, value: t.Any, tp: t.Any, *, from_env: bool) -> t.Any:
    """Check or convert one value to the row's type; ConfigError names key, value and type."""
    base = _base_type(tp)
    optional = type(None) in t.get_args(tp)
    try:
        if value is None or (from_env and value == "" and optional):
            if optional:
                return None
            raise ValueError("a value is required")
        if base is bool:
            if isinstance(value, bool):
                return value
            if from_env and str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if base is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, int) or from_env:
                return int(value)
            raise ValueError("expected an integer")
        if base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool) or from_env:
                return float(value)
            raise ValueError("expected a number")
        if base is Path:
            return Path(str(value)).expanduser()
        if base in (list, tuple):
            if from_env:
                value = [p.strip() for p in str(value).split(",") if p.strip()]
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return base(value)
            raise ValueError("expected a list of strings")
        if base is dict:
            if from_env:
                value = json.loads(value)
            if isinstance(value, dict):
                return dict(value)
            raise ValueError("expected a table")
        if isinstance(value, (dict, list)):
            raise ValueError("expected a string")
        return str(value)
    except (ValueError, TypeError) as exc:
        where = "environment" if from_env else "TOML"
        raise ConfigError(f"{key} = {value!r} from the {where}: {exc} "
                          f"(type {getattr(tp, '__name__', tp)}); see `repotune config`") from exc


def _read_secret(env: Mapping[str, str], name: str) -> str | None:
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE names {path!r}, which cannot be read: {exc.strerror}") from exc
    return None


def _apply_table(obj: t.Any, table: Mapping[str, t.Any], prefix: str) -> None:
    by_key = {row.key: row for row in SETTINGS}
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in table.items():
        key = f"{prefix}{name}"
        row = by_key.get(key)
        if row is None or name not in names:
            raise ConfigError(f"unknown setting {key!r}; `repotune config` lists every key")
        if row.secret:
            raise ConfigError(f"{key} must not be written in the TOML file (it is a secret): "
                              f"set the environment variable {row.env} or {row.env}_FILE instead")
        setattr(obj, name, _coerce(key, value, row.type, from_env=False))


def _config_path(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """``path``, else ``$REPOTUNE_CONFIG``, else ``./repotune.toml`` if it exists, else None."""
    if path is not None:
        return Path(path).expanduser()
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    return Path(CONFIG_FILENAME) if Path(CONFIG_FILENAME).is_file() else None


def _read_toml(path: Path) -> dict[str, t.Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist; "
                          f"`repotune init` writes an example") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _apply_repos(settings: Settings, repos: t.Any) -> None:
    if not isinstance(repos, list):
        raise ConfigError("repos must be an array of tables: write [[repos]] before each repository")
    known = [f.name for f in dataclasses.fields(RepoConfig)]
    for entry in repos:
        unknown = set(entry) - set(known)
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in [[repos]]; known: {known}")
        repo = RepoConfig(name=entry.get("name"), url=entry.get("url"))
        _apply_table(repo, dict(entry), "repos.")
        repo.__post_init__()
        settings.repos.append(repo)
    names = [r.name for r in settings.repos]
    if len(set(names)) != len(names):
        raise ConfigError(f"repository names must be unique, got {names}")


def _apply_file(settings: Settings, path: Path) -> None:
    data = _read_toml(path)
    settings.source = path.resolve()
    _apply_table(settings, {k: v for k, v in data.items() if k not in _SECTIONS and k not in LIST_TABLES}, "")
    for section in _SECTIONS:
        if section in data:
            if not isinstance(data[section], dict):
                raise ConfigError(f"[{section}] must be a table")
            _apply_table(getattr(settings, section), data[section], f"{section}.")
    _apply_repos(settings, data.get("repos", []))
    if "models" in data:  # after [[repos]] and the sections: a model names both
        settings.models = parse_models(settings, data["models"],
                                       lambda key, value, tp: _coerce(key, value, tp, from_env=False))


def _apply_env(settings: Settings, env: Mapping[str, str]) -> None:
    """Environment overrides, then secrets (which only the environment may set)."""
    for row in SETTINGS:
        if row.key.startswith("repos.") or not row.env:
            continue
        parent_key, _, name = row.key.rpartition(".")
        parent = _get(settings, parent_key) if parent_key else settings
        if row.secret:
            setattr(parent, name, _read_secret(env, row.env))
        elif row.env in env:
            setattr(parent, name, _coerce(row.key, env[row.env], row.type, from_env=True))


def _validate(settings: Settings) -> None:
    """Checks that span fields: the evaluation settings are an EvalConfig and check themselves; the
    training method and LoRA settings are checked as a fine-tuning run would check them."""
    try:
        settings.evaluation.__post_init__()
    except ValueError as exc:
        raise ConfigError(f"[evaluation]: {exc}; see `repotune config --help-settings`") from exc
    if settings.serving.device not in ("cpu", "gpu"):
        raise ConfigError(f"[serving] device = {settings.serving.device!r}: use cpu or gpu")
    problems = lora_problems(settings.training)
    if problems:
        raise ConfigError(f"[training] {'; '.join(problems)}; see `repotune config --help-settings`")
    for spec in settings.models:  # a model's gate overrides check themselves the same way
        try:
            dataclasses.replace(settings.evaluation, **spec.evaluation)
        except ValueError as exc:
            raise ConfigError(f"models.{spec.name}.evaluation: {exc}") from exc


def load(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings: defaults, then the TOML file, then environment overrides.

    ``path`` None means ``$REPOTUNE_CONFIG`` if set, else ``./repotune.toml`` if it exists, else
    defaults only. ``env`` None means ``os.environ`` as it is *now*: looked up at each call, not
    bound once, because libraries may rebind ``os.environ`` (``datasets.map`` with ``num_proc``
    replaces it with a copy), after which a bound default would read a stale environment.
    Raises :class:`ConfigError` naming the key for anything invalid.
    """
    env = os.environ if env is None else env
    settings = Settings()
    path = _config_path(path, env)
    if path is not None:
        _apply_file(settings, path)
    _apply_env(settings, env)
    _validate(settings)
    settings.home = Path(settings.home).expanduser().resolve()
    return settings


_current: Settings | None = None
_current_stamp: tuple[Path, int] | None = None
"""(file, mtime) of the settings :func:`current` loaded itself; None when pinned or file-less."""


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def current() -> Settings:
    """The process's settings (RQ jobs use this; ``$REPOTUNE_CONFIG`` names the file).

    Loaded on first use; when they came from a file, an edit of that file is picked up by the
    next call, so new jobs see new settings without a worker restart. Settings pinned with
    :func:`set_current` are never reloaded.
    """
    global _current, _current_stamp
    if _current is not None and _current_stamp is not None:
        path, stamp = _current_stamp
        if _mtime_ns(path) != stamp:
            _current = None
    if _current is None:
        loaded = load()
        _current_stamp = (loaded.source, _mtime_ns(loaded.source)) if loaded.source else None
        _current = loaded
    return _current


def set_current(settings: Settings | None) -> None:
    """Pin ``settings`` as what :func:`current` returns (``repotune up``, in-process workers);
    None forgets them, so the next :func:`current` loads from the environment again."""
    global _current, _current_stamp
    _current = settings
    _current_stamp = None


