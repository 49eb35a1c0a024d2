"""What a run's steps hand the packages: corpora, shards, the FinetuneConfig and the EvalConfig.

Pure functions of the settings (a run's snapshot, see :func:`bot.lifecycle.step`) and the data
folder, so :mod:`bot.jobs` stays a list of package calls. Nothing here talks to Redis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing as t
from pathlib import Path
from urllib.parse import unquote

from bot import serving_version
from bot.config import RepoConfig, Settings
from bot.errors import ConfigError
from bot.runs import RunRecord, run_dir
from trainer.evaluate.config import EvalConfig
from trainer.finetune import FinetuneConfig


def corpora(settings: Settings) -> list[tuple[RepoConfig, str]]:
    """Every (repository, branch) whose corpus exists or should: default branch plus ``NAME@*``."""
    out = []
    root = settings.home / "corpus"
    for repo in settings.repos:
        out.append((repo, repo.branch))
        parent = (root / repo.name).parent
        for extra in sorted(parent.glob(Path(repo.name).name + "@*")) if parent.is_dir() else []:
            out.append((repo, unquote(extra.name.split("@", 1)[1])))
    return out


def shards(settings: Settings, split: str) -> list[Path]:
    """The shard files of ``split`` over every corpus (a corpus not built yet has none)."""
    from trainer import corpus

    files: list[Path] = []
    for repo, branch in corpora(settings):
        with contextlib.suppress(Exception):
            files += list(corpus.shard_files(settings.home, repo.corpus_name(branch), split))
    return files


def heldout_records(settings: Settings) -> list[dict]:
    """Every held-out corpus record (the evaluation's task source)."""
    from trainer import corpus

    return list(corpus.read_records(shards(settings, "heldout")))


def corpus_version_label(run: RunRecord) -> str:
    """``name:version,…`` of the corpora the run trained on (fixes the evaluation's task set)."""
    return ",".join(f"{k}:{v.get('version')}" for k, v in sorted(run.corpus_version.items()))


def finetune_config(settings: Settings, run: RunRecord) -> FinetuneConfig:
    """The run's :class:`~trainer.finetune.FinetuneConfig`: the recipe in ``[training]`` plus
    the run's inputs (base model, shards, output folder). An unknown recipe name is a ConfigError."""
    tr = settings.training
    base = settings.base_model_path()
    if tr.continue_from_serving:  # continued training: start where the serving model left off
        base = serving_version.serving_checkpoint(settings)[1] or base
    values = {**tr.recipe(), "base": base,
              "train_files": [str(p) for p in shards(settings, "train")],
              "heldout_files": [str(p) for p in shards(settings, "heldout")],
              "output_dir": str(run_dir(settings.home, run.id) / "train"),
              "cache_dir": str(settings.home / "cache" / "tokenized")}
    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"training.{unknown[0]} is not a FinetuneConfig field "
                          f"(unknown: {', '.join(unknown)}); `repotune config --help-settings` lists them")
    return FinetuneConfig(**values)


def eval_config(settings: Settings) -> EvalConfig:
    """The gate's :class:`~trainer.evaluate.EvalConfig`: ``[evaluation]`` is one already.

    ``evaluation.family`` unset takes ``training.family``: the model was trained as that family, so
    its tasks (FIM or left to right) and FIM prompt follow the same setting; both unset, the
    evaluation detects the family from the checkpoint as training did."""
    cfg = settings.evaluation.eval_config()
    if cfg.family is None and settings.training.family:
        cfg = dataclasses.replace(cfg, family=settings.training.family)
    return cfg


def forward_eval_config(settings: Settings) -> EvalConfig:
    """The evaluation settings with the forward evaluation's task budget."""
    return dataclasses.replace(eval_config(settings), num_tasks=settings.evaluation.forward_tasks)


def record_comparison(run: RunRecord, comparison: t.Any, baseline: str, out_dir: Path) -> None:
    """Copy a :class:`trainer.evaluate.Comparison`'s verdict and scores into the run record:
    the gate, the deltas, and both models' overall scores (``eval_candidate``, ``eval_baseline``)."""
    run.metrics["baseline"] = str(baseline)
    gate = comparison.gate
    run.metrics["gate"] = {"passed": bool(gate.passed) if gate else True,
                           "reasons": list(gate.reasons) if gate else []}
    run.metrics["eval_deltas"] = dict(comparison.deltas)
    run.metrics["eval_candidate"] = dict(comparison.candidate.overall)
    run.metrics["eval_baseline"] = dict(comparison.baseline.overall) if comparison.baseline else None
    if (out_dir / "report.md").exists():
        run.eval_report = str(out_dir / "report.md")
