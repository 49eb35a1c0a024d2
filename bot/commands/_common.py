"""Helpers shared by the CLI command modules: the home folder option and terminal progress.

Progress convention used by every package: long functions accept ``progress``, a callable
taking one dict with at least ``stage`` (str), ``done`` and ``total`` (numbers; total may be
0 when unknown) plus free extra keys (``loss``, ``tokens_per_s`` …). The CLI renders it with
:func:`progress_bar`; RQ jobs copy it into ``job.meta["progress"]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

DEFAULT_HOME = Path("~/.repotune")

ProgressFn = Callable[[dict[str, Any]], None]


def resolve_home(home: str | Path | None = None) -> Path:
    """``--home`` if given, else ``$REPOTUNE_HOME``, else ``~/.repotune``; created if missing."""
    chosen = Path(home or os.environ.get("REPOTUNE_HOME") or DEFAULT_HOME).expanduser().resolve()
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    envvar="REPOTUNE_HOME",
    help="RepoTune's data folder (mirrors, corpus, runs, Triton models). Default: ~/.repotune.",
)


@contextlib.contextmanager
def progress_bar(description: str, enabled: bool | None = None) -> Iterator[ProgressFn]:
    """Yield a progress callback that draws one tqdm bar per ``stage`` on stderr."""
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() or bool(os.environ.get("REPOTUNE_PROGRESS"))
    bars: dict[str, tqdm] = {}

    def update(event: dict[str, Any]) -> None:
        if not enabled:
            return
        stage = str(event.get("stage", description))
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(desc=f"{description}: {stage}", total=event.get("total") or None,
                                     unit="", dynamic_ncols=True, leave=True, file=sys.stderr)
        total = event.get("total")
        if total and bar.total != total:
            bar.total = total
        bar.n = event.get("done", bar.n)
        extras = {k: v for k, v in event.items() if k not in ("stage", "done", "total")}
        if extras:
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in extras.items()},
                            refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()
