"""Markdown for chat-ops replies: tables with escaped cells, the ``status`` reply, and cutting a
reply to fit in one forge comment. Pure."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

MAX_COMMENT_CHARS = 60_000
"""Replies are cut below GitHub's 65,536-character limit (GitLab allows more)."""


def _cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (cells escaped)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _when(ts: Any) -> Any:
    if isinstance(ts, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return ts


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def render_status(data: Mapping[str, Any], settings: Any = None) -> str:
    """The ``status`` reply: serving, recent runs, corpora and queues as markdown tables.

    Reads :func:`bot.status.collect`'s keys by their one name each (``repositories``, ``runs``,
    ``queues`` …); a part that is missing (no Redis, say) is left out."""
    parts = ["**RepoTune status**", "", _serving_line(data)]
    if data.get("training_lock"):
        parts.append(f"Training now: run `{data['training_lock']}`")
    redis_state = _mapping(data.get("redis"))
    if redis_state and not redis_state.get("ok", True):
        parts.append(f":warning: {redis_state.get('error', 'Redis is unreachable')}")
    for section in (_corpus_table(data.get("repositories") or []),
                    _runs_table(data.get("runs") or []),
                    _acceptance_table(_mapping(data.get("acceptance"))),
                    _queues_table(_mapping(data.get("queues")))):
        if section:
            parts += ["", *section]
    base = getattr(settings, "status_page_url", None) if settings is not None else None
    if base:
        parts += ["", f"[Status page]({base})"]
    return "\n".join(parts)


def _serving_line(data: Mapping[str, Any]) -> str:
    serving = _mapping(data.get("serving"))
    version = serving.get("version")
    versions = serving.get("versions") or []
    line = f"Serving model version: **{version if version is not None else 'none'}**"
    if versions:
        line += f" (kept: {', '.join(str(v) for v in versions)})"
    if "paused" in data:
        line += f" · automatic retraining: **{'paused' if data['paused'] else 'on'}**"
    if data.get("paused_models"):
        line += " · paused on its own: " + ", ".join(f"`{m}`" for m in data["paused_models"])
    return line


def _corpus_table(repos: list[Mapping[str, Any]]) -> list[str]:
    if not repos:
        return []
    rows = []
    for repo in repos:
        corpus = _mapping(repo.get("corpus"))
        commit = str(corpus.get("commit") or "")[:12] or "not built"
        rows.append([repo.get("name"), commit, corpus.get("version"), corpus.get("train_files"),
                     corpus.get("heldout_files"), corpus.get("bytes")])
    return ["**Corpus**", table(["repository", "commit", "version", "train files",
                                 "held-out files", "bytes"], rows)]


def _runs_table(runs: list[Mapping[str, Any]]) -> list[str]:
    if not runs:
        return []
    rows = [[f"`{r.get('id')}`", r.get("status"), r.get("repo"), _when(r.get("created")),
             r.get("version")] for r in runs[:10]]
    return ["**Recent runs**", table(["run", "status", "repository", "created", "version"], rows)]


def _acceptance_table(acceptance: Mapping[str, Any]) -> list[str]:
    """Per model version (all languages): shown, accepted, rate with its Wilson interval, kept."""
    if acceptance.get("error"):
        return [f"Completion acceptance: {acceptance['error']}"]
    rows = [r for r in acceptance.get("rows") or [] if isinstance(r, Mapping) and r.get("language") == "*"]
    if not rows:
        return []
    from serving.acceptance import format_kept, format_rate

    body = [[r.get("version"), r.get("served"), r.get("shown"), r.get("accepted"), format_rate(r), format_kept(r)]
            for r in rows[:5]]
    return [f"**Completion acceptance** (last {acceptance.get('days', '?')} days)",
            table(["version", "served", "shown", "accepted", "rate (95% CI)", "kept after edits"], body)]


def _queues_table(queues: Mapping[str, Any]) -> list[str]:
    if not queues:
        return []
    rows = [[name, q.get("queued"), q.get("started"), q.get("failed")] if isinstance(q, Mapping)
            else [name, q, None, None] for name, q in queues.items()]
    return ["**Queues**", table(["queue", "waiting", "running", "failed"], rows)]


def truncate(text: str, limit: int = MAX_COMMENT_CHARS, more_url: str | None = None) -> str:
    """Cut ``text`` at a line boundary below ``limit`` characters and say so politely (closing
    an open code fence so the rest of the comment still renders)."""
    if len(text) <= limit:
        return text
    budget = limit - 300
    cut = text.rfind("\n", 0, budget)
    kept = text[: cut if cut > 0 else budget]
    dropped = text[len(kept):].count("\n") + 1
    if kept.count("```") % 2:
        kept += "\n```"
    where = f" The full text is on the [status page]({more_url})." if more_url else ""
    return (f"{kept}\n\n*… {dropped} more lines were cut to fit in a comment.{where}*")
