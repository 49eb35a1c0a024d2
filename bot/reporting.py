"""Report run progress back to the forge: commit statuses and, for chat-ops runs, a comment.

Bot-core's jobs call :func:`on_run_transition` after every run status change. For runs started
by a push, the pushed commit carries two statuses:

``repotune/train``  pending while the run is queued, ingesting or training; success once
                    training finished; failure/error if the run stopped before evaluation.
``repotune/eval``   pending while evaluating; success when the candidate passed the gate
                    (and later "serving as version N"); failure when rejected; error when it
                    passed but conversion or publishing failed.

Statuses use one forge-neutral vocabulary (``pending``, ``success``, ``failure``, ``error``);
:mod:`bot.forge` maps it onto GitHub's and GitLab's words. Reporting is best effort: a forge
outage, a missing token or a malformed run record is logged (never with a token) and swallowed,
so that it can never fail a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bot.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN_CONTEXT = "repotune/train"
EVAL_CONTEXT = "repotune/eval"

_DESCRIPTION_MAX = 140  # GitHub rejects longer commit-status descriptions

_TRAIN_PHASE = ("queued", "ingesting", "training")
_EVAL_PHASE = ("evaluating",)
_DEPLOY_PHASE = ("converting", "publishing")
_TERMINAL = ("rejected", "serving", "failed", "canceled")


@dataclass(frozen=True)
class CommitStatus:
    """One commit status to set: ``context`` is the check name, ``state`` the neutral state."""

    context: str
    state: str
    description: str


def _value(status: Any) -> str:
    return str(getattr(status, "value", status))


def _history_statuses(run: Any) -> list[str]:
    """The statuses the run went through, oldest first (tuples, lists or dicts accepted)."""
    out: list[str] = []
    for entry in getattr(run, "history", None) or []:
        if isinstance(entry, dict):
            out.append(_value(entry.get("status")))
        elif isinstance(entry, (list, tuple)) and entry:
            out.append(_value(entry[0]))
    return out


def _previous_status(run: Any) -> str | None:
    """The status the run held before its current one (where a failure happened)."""
    current = _value(run.status)
    seen = _history_statuses(run)
    if seen and seen[-1] == current:
        seen = seen[:-1]
    return seen[-1] if seen else None


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    if len(text) > _DESCRIPTION_MAX:
        text = text[: _DESCRIPTION_MAX - 1] + "…"
    return text


def _metric(run: Any, *names: str) -> Any:
    metrics = getattr(run, "metrics", None) or {}
    for name in names:
        if isinstance(metrics, dict) and metrics.get(name) is not None:
            return metrics[name]
    return None


def _trained_description(run: Any) -> str:
    loss = _metric(run, "heldout_loss", "train_loss")
    steps = _metric(run, "steps")
    parts = ["trained"]
    if steps is not None:
        parts.append(f"{steps} steps")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4f}")
    return ", ".join(parts)


def _error_text(run: Any) -> str:
    error = getattr(run, "error", None)
    if isinstance(error, dict):
        error = error.get("message") or error.get("reason") or ""
    return str(error or "").strip()


def statuses_for(run: Any, status: str | None = None) -> list[CommitStatus]:
    """The commit statuses that describe ``run`` when it is in ``status`` (default: its current
    status). Pure: reads the record, touches nothing."""
    status = _value(run.status) if status is None else status
    error = _error_text(run)
    if status in _TRAIN_PHASE:
        words = {"queued": "queued", "ingesting": "updating the corpus", "training": "training"}
        return [CommitStatus(TRAIN_CONTEXT, "pending", words[status])]
    if status in _EVAL_PHASE:
        return [
            CommitStatus(TRAIN_CONTEXT, "success", _trained_description(run)),
            CommitStatus(EVAL_CONTEXT, "pending", "evaluating against the serving model"),
        ]
    if status in _DEPLOY_PHASE:
        return [CommitStatus(EVAL_CONTEXT, "success", f"passed the gate; {status}")]
    if status == "serving":
        version = getattr(run, "version", None)
        text = f"passed; serving as version {version}" if version is not None else "passed; serving"
        return [CommitStatus(EVAL_CONTEXT, "success", text)]
    if status == "rejected":
        text = "rejected: " + (error or "the candidate did not beat the serving model")
        return [CommitStatus(EVAL_CONTEXT, "failure", text)]
    if status in ("failed", "canceled"):
        where = _previous_status(run)
        word = "failed" if status == "failed" else "canceled"
        state = "failure" if status == "failed" else "error"
        suffix = f": {error}" if error else ""
        if where in _EVAL_PHASE:
            return [CommitStatus(EVAL_CONTEXT, state, f"evaluation {word}{suffix}")]
        if where in _DEPLOY_PHASE:
            # The candidate passed; only getting it served went wrong.
            return [CommitStatus(EVAL_CONTEXT, "error", f"passed, but {where} {word}{suffix}")]
        return [CommitStatus(TRAIN_CONTEXT, state, f"{word}{suffix}")]
    return []


def _changed_statuses(run: Any) -> list[CommitStatus]:
    """Statuses for the current state that differ from those already set at the previous one."""
    now = statuses_for(run)
    previous = _previous_status(run)
    if previous is None or previous in ("failed", "canceled"):
        return now
    before = set(statuses_for(run, previous))
    return [s for s in now if s not in before]


def target_url(settings: Any, run: Any) -> str | None:
    """Link to the run on the status page, when ``settings.status_page_url`` is configured."""
    base = getattr(settings, "status_page_url", None)
    if not base:
        return None
    return f"{str(base).rstrip('/')}/runs/{run.id}"


def _trigger(run: Any) -> dict:
    trigger = getattr(run, "trigger", None) or {}
    return trigger if isinstance(trigger, dict) else {}


def on_run_transition(settings: Any, run: Any) -> None:
    """Tell the forge about ``run``'s new status. Never raises.

    Push-triggered runs get commit statuses on the pushed commit; a chat-ops run whose trigger
    names the pull/merge request (``trigger["number"]``) gets a comment when it ends.
    """
    try:
        _report(settings, run)
    except ConfigError as exc:  # no credentials for this forge: reporting is simply off
        log.warning("run %s: not reporting to the forge: %s", getattr(run, "id", "?"), exc)
    except Exception:  # noqa: BLE001 - reporting must never fail a run
        log.exception("reporting run %s failed; the run itself is unaffected",
                      getattr(run, "id", "?"))


def _report(settings: Any, run: Any) -> None:
    trigger = _trigger(run)
    forge_name = trigger.get("forge")
    repo = trigger.get("repo") or getattr(run, "repo", None)
    if forge_name not in ("github", "gitlab") or not repo:
        log.debug("run %s: no forge to report to (trigger %s)", run.id, trigger.get("kind"))
        return
    from bot.forge import forge_for

    forge = forge_for(settings, forge_name)
    kind = trigger.get("kind")
    sha = trigger.get("commit")
    if kind == "push" and sha:
        url = target_url(settings, run)
        for st in _changed_statuses(run):
            try:
                forge.set_status(repo, sha, st.context, st.state, _one_line(st.description), url)
                log.info("run %s: %s %s on %s@%s", run.id, st.context, st.state, repo, sha[:12])
            except Exception as exc:  # noqa: BLE001 - keep going with the other context
                log.warning("run %s: could not set %s on %s@%s: %s",
                            run.id, st.context, repo, sha[:12], exc)
    number = trigger.get("number")
    if kind == "chatops" and number and _value(run.status) in _TERMINAL:
        from bot.forge import Target

        forge.comment(Target(repo, int(number), trigger.get("project_id")),
                      run_summary(settings, run))


def run_summary(settings: Any, run: Any) -> str:
    """A short markdown comment saying how a run ended."""
    status = _value(run.status)
    lines = [f"**RepoTune run `{run.id}`: {status}**", ""]
    for st in statuses_for(run):
        lines.append(f"- `{st.context}`: {st.state} — {_one_line(st.description)}")
    url = target_url(settings, run)
    if url:
        lines += ["", f"[Details on the status page]({url})"]
    return "\n".join(lines)
