"""What a chat-ops reply may show to a commenter of one repository. Pure.

A comment's author was checked against the comment's repository only, so ``status`` and
``eval`` replies keep what belongs to that repository and what is model-wide (the serving
version, the gate's scores, queue lengths, run ids and states), and drop every other
repository's private details: its name and forge path, clone URL, branches, corpus commit,
and who or what triggered its runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

OTHER = "another repository"
"""What a run of a repository the commenter may not see shows in place of its name."""

_SERVING_KEYS = ("version", "versions")
_RUN_KEYS = ("id", "status", "created", "version")


def scope_status(data: Mapping[str, Any], repo: str) -> dict[str, Any]:
    """:func:`bot.status.collect`'s snapshot as the commenter of configured repository ``repo``
    may see it: a whitelist, so a key added to the snapshot later stays out until chosen.

    Corpora: only ``repo``'s. Models paused on their own: those ``repo`` feeds. Runs: all (they are the shared model's history), but a run of
    another repository shows only its id, state, creation time and version, its repository
    as :data:`OTHER`.
    """
    out: dict[str, Any] = {}
    serving = data.get("serving")
    if isinstance(serving, Mapping):
        out["serving"] = {k: serving[k] for k in _SERVING_KEYS if k in serving}
    for key in ("paused", "training_lock", "queues", "redis"):
        if key in data:
            out[key] = data[key]
    if "models" in data:  # models this repository feeds, paused on their own
        out["paused_models"] = [m.get("name") for m in data.get("models") or [] if isinstance(m, Mapping)
                                and m.get("paused") and repo in (m.get("repos") or [])]
    out["repositories"] = [r for r in data.get("repositories") or []
                           if isinstance(r, Mapping) and r.get("name") == repo]
    out["runs"] = [_scoped_run(r, repo) for r in data.get("runs") or [] if isinstance(r, Mapping)]
    return out


def _scoped_run(run: Mapping[str, Any], repo: str) -> dict[str, Any]:
    if run.get("repo") == repo:
        return dict(run)
    return {**{k: run.get(k) for k in _RUN_KEYS}, "repo": OTHER}


def hidden_names(repos: Iterable[Any], repo: str) -> list[str]:
    """The names, forge paths and clone URLs of every configured repository except ``repo``
    (and except any that is also a name of ``repo`` itself), longest first."""
    own: set[str] = set()
    others: set[str] = set()
    for r in repos:
        names = {str(v) for v in (r.name, r.full_name, r.url) if v}
        (own if r.name == repo else others).update(names)
    return sorted(others - own, key=len, reverse=True)


def redact(text: str, hidden: Iterable[str], home: str | None = None) -> str:
    """``text`` with each hidden repository name (and a corpus name ``NAME@BRANCH`` built from
    it) replaced by :data:`OTHER`, and the server's home folder by ``<home>``.

    Whole names only: ``web`` is not cut out of ``web-admin``."""
    for name in hidden:
        pattern = rf"(?<![\w./-]){re.escape(name)}(?:@[\w./-]+)?(?![\w-])"
        text = re.sub(pattern, OTHER, text)
    if home:
        text = text.replace(str(home).rstrip("/"), "<home>")
    return text
