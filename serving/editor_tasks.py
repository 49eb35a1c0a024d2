"""Accepted completions as evaluation tasks: what developers kept, read back from the telemetry.

With ``store_code`` on, a completion record of :mod:`serving.telemetry` carries the request's
prompt (the code before the cursor), the suffix the model was given (empty when its family
ignored it) and the texts served; the events say which choice a developer accepted and, through
the feedback endpoint, what they kept after editing. Joined, each accepted choice is a
completion task cut by a real editor at a real cursor:

- ``prompt``: the served record's prompt; ``suffix``: its suffix;
- ``target``: the feedback's kept text when the client sent one (what survived the developer's
  edits), else the completion text; for Tabby's line-by-line acceptance (``select_kind: line``)
  only the completion's first line, the part known to be taken.

Accepted means what :mod:`serving.acceptance` counts: a ``select`` event or a feedback with
``accepted: true``. Dismissed, only viewed or rejected choices are not tasks. One task per
(completion id, choice); the same (prompt, suffix, target) twice — a developer taking the same
suggestion again — counts once (the oldest), so a repeated edit cannot weigh more than others.
A record served without its code (``store_code`` was off then) gives no task: the reason says so.

The tasks are plain dicts with the fields of ``trainer.evaluate.Task`` (:meth:`EditorTask.as_task`),
so this module imports nothing of the trainer and bot turns them into ``Task`` objects. Their
kind follows the cursor: ``line`` / ``fim_inline`` / ``fim_line_end`` inside a line (indentation
counts), ``next_line`` / ``fim_line`` at a line start, ``block`` / ``fim_block`` for several lines.
A model that cannot fill in the middle is asked left to right (the suffix dropped), as the proxy
itself does for such a family.

Retention is the telemetry's: the files are deleted after ``telemetry_retention_days``, and the
tasks with them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.telemetry import COMPLETIONS, EVENTS, read_lines, telemetry_files

TASK_PATH = "(editor)"
"""The ``path`` of an editor task (the telemetry does not say which file the cursor was in)."""

_NONTRIVIAL = re.compile(r"[A-Za-z0-9]")


@dataclass(frozen=True)
class EditorTask:
    """One accepted completion choice, with the code around it and what was kept."""

    task_id: str
    """``editor:<completion id>:<choice index>``."""
    prompt: str
    suffix: str
    target: str
    """What the developer kept (trailing blanks moved to the suffix)."""
    lang: str
    model: str
    version: int
    time: float
    """When the completion was served (Unix time)."""
    edited: bool
    """True when ``target`` is a feedback's kept text rather than the completion itself."""

    def kind(self, fim: bool) -> str:
        """The ``trainer.evaluate`` task kind for a model that can (``fim``) or cannot fill in the middle."""
        inside = self.prompt.rsplit("\n", 1)[-1] != ""
        several = "\n" in self.target
        if fim and self.suffix.strip():
            if several:
                return "fim_block"
            if not inside:
                return "fim_line"
            return "fim_inline" if self.suffix.split("\n", 1)[0].strip() else "fim_line_end"
        if several:
            return "block"
        return "line" if inside else "next_line"

    def as_task(self, fim: bool) -> dict[str, Any]:
        """The fields of ``trainer.evaluate.Task``; without ``fim`` the suffix is dropped."""
        kind = self.kind(fim)
        return {"task_id": self.task_id, "kind": kind, "prompt": self.prompt, "target": self.target,
                "path": TASK_PATH, "lang": self.lang, "repo": self.model,
                "line": self.prompt.count("\n"), "suffix": self.suffix if kind.startswith("fim_") else ""}


@dataclass(frozen=True)
class EditorTasks:
    """The tasks of a window, and the counts that explain an empty or short list."""

    tasks: list[EditorTask] = field(default_factory=list)
    """Oldest first."""
    accepted: int = 0
    """Accepted choices of completions served in the window (of the model and version asked)."""
    without_code: int = 0
    """Accepted choices whose completion was recorded without its code (``store_code`` off)."""
    trivial: int = 0
    """Accepted choices whose kept text is blank or punctuation only (any model gets those)."""
    duplicates: int = 0
    """Accepted choices with the same prompt, suffix and kept text as an earlier one."""
    dropped: int = 0
    """Tasks left out by ``limit`` (the oldest)."""

    @property
    def reason(self) -> str | None:
        """Why there are no tasks, in words an operator can act on; None when there are some."""
        if self.tasks:
            return None
        if not self.accepted:
            return "no accepted completions were recorded in the window"
        if self.without_code == self.accepted:
            return (f"{self.accepted} accepted completion(s), but the proxy did not keep their code "
                    "(serving.store_code was off when they were served); turn it on to evaluate on editor tasks")
        return (f"{self.accepted} accepted completion(s), none usable: {self.without_code} without code, "
                f"{self.trivial} blank or punctuation only, {self.duplicates} duplicates")

    def as_dict(self) -> dict[str, Any]:
        """Counts and reason (the tasks themselves are code: never in a status view)."""
        return {"tasks": len(self.tasks), "accepted": self.accepted, "without_code": self.without_code,
                "trivial": self.trivial, "duplicates": self.duplicates, "dropped": self.dropped,
                "reason": self.reason}


def _in_window(rec: Mapping[str, Any], model: str | None, version: int | None,
               since: float | None, until: float | None) -> bool:
    when = rec.get("time")
    if not isinstance(when, (int, float)):
        return False
    return ((model is None or rec.get("model") == model) and (version is None or rec.get("version") == version)
            and (since is None or when >= since) and (until is None or when < until))


def _accepted(events: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per accepted (completion id, choice): ``kept`` (a feedback's text or None) and ``line``
    (only the first line was taken: Tabby's ``select_kind: line``)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for ev in events:
        cid, idx, kind = ev.get("completion_id"), ev.get("choice_index"), ev.get("type")
        if not isinstance(cid, str) or not isinstance(idx, int):
            continue
        if kind == "select":
            c = out.setdefault((cid, idx), {"kept": None, "line": True})
            c["line"] = c["line"] and ev.get("select_kind") == "line"
        elif kind == "feedback" and ev.get("accepted") is True:
            c = out.setdefault((cid, idx), {"kept": None, "line": True})
            c["line"] = False
            if isinstance(ev.get("kept_text"), str):
                c["kept"] = ev["kept_text"]
    return out


def _task(cid: str, idx: int, rec: Mapping[str, Any], choice: Mapping[str, Any]) -> EditorTask | None:
    """The task of one accepted choice; None when its completion was stored without code."""
    texts, prompt = rec.get("texts"), rec.get("prompt")
    if not isinstance(texts, list) or not isinstance(prompt, str) or idx >= len(texts):
        return None
    text = choice["kept"] if choice["kept"] is not None else str(texts[idx])
    if choice["kept"] is None and choice["line"]:
        text = text.split("\n", 1)[0]
    target = text.rstrip()
    suffix = str(rec.get("suffix") or "")
    if suffix:  # keep prompt + target + suffix the code the developer had
        suffix = text[len(target):] + suffix
    return EditorTask(task_id=f"editor:{cid}:{idx}", prompt=prompt, suffix=suffix, target=target,
                      lang=str(rec.get("language") or "unknown"), model=str(rec.get("model", "")),
                      version=int(rec.get("version", 0)), time=float(rec["time"]), edited=choice["kept"] is not None)


def collect(completions: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]], *,
            model: str | None = None, version: int | None = None, since: float | None = None,
            until: float | None = None, limit: int | None = None) -> EditorTasks:
    """The editor tasks of completions served by ``model`` / ``version`` in [``since``, ``until``)
    (None: any), oldest first; with ``limit``, the newest ``limit`` of them."""
    served = {rec["id"]: rec for rec in completions
              if isinstance(rec.get("id"), str) and _in_window(rec, model, version, since, until)}
    accepted = {key: c for key, c in _accepted(events).items() if key[0] in served}
    tasks: list[EditorTask] = []
    seen: set[str] = set()
    without_code = trivial = duplicates = 0
    for (cid, idx), choice in sorted(accepted.items(), key=lambda kv: (served[kv[0][0]]["time"], kv[0])):
        task = _task(cid, idx, served[cid], choice)
        if task is None:
            without_code += 1
            continue
        if _NONTRIVIAL.search(task.target) is None:
            trivial += 1
            continue
        digest = hashlib.sha256("\x1f".join((task.prompt, task.suffix, task.target)).encode()).hexdigest()
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        tasks.append(task)
    dropped = max(0, len(tasks) - limit) if limit is not None else 0
    return EditorTasks(tasks=tasks[dropped:], accepted=len(accepted), without_code=without_code,
                       trivial=trivial, duplicates=duplicates, dropped=dropped)


def read_editor_tasks(folder: str | Path, *, model: str | None = None, version: int | None = None,
                      since: float | None = None, until: float | None = None,
                      limit: int | None = None) -> EditorTasks:
    """:func:`collect` over the telemetry files in ``folder`` (a torn last line is skipped)."""
    return collect(read_lines(telemetry_files(folder, COMPLETIONS, since)),
                   read_lines(telemetry_files(folder, EVENTS, since)),
                   model=model, version=version, since=since, until=until, limit=limit)


def task_summary(task: EditorTask) -> dict[str, Any]:
    """A task without its code (ids, language, sizes): for logs and reports."""
    data = asdict(task)
    for key in ("prompt", "suffix", "target"):
        data[f"{key}_chars"] = len(data.pop(key))
    return data
