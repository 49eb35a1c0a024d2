"""Report run progress back to the forge: commit statuses and, for chat-ops runs, a comment.

Bot-core's jobs call :func:`on_run_transition` after every run status change. For runs started
by a push, the pushed commit carries two statuses:

``repotune/train``  pending while the run is queued, ingesting or training; success once
                    training finished; failure/error if the run stopped before evaluation.
``repotune/eval``   pending while evaluating; success when the candidate passed the gate
                    (and later "serving as version N"); failure when rejected; error when it
                    passed but conversion or publishing failed.
``repotune/canary`` only with ``[canary] enabled``: pending while the version serves a share
                    of clients; success when the acceptance test (or an operator) promoted it,
                    failure when it was rolled back, each with the decision's figures.

Statuses use one forge-neutral vocabulary (``pending``, ``success``, ``failure``, ``error``);
:mod:`bot.forge` maps it onto GitHub's and GitLab's words. Reporting is best effort: a forge
outage, a missing token or a malformed run record is logged (never with a token) and swallowed,
so that it can never fail a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.config import Settings
from bot.errors import ConfigError
from bot.runs import (
    CANARY_PHASE,
    DEPLOY_PHASE,
    EVAL_PHASE,
    STOPPED,
    TERMINAL,
    TRAIN_PHASE,
    RunRecord,
    RunStatus,
)

log = logging.getLogger(__name__)

TRAIN_CONTEXT = "repotune/train"
EVAL_CONTEXT = "repotune/eval"
CANARY_CONTEXT = "repotune/canary"

_DESCRIPTION_MAX = 140  # GitHub rejects longer commit-status descriptions

_TRAIN_WORDS = {RunStatus.QUEUED: "queued", RunStatus.INGESTING: "updating the corpus",
                RunStatus.TRAINING: "training"}


@dataclass(frozen=True)
class CommitStatus:
    """One commit status to set: ``context`` is the check name, ``state`` the neutral state."""

    context: str
    state: str
    description: str


def _previous_status(run: RunRecord) -> RunStatus | None:
    """The status the run held before its current one (where a failure happened)."""
    seen = [RunStatus(entry[0]) for entry in run.history]
    if seen and seen[-1] == run.status:
        seen = seen[:-1]
    return seen[-1] if seen else None


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    if len(text) > _DESCRIPTION_MAX:
        text = text[: _DESCRIPTION_MAX - 1] + "…"
    return text


def _trained_description(run: RunRecord) -> str:
    loss = run.metrics.get("heldout_loss")
    if loss is None:
        loss = run.metrics.get("train_loss")
    steps = run.metrics.get("steps")
    parts = ["trained"]
    if steps is not None:
        parts.append(f"{steps} steps")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4f}")
    return ", ".join(parts)


def statuses_for(run: RunRecord, status: RunStatus | str | None = None) -> list[CommitStatus]:
    """The commit statuses that describe ``run`` when it is in ``status`` (default: its current
    status). Pure: reads the record, touches nothing."""
    status = run.status if status is None else RunStatus(status)
    error = (run.error or "").strip()
    if status in TRAIN_PHASE:
        return [CommitStatus(TRAIN_CONTEXT, "pending", _TRAIN_WORDS[status])]
    if status in EVAL_PHASE:
        return [
            CommitStatus(TRAIN_CONTEXT, "success", _trained_description(run)),
            CommitStatus(EVAL_CONTEXT, "pending", "evaluating against the serving model"),
        ]
    if status in DEPLOY_PHASE:
        return [CommitStatus(EVAL_CONTEXT, "success", f"passed the gate; {status.value}")]
    if status in CANARY_PHASE:
        return [CommitStatus(EVAL_CONTEXT, "success", f"passed the gate; canary as version {run.version}"),
                CommitStatus(CANARY_CONTEXT, "pending", canary_description(run))]
    canary = [CommitStatus(CANARY_CONTEXT, "success" if status == RunStatus.SERVING else "failure",
                           canary_description(run))] if _was_canary(run) else []
    if status == RunStatus.SERVING:
        text = f"passed; serving as version {run.version}" if run.version is not None else "passed; serving"
        return [CommitStatus(EVAL_CONTEXT, "success", text), *canary]
    if status == RunStatus.REJECTED and canary:
        return canary  # the gate passed; the canary rolled it back
    if status == RunStatus.REJECTED:
        text = "rejected: " + (error or "the candidate did not beat the serving model")
        return [CommitStatus(EVAL_CONTEXT, "failure", text)]
    if status in STOPPED:
        return [_stopped_status(run, status, error)]
    return []


def _was_canary(run: RunRecord) -> bool:
    return any(entry[0] == RunStatus.CANARY.value for entry in run.history)


def canary_description(run: RunRecord) -> str:
    """The canary's state in one line: its last decision's reason and figures."""
    canary = run.metrics.get("canary") or {}
    decision = canary.get("decision") or {}
    share = canary.get("share")
    head = decision.get("reason") or (f"serving {share:.0%} of clients" if isinstance(share, (int, float))
                                      else "serving a share of clients")
    figures = canary.get("summary")
    return f"{head}; {figures}" if figures else head


def _stopped_status(run: RunRecord, status: RunStatus, error: str) -> CommitStatus:
    """A failed or canceled run is reported on the context of the phase it stopped in."""
    where = _previous_status(run)
    word = "failed" if status == RunStatus.FAILED else "canceled"
    state = "failure" if status == RunStatus.FAILED else "error"
    suffix = f": {error}" if error else ""
    if where in EVAL_PHASE:
        return CommitStatus(EVAL_CONTEXT, state, f"evaluation {word}{suffix}")
    if where in CANARY_PHASE:
        return CommitStatus(CANARY_CONTEXT, "error", f"canary {word}{suffix}")
    if where in DEPLOY_PHASE:
        # The candidate passed; only getting it served went wrong.
        return CommitStatus(EVAL_CONTEXT, "error", f"passed, but {where.value} {word}{suffix}")
    return CommitStatus(TRAIN_CONTEXT, state, f"{word}{suffix}")


def _changed_statuses(run: RunRecord) -> list[CommitStatus]:
    """Statuses for the current state that differ from those already set at the previous one."""
    now = statuses_for(run)
    previous = _previous_status(run)
    if previous is None or previous in STOPPED:
        return now
    before = set(statuses_for(run, previous))
    return [s for s in now if s not in before]


def target_url(settings: Settings, run: RunRecord) -> str | None:
    """Link to the run on the status page, when ``settings.status_page_url`` is configured."""
    if not settings.status_page_url:
        return None
    return f"{settings.status_page_url.rstrip('/')}/runs/{run.id}"


def on_run_transition(settings: Settings, run: RunRecord) -> None:
    """Tell the forge about ``run``'s new status. Never raises.

    Push-triggered runs get commit statuses on the pushed commit; a chat-ops run whose trigger
    names the pull/merge request (``trigger.number``) gets a comment when it ends.
    """
    try:
        _report(settings, run)
    except ConfigError as exc:  # no credentials for this forge: reporting is simply off
        log.warning("run %s: not reporting to the forge: %s", getattr(run, "id", "?"), exc)
    except Exception:  # noqa: BLE001 - reporting must never fail a run
        log.exception("reporting run %s failed; the run itself is unaffected",
                      getattr(run, "id", "?"))


def _report(settings: Settings, run: RunRecord) -> None:
    trigger = run.trigger
    repo = trigger.repo or run.repo
    if trigger.forge not in ("github", "gitlab") or not repo:
        log.debug("run %s: no forge to report to (trigger %s)", run.id, trigger.kind)
        return
    from bot.forge import forge_for  # the forge clients import PyGithub / python-gitlab

    forge = forge_for(settings, trigger.forge)
    sha = trigger.commit
    if trigger.kind == "push" and sha:
        url = target_url(settings, run)
        for st in _changed_statuses(run):
            try:
                forge.set_status(repo, sha, st.context, st.state, _one_line(st.description), url)
                log.info("run %s: %s %s on %s@%s", run.id, st.context, st.state, repo, sha[:12])
            except Exception as exc:  # noqa: BLE001 - keep going with the other context
                log.warning("run %s: could not set %s on %s@%s: %s",
                            run.id, st.context, repo, sha[:12], exc)
    if trigger.kind == "chatops" and trigger.number and run.status in TERMINAL:
        from bot.forge import Target

        forge.comment(Target(repo, trigger.number, trigger.project_id), run_summary(settings, run))


def run_summary(settings: Settings, run: RunRecord) -> str:
    """A short markdown comment saying how a run ended."""
    lines = [f"**RepoTune run `{run.id}`: {run.status.value}**", ""]
    for st in statuses_for(run):
        lines.append(f"- `{st.context}`: {st.state} — {_one_line(st.description)}")
    canary = run.metrics.get("canary") or {}
    if canary.get("summary"):
        lines += ["", f"Canary of version {run.version}: {canary_description(run)}"]
    url = target_url(settings, run)
    if url:
        lines += ["", f"[Details on the status page]({url})"]
    return "\n".join(lines)
