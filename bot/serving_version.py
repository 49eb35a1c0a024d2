"""Which model version serves, and which checkpoint is behind it: one answer, asked of
:class:`serving.ModelRepository` only.

The truth is the atomic pointer ``triton/<model>/serving.json`` (docs/serving.md), read from disk
by :meth:`serving.ModelRepository.current`; no Triton is needed to read it. A run record in status
``serving`` with that version supplies the checkpoint; when none does (the base model that
``repotune up`` published as version 1, or a version published by hand) the base model is what
serves.
"""

from __future__ import annotations

from pathlib import Path

from bot.config import Settings
from bot.errors import BotError
from bot.runs import RunStatus, list_runs
from serving import ModelRepository


def repository(settings: Settings, *, need_triton: bool = True) -> ModelRepository:
    """The model repository under ``<home>/triton``. ``need_triton``: publishing, activating and
    rolling back talk to Triton, so they get a BotError naming the setting when it is unset."""
    url = settings.serving.triton_url
    if need_triton and not url:
        raise BotError("no Triton to publish to: set serving.triton_url (REPOTUNE_SERVING_TRITON_URL) "
                       "or run under `repotune up`, which starts the bundled Triton")
    return ModelRepository(settings.home / "triton", settings.serving.model_name, url,
                           keep=max(1, settings.serving.keep_versions))


def active_version(settings: Settings) -> int | None:
    """The version the proxy routes to (the pointer on disk), or None when nothing is published
    or the pointer cannot be read."""
    try:
        return repository(settings, need_triton=False).current()
    except Exception:  # a half-written or foreign model folder: report "nothing serves"
        return None


def serving_checkpoint(settings: Settings) -> tuple[int | None, str | None]:
    """(version, checkpoint) of the serving model when a run record serves the active version
    (the newest such run when no pointer exists yet); (None, None) otherwise."""
    active = active_version(settings)
    for run in list_runs(settings.home, limit=None):
        if run.version is None or run.status != RunStatus.SERVING:
            continue
        if active is None or run.version == active:
            return run.version, run.checkpoint
    return None, None


def serving_model(settings: Settings) -> tuple[int | None, str | None]:
    """(version, checkpoint) of the model that serves now, the base model included.

    A serving run's checkpoint when a run record serves the active version; otherwise the base
    model, which serves as the version the pointer names (``repotune up`` publishes it as
    version 1) — or as no version when nothing is published yet, as long as it is a local
    folder. (None, None) when there is no model at all.
    """
    version, checkpoint = serving_checkpoint(settings)
    if checkpoint:
        return version, checkpoint
    pointer = active_version(settings)
    base = settings.base_model_path()
    if pointer is not None or Path(base).is_dir():
        return pointer, base
    return None, None
