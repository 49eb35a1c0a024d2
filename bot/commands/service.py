"""Service commands: ``webhook``, ``worker``, ``up``, ``status``, ``runs``, ``init``, ``config``."""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import click

from bot.commands._common import home_option

if t.TYPE_CHECKING:
    from bot import config

CONFIG_ENV = "REPOTUNE_CONFIG"
"""``bot.config.CONFIG_ENV``, spelled out so ``--help`` need not import the settings table
(``tests/test_cli_imports.py`` checks the two agree)."""
CONFIG_FILENAME = "repotune.toml"
"""``bot.config.CONFIG_FILENAME``, for the same reason."""

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    envvar=CONFIG_ENV, help="repotune.toml to read (default: ./repotune.toml if present).")


def _settings(config_path: Path | None, home: Path | None = None, **overrides: t.Any) -> config.Settings:
    from bot import config

    settings = config.load(config_path)
    if home is not None:
        settings.home = Path(home).expanduser().resolve()
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    config.set_current(settings)
    return settings


def _redis(settings: config.Settings):
    from bot import queue as q

    if not settings.redis_url:
        raise click.ClickException("no Redis: set REDIS_URL (redis://host:6379/0), or run `repotune up`, "
                                   "which starts an embedded one")
    return q.connect(settings.redis_url)


@click.command("webhook")
@config_option
@home_option
@click.option("--host", default=None, help="Interface to bind (default: webhook.host).")
@click.option("--port", type=int, default=None, help="Port (default: webhook.port).")
@click.option("--threads", "--workers", "threads", type=int, default=8, show_default=True,
              help="Worker threads answering requests (--workers is the old spelling: it now means "
                   "threads, not processes).")
@click.option("--insecure-no-webhook-secret", is_flag=True, default=None,
              help="Development only: accept unsigned deliveries when no secret is set.")
def webhook_command(config_path, home, host, port, threads, insecure_no_webhook_secret) -> None:
    """Serve the webhook app and status page on the production HTTP edge (waitress).

    Slow clients cost a socket, not a thread; idle connections are closed; bodies over
    webhook.max_body_bytes get 413. SIGTERM and SIGINT stop it.
    """
    import signal

    from bot.webhook import server

    settings = _settings(config_path, home, insecure_no_webhook_secret=insecure_no_webhook_secret)
    http = server(settings, host, port, threads).bind()

    def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    click.echo(f"webhook listening on {http.url} ({threads} threads)", err=True)
    try:
        http.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        http.stop()


@click.command("worker")
@config_option
@home_option
@click.option("--queues", default="ingest,gpu,deploy,control", show_default=True,
              help="Comma-separated queues to work on, in priority order.")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("--simple", is_flag=True, help="Run jobs in this process (no fork per job).")
def worker_command(config_path, home, queues, burst, simple) -> None:
    """Run an RQ worker for RepoTune's jobs."""
    from rq import SimpleWorker, Worker

    from bot import config
    from bot import queue as q

    settings = _settings(config_path, home)
    connection = _redis(settings)
    names = [n.strip() for n in queues.split(",") if n.strip()]
    try:
        qs = [q.get_queue(n, connection) for n in names]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--queues") from exc
    cls = SimpleWorker if simple else Worker
    # Jobs load settings themselves (config.current), so an edited repotune.toml applies to the
    # next job without restarting workers; the environment carries what the flags chose.
    chosen = {"REPOTUNE_HOME": str(settings.home)}
    if settings.source:
        chosen[CONFIG_ENV] = str(settings.source)
    saved = {key: os.environ.get(key) for key in chosen}
    os.environ.update(chosen)
    config.set_current(None)
    try:
        cls(qs, connection=connection).work(burst=burst, with_scheduler=True)
    finally:  # a burst worker run in-process must not leave its choices behind
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@click.command("up")
@config_option
@home_option
@click.option("--insecure-no-webhook-secret", is_flag=True, default=None,
              help="Development only: accept unsigned deliveries when no secret is set.")
def up_command(config_path, home, insecure_no_webhook_secret) -> None:
    """Start everything on this machine: Redis, Triton, webhook, workers, scheduler, proxy."""
    from bot import up

    settings = _settings(config_path, home, insecure_no_webhook_secret=insecure_no_webhook_secret)
    up.run(settings, bootstrap=BOOTSTRAP)


def _bootstrap(settings: config.Settings) -> None:
    from bot import demo

    demo.bootstrap(settings)


BOOTSTRAP: t.Callable[[config.Settings], None] | None = _bootstrap
"""The step ``repotune up`` runs before starting workers: with no repository configured, the
demo forge (its webhooks signed with a generated secret); a tiny base model bootstrapped from
the corpus when none is configured; the base model as the first serving version."""


@click.command("status")
@config_option
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the full status as JSON.")
@click.option("--model", default=None, metavar="NAME", help="Only this model (its repositories, runs, versions).")
def status_command(config_path, home, as_json, model) -> None:
    """Repositories, serving version, recent runs, queues: a section per model."""
    from bot import canary
    from bot.errors import BotError
    from bot.status import snapshot

    settings = _settings(config_path, home)
    connection = _redis(settings) if settings.redis_url else None
    try:
        status = snapshot(settings, connection, model=model)
    except BotError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2, default=str))
        return
    for m in status.models:
        sv = m.serving
        click.echo(f"model {m.name} ({m.method}, repos {', '.join(m.repos) or 'none'}): serving {sv.model} "
                   f"version {sv.version or '—'} (versions {sv.versions or 'none'}); last run "
                   f"{m.last_run or '—'} {m.last_run_status or ''}".rstrip()
                   + (f"; training {m.training_lock}" if m.training_lock else "")
                   + ("; paused" if m.paused else "")
                   + (f"; pending files {m.pending['files']}" if m.pending else ""))
        for line in canary.format_part(m.name, m.canary):
            click.echo(line)
    for repo in status.repositories:
        c = repo.corpus or {}
        click.echo(f"repo {repo.name}: commit {str(c.get('commit') or '—')[:12]} "
                   f"version {c.get('version', '—')} files {c.get('train_files', '—')}+{c.get('heldout_files', '—')}")
        if repo.retired:
            click.echo(f"  retired (branch deleted): {', '.join(repo.retired)}")
    queue = status.queue
    if queue.ok:
        queues = ", ".join(f"{n} {v['queued']}/{v['started']}" for n, v in queue.queues.items())
        click.echo(f"queues (queued/running): {queues}; paused: {queue.paused}; "
                   f"pending files: {queue.pending['files']}")
    else:
        click.echo(f"redis: {queue.error}")
    for run in status.runs[:5]:
        click.echo(f"run {run.id}: {run.status.value}")
    _echo_freshness(status.freshness)
    _echo_editor_freshness(status.editor_freshness)
    _echo_acceptance(status.acceptance)


def _echo_acceptance(acceptance: dict[str, t.Any]) -> None:
    if acceptance.get("error"):
        click.echo(f"acceptance: {acceptance['error']}")
        return
    from serving.acceptance import format_kept, format_rate

    for r in acceptance.get("rows") or []:
        scope = "all languages" if r["language"] == "*" else r["language"]
        click.echo(f"acceptance version {r['version']} {scope}: {r['accepted']}/{r['shown']} shown accepted, "
                   f"{format_rate(r)}; kept after edits {format_kept(r)}; served {r['served']}")


def _echo_freshness(history: dict[str, t.Any]) -> None:
    for corpus, points in history.items():
        if not isinstance(points, list) or not points:
            continue
        last = points[-1]
        scores = ", ".join(f"{k} {v:.3f}" for k, v in last["scores"].items() if isinstance(v, (int, float)))
        click.echo(f"freshness {corpus}: {len(points)} pushes scored; last {str(last['commit'])[:12]} "
                   f"on version {last['serving_version']}: {scores or last.get('error') or 'no score'}")


def _echo_editor_freshness(editor: dict[str, t.Any]) -> None:
    """The second curve: versions scored on the completions developers accepted (bot.freshness)."""
    if editor.get("error"):
        click.echo(f"editor tasks: {editor['error']}")
        return
    if not editor.get("store_code"):
        click.echo("editor tasks: off (serving.store_code is off: no code is kept, so nothing to score on)")
    for model, points in (editor.get("models") or {}).items():
        if not points:
            continue
        last = points[-1]
        who = f"version {last['version']}" if last.get("version") is not None else f"candidate of run {last.get('run')}"
        scores = ", ".join(f"{k} {v:.3f}" for k, v in last["scores"].items() if isinstance(v, (int, float)))
        click.echo(f"editor tasks {model}: {len(points)} scored; last {who} on {last.get('n_tasks')} tasks of "
                   f"version {last.get('tasks_version')}: {scores or last.get('skipped') or last.get('error') or 'no score'}")


@click.command("runs")
@config_option
@home_option
@click.option("--json", "as_json", is_flag=True, help="JSON, one object per run.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--model", default=None, metavar="NAME", help="Only the runs of this model.")
def runs_command(config_path, home, as_json, limit, model) -> None:
    """Recent training runs, newest first (each names its model)."""
    import time

    from bot import models
    from bot.errors import BotError
    from bot.runs import list_runs

    settings = _settings(config_path, home)
    if model is None:
        runs = list_runs(settings.home, limit)
    else:
        try:
            name = models.get_model(settings, model).name
        except BotError as exc:
            raise click.ClickException(str(exc)) from exc
        runs = [r for r in list_runs(settings.home, None)
                if (r.model or settings.serving.model_name) == name][:limit]
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in runs], indent=2, default=str))
        return
    if not runs:
        click.echo(f"no runs yet in {settings.home / 'runs'}")
    for r in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        extra = f"v{r.version}" if r.version is not None else (r.error or "")[:60]
        click.echo(f"{r.id}  {when}  {r.model or settings.serving.model_name:<16}  {r.status.value:<10}  "
                   f"{r.trigger.kind:<9}  {extra}")


@click.command("init")
@click.option("--path", type=click.Path(dir_okay=False, path_type=Path), default=Path(CONFIG_FILENAME),
              show_default=True, help="Where to write the example.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init_command(path, force) -> None:
    """Write a commented example repotune.toml (every setting at its default)."""
    from bot import config

    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; pass --force to overwrite it")
    path.write_text(config.example_toml(), encoding="utf-8")
    click.echo(f"wrote {path}; add [[repos]] and set secrets in the environment")


@click.command("config")
@config_option
@home_option
@click.option("--help-settings", "help_settings", is_flag=True, help="Every key with its default and help.")
def config_command(config_path, home, help_settings) -> None:
    """Show the effective configuration (secrets masked), or every key's help."""
    from bot import config

    if help_settings:
        for row in config.SETTINGS:
            env = f" [env {row.env}]" if row.env else ""
            click.echo(f"{row.key}{env}\n    {row.help}")
        return
    settings = _settings(config_path, home)
    click.echo(json.dumps({"source": str(settings.source) if settings.source else None,
                           **settings.as_dict()}, indent=2, default=str))


COMMANDS = [webhook_command, worker_command, up_command, status_command, runs_command, init_command,
            config_command]
