"""``repotune demo``: the scripted loop against a running ``repotune up`` on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import click

from bot.commands._common import home_option, resolve_home


@click.command("demo")
@home_option
@click.option("--webhook-url", default=None, help="Default: the GitHub webhook of `repotune up` on this machine.")
@click.option("--completions-url", default=None, help="Default: the proxy of `repotune up` on this machine.")
@click.option("--files", default=30, show_default=True, help="New source files the demo push adds.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for the run.")
@click.option("--canary", is_flag=True, help="Show canary promotion: needs [canary] enabled in the demo's "
              "config; scripted editors accept the new version's completions more often, until it is decided.")
def demo_command(home: Path | None, webhook_url: str | None, completions_url: str | None,
                 files: int, timeout: float, canary: bool) -> None:
    """Push new code to the demo repository and follow it until it serves.

    Prints push → ingest → train → evaluate → convert → publish with the time of each stage,
    then a completion from the proxy. Start `repotune up` (without a config file) first.
    """
    from bot import config, demo, demo_run

    settings = config.load(demo.DemoPaths(resolve_home(home)).config
                           if demo.DemoPaths(resolve_home(home)).config.exists() else None)
    home_path = resolve_home(home)
    if canary and not settings.canary.enabled:
        raise click.ClickException(
            f"--canary needs canary promotion on: add `[canary]` with `enabled = true` (and e.g. "
            f"`min_shown = 40`, `share = 0.5`) to {demo.DemoPaths(home_path).config}, restart `repotune up`, "
            "and run the demo again (docs/canary.md)")
    webhook_url = webhook_url or f"http://{settings.webhook.host}:{settings.webhook.port}/webhooks/github"
    completions_url = completions_url or (
        f"http://{settings.serving.proxy_host}:{settings.serving.proxy_port}/v1/completions")
    try:
        run = demo_run.run_demo(home_path, webhook_url, completions_url, files=files, timeout=timeout,
                            echo=click.echo, family=settings.training.family, canary=canary)
    except OSError as exc:  # the webhook or proxy of `repotune up` is not reachable
        raise click.ClickException(f"{exc}; is `repotune up` running?") from exc
    if run.status.value not in ("serving", "rejected"):
        raise click.ClickException(f"run {run.id} ended {run.status.value}: {run.error}")


COMMANDS = [demo_command]
