"""Progress events of a training run: from the Trainer's logs, and across the launcher's pipe.

In process, :class:`ProgressCallback` calls ``progress`` with ``{"stage": "train", "done",
"total", "loss" | "heldout_loss", "tokens_per_s"}``. Under the launcher, rank 0's ``progress``
is :func:`print_progress`, one ``REPOTUNE_PROGRESS {json}`` line per event, and the launching
process turns each line back into the same event with :func:`parse_progress_line`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

ProgressFn = Callable[[dict[str, Any]], None]

PROGRESS_PREFIX = "REPOTUNE_PROGRESS "
"""Prefix of the machine-readable progress line rank 0 prints under the launcher."""


def print_progress(event: dict[str, Any]) -> None:
    """One progress line on stdout (rank 0 under the launcher)."""
    print(PROGRESS_PREFIX + json.dumps(event), flush=True)


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """The progress event in one launcher log line, or None."""
    at = line.find(PROGRESS_PREFIX)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class ProgressCallback:
    """Turns Trainer logs into progress events (and, under the launcher, JSON lines)."""

    def __new__(cls, *args, **kwargs):
        # Subclass lazily so importing this module does not import transformers.
        from transformers import TrainerCallback

        class _Impl(TrainerCallback):
            def __init__(self, progress: ProgressFn | None, tokens_per_step: int) -> None:
                self.progress = progress
                self.tokens_per_step = tokens_per_step
                self.start_step = 0
                self.start_time = time.perf_counter()

            def on_train_begin(self, args, state, control, **kwargs):
                self.start_step = state.global_step
                self.start_time = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not state.is_world_process_zero or not logs:
                    return
                extras = {}
                if "loss" in logs:
                    extras["loss"] = float(logs["loss"])
                if "eval_loss" in logs:
                    extras["heldout_loss"] = float(logs["eval_loss"])
                if extras:
                    self.emit(extras, state.global_step, state.max_steps)

            def emit(self, extras: dict[str, Any], step: int, total: int) -> None:
                if self.progress is None:
                    return
                elapsed = time.perf_counter() - self.start_time
                done_here = step - self.start_step
                event = {"stage": "train", "done": step, "total": total, **extras}
                if done_here > 0 and elapsed > 0:
                    event["tokens_per_s"] = round(done_here * self.tokens_per_step / elapsed, 1)
                self.progress(event)

        return _Impl(*args, **kwargs)


__all__ = ["PROGRESS_PREFIX", "ProgressCallback", "ProgressFn", "parse_progress_line", "print_progress"]
