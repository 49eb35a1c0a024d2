"""Canary promotion in the bot: start at publish, judge on every scheduler tick, promote or stop.

With ``[canary] enabled`` the publish step (:func:`start`) loads the new version beside
production and routes ``canary.share`` of clients to it (:meth:`serving.ModelRepository.start_canary`);
the run moves to ``canary`` and keeps the model's lock, so no other run publishes meanwhile
(pushes wait in ``pending`` for the follow-up run, as they do during training). Each
:func:`bot.scheduler.tick` then calls :func:`evaluate`: acceptance per version since the canary
started (:func:`serving.acceptance.summarize` over the proxy's telemetry) goes into the sequential
test (:func:`serving.canary.decide`, docs/canary.md), and the decision, its numbers and interval
land in ``run.json`` (``metrics.canary``), the commit status ``repotune/canary`` and, for chat-ops
runs, the closing comment. Operators act through :func:`enqueue_action` (``repotune canary
promote|stop``, chat-ops ``/repotune canary promote|stop``), which queues :func:`action_job` on the
``deploy`` queue, where Triton is known, like ``promote`` and ``rollback``. A promotion, by the
test or by hand, queues the editor-task evaluation of the new version exactly as a plain publish
does (:func:`bot.freshness.queue_editor_eval`), so the editor curve gets its point.

Per model: every canary belongs to one model (:mod:`bot.models`). A run's canary is judged in its
model's view (:func:`bot.lifecycle.run_settings`: its Triton model, and acceptance of that
model's name only); ``status`` / ``enqueue_action`` take ``model`` (None: the one model, or a
BotError listing the names when several are configured). :func:`part` is the status snapshot's
piece: the running canary with its last recorded figures, and the last decision.

Clocks: the pointer's ``since`` and the telemetry's record times are the proxy host's wall
clock, so the test uses ``time.time()``, not the scheduler's Redis clock.
"""

from __future__ import annotations

import logging
import time
import typing as t

import redis

from bot import defaults, freshness, lifecycle, locks, models, serving_version
from bot import queue as q
from bot.config import Settings, current
from bot.errors import BotError, ConfigError
from bot.proxy_settings import telemetry_folder
from bot.runs import RunRecord, RunStatus, active_runs, list_runs, save_run
from serving.canary import PROMOTE, ROLLBACK, Arm, CanaryPolicy, CanaryState, Decision, decide

if t.TYPE_CHECKING:
    from serving import ModelRepository

log = logging.getLogger(__name__)

ACTIONS = ("promote", "stop")
"""What an operator can do to a running canary."""


def policy(settings: Settings) -> CanaryPolicy:
    """The test's parameters from ``[canary]``; ConfigError naming the key when one is out of range."""
    c = settings.canary
    problems = [f"canary.{name} = {value!r} must be {rule}" for name, value, ok, rule in (
        ("share", c.share, 0 < c.share < 1, "between 0 and 1 (exclusive)"),
        ("min_shown", c.min_shown, c.min_shown >= 1, "at least 1"),
        ("margin", c.margin, 0 <= c.margin < 1, "between 0 and 1"),
        ("confidence", c.confidence, 0.5 <= c.confidence < 1, "between 0.5 and 1 (exclusive)"),
        ("max_duration_seconds", c.max_duration_seconds, c.max_duration_seconds > 0, "positive"),
    ) if not ok]
    if problems:
        raise ConfigError("; ".join(problems) + "; see `repotune config --help-settings`")
    return CanaryPolicy(min_shown=int(c.min_shown), margin=float(c.margin), confidence=float(c.confidence),
                        max_duration_seconds=float(c.max_duration_seconds))


def start(settings: Settings, repository: ModelRepository, run: RunRecord, version: int,
          progress: t.Callable[[dict[str, t.Any]], None] | None = None) -> CanaryState:
    """The publish step's canary: load ``version`` beside production and record it in the run."""
    policy(settings)  # a bad setting fails the step before anything is loaded
    state = repository.start_canary(version, settings.canary.share, progress=progress)
    run.metrics["canary"] = {**state.as_dict(), "look": 0, "decision": None, "summary": None}
    return state


# --------------------------------------------------------------------------- judging


def arms(settings: Settings, production: int, state: CanaryState, now: float) -> tuple[Arm, Arm]:
    """Shown and accepted completions of production and the canary since the canary started."""
    from serving.acceptance import ALL_LANGUAGES, summarize

    days = max(now - state.since, 0.0) / 86400.0
    rows = [r for r in summarize(telemetry_folder(settings), days=days, now=now)
            if r.language == ALL_LANGUAGES and r.model == settings.serving.model_name]
    counts = {r.version: (r.shown, r.accepted) for r in rows}
    prod, cand = counts.get(production, (0, 0)), counts.get(state.version, (0, 0))
    return Arm(production, *prod), Arm(state.version, *cand)


def judge(settings: Settings, production: int, state: CanaryState, last_look: int = 0,
          now: float | None = None) -> Decision:
    """The sequential test on the acceptance so far (pure apart from reading telemetry)."""
    now = time.time() if now is None else now
    prod, cand = arms(settings, production, state, now)
    return decide(prod, cand, policy(settings), now - state.since, last_look)


def _record(run: RunRecord, state: CanaryState, decision: Decision, by: str | None = None) -> None:
    entry = dict(run.metrics.get("canary") or {}, **state.as_dict())
    entry.update(look=max(int(entry.get("look") or 0), decision.look), decision=decision.as_dict(),
                 summary=decision.summary(), judged_at=time.time())
    if by:
        entry["by"] = by
    run.metrics["canary"] = entry


def _settle(settings: Settings, conn: redis.Redis | None, run: RunRecord, promoted: bool, note: str,
            production: int | None = None) -> None:
    """Move the canary run to serving or rejected, report it and free the model. A promotion
    queues the new version's editor-task evaluation on ``production``'s tasks (as publish does)."""
    if promoted and conn is not None and run.version is not None:
        freshness.queue_editor_eval(settings, conn, run.version, production, run.checkpoint, run.id)
    if not promoted:
        run.error = note
    lifecycle.move(settings, run, RunStatus.SERVING if promoted else RunStatus.REJECTED, note)
    if conn is not None:
        locks.release_lock(conn, lifecycle.model_of(settings, run), run.id)


def _model_of(settings: Settings, run: RunRecord) -> str:
    return run.model or (settings.model.name if settings.model else settings.serving.model_name)


def canary_runs(settings: Settings, model: str | None = None) -> list[RunRecord]:
    """Runs in status ``canary`` (at most one per model), of ``model`` only when given."""
    return [r for r in active_runs(settings.home) if r.status == RunStatus.CANARY
            and (model is None or _model_of(settings, r) == model)]


def evaluate(settings: Settings, conn: redis.Redis, now: float | None = None) -> list[dict[str, t.Any]]:
    """The scheduler tick's hook: judge every running canary, acting on promote / rollback.

    Keeps each canary run's model lease (so the abandoned-run check leaves it alone) and never
    raises: a canary whose Triton is briefly away is judged again at the next tick."""
    out = []
    for run in canary_runs(settings):
        try:
            view = lifecycle.run_settings(settings, run, snapshot=False)  # its model's Triton and name
            out.append(_evaluate_run(view, conn, run, time.time() if now is None else now))
        except Exception as exc:  # noqa: BLE001 - one canary's trouble must not stop the tick
            log.warning("canary of run %s not judged this tick: %s", run.id, exc)
            out.append({"run": run.id, "action": "error", "reason": str(exc)})
    return out


def _evaluate_run(settings: Settings, conn: redis.Redis, run: RunRecord, now: float) -> dict[str, t.Any]:
    locks.keep_lock(conn, lifecycle.model_of(settings, run), run.id, settings.policy.lock_lease_seconds)
    repository = serving_version.repository(settings, need_triton=False)
    state, production = repository.canary(), repository.current()
    if state is None or state.version != run.version or production is None:
        # Ended outside the bot (by hand on the model repository): follow what the pointer says.
        promoted = production == run.version
        _settle(settings, conn, run, promoted, "the canary ended outside RepoTune; version "
                f"{production} serves", production=None)
        return {"run": run.id, "action": "promote" if promoted else "rollback", "reason": "ended outside"}
    last = int((run.metrics.get("canary") or {}).get("look") or 0)
    decision = judge(settings, production, state, last, now)
    _record(run, state, decision)
    if decision.action in (PROMOTE, ROLLBACK):
        repository = serving_version.repository(settings)  # now Triton is needed
        (repository.promote_canary if decision.action == PROMOTE else repository.stop_canary)()
        _settle(settings, conn, run, decision.action == PROMOTE, decision.reason, production=production)
        log.info("canary of run %s (version %s): %s; %s", run.id, state.version, decision.reason,
                 decision.summary())
    else:
        save_run(settings.home, run)
    return {"run": run.id, "version": state.version, "action": decision.action, "reason": decision.reason,
            "summary": decision.summary()}


# --------------------------------------------------------------------------- operators


def _view(settings: Settings, model: str | None) -> Settings:
    """Model ``model``'s view (None: the one model; several configured: a BotError naming them)."""
    return models.settings_for(settings, model)


def status(settings: Settings, model: str | None = None) -> dict[str, t.Any]:
    """What ``canary status`` shows for ``model``: production, the canary (or None), its run and
    the test on the figures so far (computed now, from the telemetry)."""
    view = _view(settings, model)
    name = view.serving.model_name
    repository = serving_version.repository(view, need_triton=False)
    state, production = repository.canary(), repository.current()
    out: dict[str, t.Any] = {"model": name, "enabled": settings.canary.enabled,
                             "production": production, "canary": None, "last": last_decision(view)}
    if state is None or production is None:
        return out
    run = next((r for r in canary_runs(view, name) if r.version == state.version), None)
    last = int(((run.metrics.get("canary") or {}).get("look") or 0) if run else 0)
    decision = judge(view, production, state, last)
    out["canary"] = {**state.as_dict(), "run": run.id if run else None, "decision": decision.as_dict(),
                     "summary": decision.summary(), "next": decision.reason}
    return out


def format_status(data: t.Mapping[str, t.Any]) -> str:
    """``status`` as a few plain lines (the CLI; chat-ops wraps them)."""
    canary = data.get("canary")
    lines = [f"model {data['model']}: production version {data.get('production') or 'none'}"]
    if not canary:
        enabled = "enabled" if data.get("enabled") else "off ([canary] enabled = false)"
        lines.append(f"no canary is running (canary promotion is {enabled})")
        last = data.get("last")
        if last:
            lines.append(f"last canary: version {last['version']} {last['outcome']} ({last['reason']}); "
                         f"{last.get('summary') or 'no figures'}")
        return "\n".join(lines)
    lines += [f"canary version {canary['version']} serves {canary['share']:.0%} of clients since "
              f"{_utc(canary['since'])}" + (f" (run {canary['run']})" if canary.get("run") else ""),
              canary["summary"], f"now: {canary['next']}"]
    return "\n".join(lines)


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))


def enqueue_action(settings: Settings, conn: redis.Redis, action: str, by: str, model: str | None = None) -> str:
    """Queue an operator's ``promote`` or ``stop`` of ``model``'s canary on the deploy queue; the job id."""
    if action not in ACTIONS:
        raise BotError(f"unknown canary action {action!r}; use one of {', '.join(ACTIONS)}")
    view = _view(settings, model)
    name = view.serving.model_name
    if serving_version.repository(view, need_triton=False).canary() is None:
        raise BotError(f"no canary of {name} is running; `canary status` shows what serves")
    return q.enqueue(conn, q.JobSpec("deploy", "bot.canary.action_job", (action, by), {"model": name},
                                     {"timeout": defaults.DEPLOY_JOB_TIMEOUT_SECONDS,
                                      "description": f"canary {action} of {name} by {by}"})).id


def action_job(action: str, by: str, model: str | None = None) -> dict[str, t.Any]:
    """An operator's ``promote`` / ``stop`` (the deploy queue's job): act, then settle its run."""
    view = _view(current(), model)
    name = view.serving.model_name
    repository = serving_version.repository(view)
    state, production = repository.canary(), repository.current()
    if state is None or production is None:
        raise BotError(f"no canary of {name} is running (it may have been decided by the scheduler meanwhile)")
    run = next((r for r in canary_runs(view, name) if r.version == state.version), None)
    decision = judge(view, production, state)
    (repository.promote_canary if action == "promote" else repository.stop_canary)()
    word = "promoted" if action == "promote" else "rolled back"
    note = f"{word} by hand ({by})"
    conn = lifecycle.connection(view)
    if run is not None:
        _record(run, state, decision, by=by)
        run.metrics["canary"]["decision"]["reason"] = note
        _settle(view, conn, run, action == "promote", note, production=production)
    elif action == "promote":  # no run (started by hand): the editor curve still gets its point
        freshness.queue_editor_eval(view, conn, state.version, production, None, None)
    return {"action": action, "model": name, "version": state.version, "run": run.id if run else None,
            "summary": decision.summary()}


# --------------------------------------------------------------------------- the status snapshot


def last_decision(view: Settings, limit: int = 50) -> dict[str, t.Any] | None:
    """The newest decided canary of the view's model among the last ``limit`` runs: its run,
    version, outcome (``promoted`` / ``rolled back``), reason, figures and when."""
    name = view.serving.model_name
    for run in list_runs(view.home, limit=limit):
        entry = run.metrics.get("canary") or {}
        if _model_of(view, run) != name or not entry.get("decision") or run.status == RunStatus.CANARY:
            continue
        decision = entry["decision"]
        outcome = "promoted" if run.status == RunStatus.SERVING else "rolled back"
        return {"run": run.id, "version": run.version, "outcome": outcome, "reason": decision.get("reason"),
                "summary": entry.get("summary"), "decision": decision, "by": entry.get("by"),
                "at": run.updated}
    return None


def part(view: Settings) -> dict[str, t.Any]:
    """The status snapshot's canary piece for the view's model: ``running`` (the pointer's canary,
    production, its run and the figures the last scheduler tick recorded, with ``judged_at``) or
    None, and ``last`` (:func:`last_decision`). Reads the pointer and run records only: no
    telemetry, so a status view never waits on a large telemetry folder."""
    repository = serving_version.repository(view, need_triton=False)
    state, production = repository.canary(), repository.current()
    out: dict[str, t.Any] = {"enabled": view.canary.enabled, "running": None, "last": last_decision(view)}
    if state is None:
        return out
    run = next((r for r in canary_runs(view, view.serving.model_name) if r.version == state.version), None)
    entry = (run.metrics.get("canary") or {}) if run else {}
    out["running"] = {**state.as_dict(), "production": production, "run": run.id if run else None,
                      "decision": entry.get("decision"), "summary": entry.get("summary"),
                      "judged_at": entry.get("judged_at")}
    return out


def format_part(model: str, data: t.Mapping[str, t.Any]) -> list[str]:
    """:func:`part` as lines for ``repotune status`` (none when no canary ever ran)."""
    if data.get("error"):
        return [f"canary of {model}: {data['error']}"]
    lines = []
    running, last = data.get("running"), data.get("last")
    if running:
        head = (f"canary of {model}: version {running['version']} serves {running['share']:.0%} of clients "
                f"beside production version {running.get('production')} since {_utc(running['since'])}"
                + (f" (run {running['run']})" if running.get("run") else ""))
        decision = running.get("decision")
        look = (f"  at the last look ({_utc(running['judged_at'])}): {running.get('summary')}; {decision['reason']}"
                if decision and running.get("judged_at") else "  not judged yet (the scheduler looks every tick)")
        lines += [head, look]
    if last:
        lines.append(f"last canary of {model}: version {last['version']} {last['outcome']} (run {last['run']}): "
                     f"{last.get('reason')}; {last.get('summary') or 'no figures'}")
    return lines
