"""Which model version serves, and which checkpoint is behind it: one answer, asked of
:class:`serving.ModelRepository` only.

The truth is the atomic pointer ``triton/<model>/serving.json`` (docs/serving.md), read from disk
by :meth:`serving.ModelRepository.current`; no Triton is needed to read it. A run record in status
``serving`` with that version supplies the checkpoint; when none does (the base model that
``repotune up`` published as version 1, or a version published by hand) the base model is what
serves.

Every function answers for one model: ``model`` names it, or ``settings`` are already that
model's view (:func:`bot.models.settings_for`); with one model nothing needs naming. A LoRA model
served by the python backend is an adapter repository (``serving.adapters``): its versions are
adapters over a base loaded once, with the same lifecycle methods; its serving checkpoint is the
serving adapter's published folder (evaluated as base + adapter), and before its first adapter
the bare base serves (the pointer names the base version and no adapter).
"""

from __future__ import annotations

import typing as t
from pathlib import Path

from bot import models
from bot.config import Settings
from bot.errors import BotError
from bot.runs import RunStatus, list_runs
from serving import ModelRepository


def repository(settings: Settings, model: str | None = None, *, need_triton: bool = True) -> t.Any:
    """The repository of ``model`` under ``<home>/triton``: a :class:`serving.ModelRepository`,
    or an adapter repository for a LoRA model on the python backend. ``need_triton``:
    publishing, activating and rolling back talk to Triton, so they get a BotError naming the
    setting when it is unset."""
    settings = models.settings_for(settings, model)
    url = settings.serving.triton_url
    if need_triton and not url:
        raise BotError("no Triton to publish to: set serving.triton_url (REPOTUNE_SERVING_TRITON_URL) "
                       "or run under `repotune up`, which starts the bundled Triton")
    root, name, keep = settings.home / "triton", settings.serving.model_name, max(1, settings.serving.keep_versions)
    if serves_adapters(settings):
        from serving.adapters import open_repository

        sv = settings.serving
        placement = {"gpus": range(sv.gpus), "dtype": sv.dtype} if sv.device == "gpu" else {}
        return open_repository(root, name, adapter=True, triton_url=url, keep=keep, **placement)
    return ModelRepository(root, name, url, keep=keep)


def serves_adapters(settings: Settings, model: str | None = None) -> bool:
    """Whether ``model``'s versions are LoRA adapters over a base loaded once: a LoRA model on
    the python backend. A LoRA model on another backend (FasterTransformer, vLLM) has its
    adapter merged into a full checkpoint at conversion and is served like a full model."""
    settings = models.settings_for(settings, model)
    return models.get_model(settings, None).method == "lora" and settings.serving.backend == "python"


def active_version(settings: Settings, model: str | None = None) -> int | None:
    """The version of ``model`` the proxy routes to (the pointer on disk), or None when nothing
    is published or the pointer cannot be read."""
    try:
        return repository(settings, model, need_triton=False).current()
    except Exception:  # a half-written or foreign model folder: report "nothing serves"
        return None


def _runs_of(settings: Settings, name: str) -> t.Iterator[t.Any]:
    """The runs of model ``name``, newest first (a run without a model name, from before models
    had names, is the implicit model's)."""
    for run in list_runs(settings.home, limit=None):
        if (run.model or settings.serving.model_name) == name:
            yield run


def serving_checkpoint(settings: Settings, model: str | None = None) -> tuple[int | None, str | None]:
    """(version, checkpoint) of ``model``'s serving version when one of its run records serves
    the active version (the newest such run when no pointer exists yet); (None, None) otherwise.
    For a LoRA model the checkpoint is the serving adapter's published folder, run or no run.
    This is the gate's baseline (:func:`baseline`): a model is compared with its own serving
    version, never another's."""
    settings = models.settings_for(settings, model)
    active = active_version(settings)
    if serves_adapters(settings):
        if active is not None:
            adapter = _adapter_folder(settings, active)
            if adapter is not None:
                return active, adapter
        elif _serves_bare_base(settings):  # before the first adapter, or rolled back past the oldest
            return None, None
    for run in _runs_of(settings, settings.serving.model_name):
        if run.version is None or run.status != RunStatus.SERVING:
            continue
        if active is None or run.version == active:
            return run.version, run.checkpoint
    return None, None


def _serves_bare_base(settings: Settings) -> bool:
    """Whether an adapter model's pointer names its base and no adapter."""
    from serving.repository import read_pointer

    try:
        pointer = read_pointer(repository(settings, need_triton=False).model_dir)
    except Exception:  # as active_version: an unreadable folder means "nothing serves"
        return False
    return pointer is not None and pointer.get("adapter") is None


def _adapter_folder(settings: Settings, version: int) -> str | None:
    """The published folder of adapter ``version`` (peft files, tokenizer, manifest naming the
    base by digest): what evaluation loads as base + adapter. Taken from the repository rather
    than the run, so an adapter promoted or rolled back to by hand, or whose run folder was
    pruned, is still its model's baseline."""
    try:
        return str(repository(settings, need_triton=False).version_dir(version))
    except Exception:  # the version folder is gone (retention): fall back to the run records
        return None


def baseline(settings: Settings, model: str | None = None) -> str:
    """What a candidate of ``model`` is gated against: the serving checkpoint (for a LoRA model
    its serving adapter, evaluated as base + adapter), or the base model when nothing of the
    model's own serves (a full model's base published as version 1, a LoRA model's bare base)."""
    settings = models.settings_for(settings, model)
    return serving_checkpoint(settings)[1] or settings.base_model_path()


def last_run(settings: Settings, model: str | None = None) -> t.Any:
    """The newest run of ``model`` (a RunRecord), or None."""
    settings = models.settings_for(settings, model)
    return next(_runs_of(settings, settings.serving.model_name), None)


def serving_model(settings: Settings, model: str | None = None) -> tuple[int | None, str | None]:
    """(version, checkpoint) of the model that serves now, the base model included.

    A serving run's checkpoint when a run record serves the active version; otherwise the base
    model, which serves as the version the pointer names (``repotune up`` publishes it as
    version 1) — or as no version when nothing is published yet, as long as it is a local
    folder. (None, None) when there is no model at all.
    """
    settings = models.settings_for(settings, model)
    version, checkpoint = serving_checkpoint(settings)
    if checkpoint:
        return version, checkpoint
    pointer = active_version(settings)
    base = settings.base_model_path()
    if pointer is not None or Path(base).is_dir():
        return pointer, base
    return None, None
