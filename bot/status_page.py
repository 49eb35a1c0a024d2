"""The status page: a server-rendered view of RepoTune for people, served by the webhook app.

Routes (``bot.webhook.create_app`` registers :data:`blueprint`):

``/`` and ``/status``
    Repositories with corpus stats, model versions with the serving one, completion acceptance
    per version and language (from the proxy's telemetry), recent runs with their status and
    reports, the metric-history chart, queue state. Data: :func:`bot.status.snapshot`.
``/runs/<run_id>``
    One run: HTML for a browser (the links in commit statuses and MR comments land here), the
    ``run.json`` record as JSON for anything else (``?format=json`` forces JSON).
``/runs/<run_id>/report``
    The evaluation's ``report.md`` rendered as HTML (markdown-it-py, raw HTML escaped).
``/charts/history.png``
    :func:`trainer.evaluate.plot_history` over the listed runs' ``eval.json`` files. Without
    evaluations (or without the evaluator) the page says so in words; it never draws a fake chart.
``/charts/freshness/<corpus>.png``
    The same plotter over a corpus's freshness history (``runs/freshness/<corpus>.jsonl``, see
    :mod:`bot.freshness`): the serving model scored on each push's new code. The index shows the
    last points as a table next to it.

The page reads; it never changes state. Who may read it is decided in :mod:`bot.webhook` (the
status token, or a loopback listener). What it shows is :func:`bot.status.public`: no server
paths (home, checkpoints, reports), no clone URLs, no exception text; run errors and version
sources are scrubbed of absolute paths. It reads atomically written summaries only, never
waiting on a corpus lock (see :mod:`bot.status`).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
import time
import typing as t
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from bot.report_html import markdown_to_html as markdown_to_html
from bot.runs import RunRecord, RunStatus, list_runs, load_run, run_dir

blueprint = Blueprint("status_page", __name__, template_folder="templates")
"""Register on the webhook app; routes: ``/``, ``/status``, ``/runs/<id>``, ``/runs/<id>/report``,
``/charts/history.png``, ``/charts/freshness/<corpus>.png``."""

HISTORY_RUNS = 50
"""Most evaluated runs drawn in the metric-history chart (runs, oldest on the left)."""

STATUS_CLASS = {
    RunStatus.SERVING: "good", RunStatus.REJECTED: "warn", RunStatus.FAILED: "bad",
    RunStatus.CANCELED: "muted", RunStatus.QUEUED: "muted",
}
"""CSS class of each run status badge (anything else is in progress: ``busy``)."""

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# --- data ----------------------------------------------------------------------------------


def _context() -> tuple[t.Any, t.Any]:
    """(settings, redis) the webhook app was created with."""
    ext = current_app.extensions.get("repotune")
    if not ext:
        raise RuntimeError("bot.status_page needs the webhook app (bot.webhook.create_app), which "
                           "stores settings and Redis in app.extensions['repotune']")
    return ext["settings"], ext.get("status_redis", ext.get("redis"))


def _model_versions(settings: t.Any, status: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Published versions, newest first, with serving/failed/source; from the model repository
    when ``serving`` is importable, else the bare numbers the snapshot found."""
    serving = status.get("serving") or {}
    current = serving.get("version")
    try:
        from bot import serving_version

        versions = serving_version.repository(settings, need_triton=False).versions()
    except Exception:  # serving missing or a half-written version folder: show what the snapshot saw
        versions = [{"version": v, "serving": v == current, "failed": None} for v in serving.get("versions", [])]
    from bot.status import scrub

    return sorted(({**v, "source": scrub(v.get("source"))} for v in versions),
                  key=lambda v: v["version"], reverse=True)


def _run_view(run: dict[str, t.Any], home: Path) -> dict[str, t.Any]:
    """What a runs-table row shows, derived from a ``run.json`` dict."""
    from bot.status import scrub

    status = RunStatus(run["status"])
    rdir = run_dir(home, run["id"])
    report = run.get("eval_report") or str(rdir / "report.md")
    history = run.get("history") or []
    updated = history[-1][1] if history else run.get("created")
    trigger = run.get("trigger") or {}
    metrics = run.get("metrics") or {}
    return {
        "id": run["id"],
        "status": status.value,
        "status_class": STATUS_CLASS.get(status, "busy"),
        "repo": run.get("repo") or trigger.get("repo") or "all",
        "trigger": trigger.get("kind", ""),
        "commit": (trigger.get("commit") or "")[:10],
        "requested_by": trigger.get("requested_by"),
        "created": run.get("created"),
        "updated": updated,
        "version": run.get("version"),
        "error": scrub(run.get("error")),
        "has_report": Path(report).is_file(),
        "metrics": _headline_metrics(metrics),
        "progress": run.get("progress") or {},
    }


def _headline_metrics(metrics: dict[str, t.Any]) -> list[tuple[str, str]]:
    """A few (label, value) pairs for the runs table: numbers only, short."""
    out = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out.append((key, f"{value:.4g}" if isinstance(value, float) else str(value)))
        if len(out) == 4:
            break
    return out


def _eval_jsons(home: Path, runs: list[RunRecord]) -> list[Path]:
    """``eval.json`` of the runs that have one, oldest first (the chart's x axis)."""
    return [p for r in sorted(runs, key=lambda r: r.id) if (p := run_dir(home, r.id) / "eval.json").is_file()]


def _plotter() -> t.Callable[..., Path] | None:
    try:
        from trainer.evaluate import plot_history
    except ImportError:
        return None
    return plot_history


def _chart_state(home: Path) -> dict[str, t.Any]:
    """Whether the history chart can be drawn, and if not, why (shown instead of the chart)."""
    evals = _eval_jsons(home, list_runs(home, HISTORY_RUNS))
    if _plotter() is None:
        return {"available": False, "reason": "The metric-history chart needs trainer.evaluate.plot_history, "
                                              "which this installation does not have."}
    if not evals:
        return {"available": False, "reason": "No run has been evaluated yet: the metric-history chart "
                                              "appears once a run has an eval.json."}
    return {"available": True, "runs": len(evals), "key": _chart_key(evals)}


def _chart_key(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size};".encode())
    return digest.hexdigest()[:16]


_chart_cache: dict[str, bytes] = {}
_chart_lock = threading.Lock()


def _render_chart(home: Path) -> bytes | None:
    """The chart PNG (cached per set of eval.json files and their mtimes), or None."""
    plot = _plotter()
    evals = _eval_jsons(home, list_runs(home, HISTORY_RUNS))
    if plot is None or not evals:
        return None
    key = _chart_key(evals)
    with _chart_lock:
        if key in _chart_cache:
            return _chart_cache[key]
        with tempfile.TemporaryDirectory(prefix="repotune-chart-") as tmp:
            png = Path(plot(evals, Path(tmp) / "history.png")).read_bytes()
        _chart_cache.clear()  # only the newest chart is worth keeping
        _chart_cache[key] = png
        return png


_freshness_cache: dict[str, bytes] = {}


def _freshness_view(home: Path, status: dict[str, t.Any]) -> dict[str, t.Any]:
    """Per corpus: its last freshness points, newest first, and whether a chart can be drawn."""
    from bot import freshness

    data = status.get("freshness") or {}
    if "error" in data and not isinstance(data.get("error"), list):
        return {"error": data["error"], "corpora": {}}
    plot = _plotter() is not None
    corpora = {}
    for name, points in data.items():
        path = freshness.history_path(home, name)
        chart = plot and any(p.get("ok") for p in points) and path.is_file()
        corpora[name] = {"points": list(reversed(points)),
                         "chart_key": _chart_key([path]) if chart else None}
    return {"error": None, "corpora": corpora}


def _render_freshness_chart(home: Path, corpus: str) -> bytes | None:
    """The freshness chart of one corpus (cached per file version), or None without one."""
    from bot import freshness

    plot = _plotter()
    try:
        path = freshness.history_path(home, corpus)
    except ValueError:
        return None
    if plot is None or not any(e.get("ok") for e in freshness.read(path)):
        return None
    key = f"{corpus}:{_chart_key([path])}"
    with _chart_lock:
        if key in _freshness_cache:
            return _freshness_cache[key]
        with tempfile.TemporaryDirectory(prefix="repotune-freshness-") as tmp:
            # Only the successful points: a failed evaluation has no scores to draw.
            ok = Path(tmp) / "freshness.jsonl"
            ok.write_text("".join(json.dumps(e) + "\n" for e in freshness.read(path) if e.get("ok")),
                          encoding="utf-8")
            png = Path(plot([ok], Path(tmp) / "freshness.png")).read_bytes()
        for old in [k for k in _freshness_cache if k.split(":", 1)[0] == corpus]:
            del _freshness_cache[old]
        _freshness_cache[key] = png
        return png


def _editor_view(status: dict[str, t.Any]) -> dict[str, t.Any]:
    """Per model: its last editor-task points, newest first; ``off`` when store_code is off."""
    data = status.get("editor_freshness") or {}
    if data.get("error"):
        return {"error": data["error"], "off": False, "models": {}}
    return {"error": None, "off": not data.get("store_code"),
            "models": {name: list(reversed(points)) for name, points in (data.get("models") or {}).items() if points}}


def _acceptance_view(status: dict[str, t.Any]) -> dict[str, t.Any]:
    """The acceptance rows grouped per version (newest first), with their figures as text."""
    data = status.get("acceptance") or {}
    if data.get("error"):
        return {"error": data["error"], "versions": [], "days": data.get("days")}
    from serving.acceptance import format_kept, format_rate

    versions: dict[int, list[dict[str, t.Any]]] = {}
    for row in data.get("rows") or []:
        versions.setdefault(row["version"], []).append(
            {**row, "rate_text": format_rate(row), "kept_text": format_kept(row)})
    return {"error": None, "days": data.get("days"),
            "versions": [{"version": v, "rows": rows} for v, rows in sorted(versions.items(), reverse=True)]}


def _canary_view(status: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Per model with a canary now or before: the running one (versions, share, since, and per
    arm shown / accepted / rate with the interval of the last look) and the last decision."""
    out = []
    for m in status.get("models") or []:
        part = m.get("canary") or {}
        if part.get("error"):
            out.append({"model": m["name"], "error": part["error"], "running": None, "last": None})
            continue
        running, last = part.get("running"), part.get("last")
        if not running and not last:
            continue
        view: dict[str, t.Any] = {"model": m["name"], "error": None, "running": None, "last": last}
        if running:
            decision = running.get("decision") or {}
            view["running"] = {**running, "arms": [_arm_view("production", decision.get("production")),
                                                   _arm_view("canary", decision.get("candidate"))]
                               if decision else [], "interval": _interval_text(decision)}
        if last:
            view["last"] = {**last, "interval": _interval_text(last.get("decision") or {})}
        out.append(view)
    return out


def _arm_view(role: str, arm: dict[str, t.Any] | None) -> dict[str, t.Any]:
    arm = arm or {}
    rate = arm.get("rate")
    return {"role": role, "version": arm.get("version"), "shown": arm.get("shown", 0),
            "accepted": arm.get("accepted", 0), "rate_text": "–" if rate is None else f"{rate:.1%}"}


def _interval_text(decision: dict[str, t.Any]) -> str:
    """``+11.0 points (+3.2 … +18.5) at 97.5%``, or why there is none yet."""
    d, low, high, conf = (decision.get(k) for k in ("difference", "low", "high", "confidence"))
    if None in (d, low, high, conf):
        return "no interval yet (too few shown completions per version)"
    return f"{d * 100:+.1f} points ({low * 100:+.1f} … {high * 100:+.1f}) at {conf:.1%}"


# --- Markdown ------------------------------------------------------------------------------


# --- template helpers ----------------------------------------------------------------------


@blueprint.app_template_filter("rt_time")
def _fmt_time(value: t.Any) -> str:
    """Unix time → ``2026-11-29 12:16 UTC``; empty for None."""
    if not isinstance(value, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


@blueprint.app_template_filter("rt_bytes")
def _fmt_bytes(value: t.Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - loop returns


@blueprint.app_template_filter("rt_ago")
def _fmt_ago(value: t.Any) -> str:
    """Unix time → ``5 min ago``."""
    if not isinstance(value, (int, float)):
        return ""
    delta = max(0, int(time.time() - value))
    if delta < 60:
        return f"{delta} s ago"
    if delta < 3600:
        return f"{delta // 60} min ago"
    if delta < 86400:
        return f"{delta // 3600} h ago"
    return f"{delta // 86400} d ago"


# --- routes --------------------------------------------------------------------------------


@blueprint.get("/")
@blueprint.get("/status")
def index() -> str:
    from bot.status import public, snapshot

    settings, connection = _context()
    home = Path(settings.home)
    raw = snapshot(settings, connection).to_dict()
    status = public(raw)
    serving = status.get("serving") or {}
    return render_template(
        "status_page/index.html",
        status=status,
        serving=serving,
        versions=_model_versions(settings, status),
        repositories=status.get("repositories", []),
        runs=[_run_view(r, home) for r in raw.get("runs", [])],  # the view keeps no paths
        queues=status.get("queues") or {},
        redis=status.get("redis") or {},
        paused=status.get("paused"),
        pending=status.get("pending") or {},
        training_lock=status.get("training_lock"),
        chart=_chart_state(home),
        freshness=_freshness_view(home, status),
        editor_freshness=_editor_view(status),
        acceptance=_acceptance_view(status),
        canaries=_canary_view(status),
        model_parts=status.get("models") or [],
    )


def _wants_json() -> bool:
    if request.args.get("format") == "json":
        return True
    if request.args.get("format") == "html":
        return False
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best != "text/html" or request.accept_mimetypes["application/json"] > request.accept_mimetypes["text/html"]


def _load(run_id: str) -> RunRecord:
    settings, _ = _context()
    if not _RUN_ID.match(run_id):
        abort(404)
    try:
        return load_run(Path(settings.home), run_id)
    except Exception:
        abort(404)


@blueprint.get("/runs/<run_id>")
def run(run_id: str) -> t.Any:
    settings, _ = _context()
    if not _RUN_ID.match(run_id) or not (run_dir(Path(settings.home), run_id) / "run.json").is_file():
        if _wants_json():
            return jsonify({"error": f"no run {run_id!r}; /api/status lists the recent ones"}), 404
        abort(404)
    from bot.status import public_run

    record = _load(run_id)
    shown = public_run(record.as_dict())
    if _wants_json():
        return jsonify(shown)
    home = Path(settings.home)
    return render_template("status_page/run.html", run=shown, view=_run_view(record.as_dict(), home),
                           history=shown["history"])


@blueprint.get("/runs/<run_id>/report")
def report(run_id: str) -> t.Any:
    settings, _ = _context()
    record = _load(run_id)
    path = Path(record.eval_report) if record.eval_report else run_dir(Path(settings.home), run_id) / "report.md"
    if not path.is_file():
        return render_template("status_page/report.html", run=record.as_dict(), body=None,
                               missing=f"Run {run_id} has no evaluation report (yet)."), 404
    body = markdown_to_html(path.read_text(encoding="utf-8", errors="replace"))
    return render_template("status_page/report.html", run=record.as_dict(), body=body, missing=None)


@blueprint.get("/charts/history.png")
def history_chart() -> Response:
    settings, _ = _context()
    png = _render_chart(Path(settings.home))
    if png is None:
        state = _chart_state(Path(settings.home))
        return Response(state.get("reason", "no chart"), status=404, mimetype="text/plain")
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-cache"})


@blueprint.get("/charts/freshness/<path:corpus>.png")
def freshness_chart(corpus: str) -> Response:
    settings, _ = _context()
    png = _render_freshness_chart(Path(settings.home), corpus)
    if png is None:
        return Response(f"no forward evaluation of {corpus!r} to draw yet", status=404, mimetype="text/plain")
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-cache"})
