"""The settings table: one row per key, read from the dataclasses in :mod:`bot.settings`.

A row's help text is its field's attribute docstring, read from the class source with ``ast``
(the string literal right after the annotated assignment), so a setting is declared and
explained in one place: ``bot/settings.py`` for the bot's own, ``trainer/finetune.py`` and
``trainer/evaluate/config.py`` for the recipe and the gate. The TOML loader, ``repotune init``
(:func:`example_toml`), ``repotune config --help-settings`` and ``docs/configuration.md``
(:func:`settings_markdown`, checked by a test) all read :data:`SETTINGS`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import typing as t
from dataclasses import dataclass
from pathlib import Path

from bot.settings import LIST_TABLES, SECTIONS, ModelSpec, RepoConfig, Settings


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    key: str
    """Dotted TOML key (``policy.debounce_seconds``; ``repos.url`` for a ``[[repos]]`` field)."""
    default: t.Any
    """Value when neither TOML nor environment sets it."""
    env: str | None
    """Environment variable that overrides it (secrets: also ``<env>_FILE``)."""
    help: str
    """What it does, with its unit."""
    type: t.Any
    """The Python type (from the dataclass annotation)."""
    secret: bool = False
    """Only from the environment; refused in TOML."""


@functools.cache
def _class_docstrings(cls: type) -> dict[str, str]:
    """Attribute docstrings written in ``cls``'s own body (not its bases'); {} without source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # a generated class has no source of its own
        return {}
    body = next((n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__), [])
    out: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            out[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return out


def field_help(cls: type) -> dict[str, str]:
    """Field name → help for a settings class: docstrings of its classes (a subclass's win) and
    of the classes it names in ``HELP_FROM`` (the generated :class:`TrainingSettings`)."""
    sources = list(reversed(cls.__mro__)) + list(getattr(cls, "HELP_FROM", ()))
    out: dict[str, str] = {}
    for source in sources:
        out.update(_class_docstrings(source))
    return out


def _default_of(f: dataclasses.Field) -> t.Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _env_name(key: str) -> str:
    return "REPOTUNE_" + key.upper().replace(".", "_")


def _rows() -> list[Setting]:
    rows: list[Setting] = []

    def add(prefix: str, cls: type, env: bool = True) -> None:
        hints = t.get_type_hints(cls)
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            nested = cls is Settings and (f.name in SECTIONS or f.name in LIST_TABLES)
            if nested or f.metadata.get("setting") is False:
                continue
            if f.name not in helps:
                raise TypeError(f"{cls.__name__}.{f.name} has no docstring: every setting needs help text")
            key = f"{prefix}{f.name}"
            name = f.metadata.get("env") or (_env_name(key) if env else None)
            rows.append(Setting(key, _default_of(f), name, helps[f.name], hints[f.name],
                                bool(f.metadata.get("secret"))))

    add("", Settings)
    for section, cls in SECTIONS.items():
        add(f"{section}.", cls)
    add("repos.", RepoConfig, env=False)
    add("models.", ModelSpec, env=False)
    return rows


SETTINGS: list[Setting] = _rows()
"""The settings table: every key, its default, environment variable and help."""


# --- example file and docs -----------------------------------------------------------------


def toml_value(value: t.Any) -> str:
    """``value`` written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _example_line(row: Setting, name: str, value: t.Any) -> str:
    if row.secret:
        return f"# {name}: environment only — {row.env} or {row.env}_FILE"
    if value is None:
        return f"# {name} = "
    return f"# {name} = {toml_value(value)}"


def example_toml() -> str:
    """A commented ``repotune.toml`` with every setting at its default (``repotune init``)."""
    lines = ["# repotune.toml — RepoTune configuration. Every key is shown at its default, commented out.",
             "# Precedence: defaults < this file < environment variables (named after each key).",
             "# Tokens and webhook secrets are NOT accepted here: set them in the environment",
             "# (e.g. REPOTUNE_GITHUB_WEBHOOK_SECRET, or REPOTUNE_GITHUB_WEBHOOK_SECRET_FILE=/run/secrets/…).",
             ""]
    section = None
    for row in SETTINGS:
        if row.key.startswith(("repos.", "models.")):
            continue
        head, _, name = row.key.rpartition(".")
        if head != section and head:
            lines += ["", f"[{head}]"]
            section = head
        lines.append(f"# {row.help}" + (f"  (env {row.env})" if row.env else ""))
        lines.append(_example_line(row, name, "~/.repotune" if row.key == "home" else row.default))
    lines += ["", "# Repositories to learn from: one [[repos]] table each (uncomment and edit).",
              "# [[repos]]"]
    example = {"name": "web", "url": "https://github.com/acme/web.git", "forge": "github",
               "full_name": "acme/web"}
    for row in SETTINGS:
        if row.key.startswith("repos."):
            name = row.key.split(".", 1)[1]
            lines.append(f"# {row.help}")
            lines.append(_example_line(row, name, example.get(name, row.default)))
    return "\n".join(lines) + "\n"


def settings_markdown() -> str:
    """The settings table as Markdown (the body of ``docs/configuration.md``'s reference)."""
    out = ["| key | default | environment | meaning |", "|---|---|---|---|"]
    for row in SETTINGS:
        if row.secret:
            default = "— (secret)"
        elif row.key == "home":
            default = "`~/.repotune`"
        elif row.default is None:
            default = "—"
        else:
            default = f"`{toml_value(row.default)}`"
        env = f"`{row.env}`" + (" / `_FILE`" if row.secret else "") if row.env else "—"
        out.append(f"| `{row.key}` | {default} | {env} | {row.help.replace('|', chr(92) + '|')} |")
    return "\n".join(out) + "\n"
