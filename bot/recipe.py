"""What a run's steps hand the packages: corpora, shards, the FinetuneConfig and the EvalConfig.

Pure functions of the settings (a run's snapshot, see :func:`bot.lifecycle.step`) and the data
folder, so :mod:`bot.jobs` stays a list of package calls. Nothing here talks to Redis. The
settings are one model's view (:func:`bot.models.settings_for`): its repositories only, so a
model trains and is gated on the corpora of the repositories it learns from and no others, with
its base model, family, method, LoRA settings and overrides already in ``[training]``. Which
corpora are live is decided here too: a corpus whose branch was deleted is *retired*
(:func:`retire`, a marker file the bot owns) and left out of :func:`corpora`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import time
import typing as t
from pathlib import Path
from urllib.parse import unquote

from bot import serving_version
from bot.config import RepoConfig, Settings
from bot.errors import ConfigError
from bot.runs import RunRecord, run_dir
from durable import fsync_dir, write_json_atomic
from trainer.evaluate.config import EvalConfig
from trainer.finetune import FinetuneConfig


def corpora(settings: Settings, *, retired: bool = False) -> list[tuple[RepoConfig, str]]:
    """Every (repository, branch) whose corpus exists or should: default branch plus ``NAME@*``.

    Retired corpora (their branch was deleted, :func:`retire`) are left out: they stay on disk
    but no run trains or evaluates on them and no run fails updating them. ``retired=True``
    lists them too (reconciliation, which revives one whose branch is back)."""
    out = []
    root = settings.home / "corpus"
    for repo in settings.repos:
        out.append((repo, repo.branch))
        parent = (root / repo.name).parent
        for extra in sorted(parent.glob(Path(repo.name).name + "@*")) if parent.is_dir() else []:
            if retired or not (extra / RETIRED_FILE).exists():
                out.append((repo, unquote(extra.name.split("@", 1)[1])))
    return out


# --- retired corpora ------------------------------------------------------------------------

RETIRED_FILE = "retired.json"
"""``corpus/<name>/retired.json``: the bot's marker of a corpus whose branch was deleted
(``{"branch", "reason", "retired_at"}``); trainer never reads it. See docs/corpus.md."""


def retired_branches(home: Path, repo: RepoConfig) -> list[str]:
    """The branches of ``repo`` whose corpus is retired (a directory listing; no lock, no git)."""
    parent = (Path(home) / "corpus" / repo.name).parent
    found = sorted(parent.glob(Path(repo.name).name + "@*/" + RETIRED_FILE)) if parent.is_dir() else []
    return [unquote(marker.parent.name.split("@", 1)[1]) for marker in found]


def retirement(home: Path, name: str) -> dict[str, t.Any] | None:
    """The retirement record of corpus ``name``, or None when it is live."""
    try:
        return t.cast(dict, json.loads((Path(home) / "corpus" / name / RETIRED_FILE).read_text("utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"reason": "unreadable retirement record"}  # the file exists: it is retired


def retire(home: Path, name: str, branch: str, reason: str, now: float | None = None) -> bool:
    """Mark corpus ``name`` retired (written atomically and fsync'd); False when there is no such
    corpus or it is already retired. Its shards and manifest stay: reviving costs one update."""
    folder = Path(home) / "corpus" / name
    if not folder.is_dir() or retirement(home, name) is not None:
        return False
    write_json_atomic(folder / RETIRED_FILE, {"branch": branch, "reason": reason,
                                              "retired_at": time.time() if now is None else now})
    return True


def revive(home: Path, name: str) -> bool:
    """Take corpus ``name`` back into training (its branch was pushed again); True if it was retired."""
    folder = Path(home) / "corpus" / name
    try:
        (folder / RETIRED_FILE).unlink()
    except FileNotFoundError:
        return False
    fsync_dir(folder)
    return True


def branch_gone(home: Path, name: str, branch: str) -> bool:
    """Whether ``branch`` is missing from corpus ``name``'s mirror, which the last update fetched
    with ``--prune``: asked after a failed update, so a fetch that failed (the ref still there)
    is not mistaken for a deletion."""
    from trainer.corpus.update import mirror_dir

    mirror = mirror_dir(home, name)
    if not (mirror / "HEAD").exists():
        return False
    done = subprocess.run(["git", f"--git-dir={mirror}", "rev-parse", "--verify", "--quiet",
                           f"refs/heads/{branch}"], capture_output=True)
    return done.returncode != 0


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
    # Continued training starts where the serving model left off. Not for LoRA: an adapter
    # applies to the base exactly as it is on disk, so every adapter is trained on the base
    # itself (the serving adapter is its baseline at the gate, not its starting point).
    if tr.continue_from_serving and getattr(tr, "method", "full") != "lora":
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
    spec = settings.model
    if spec is not None and spec.method != values.get("method", "full"):
        raise ConfigError(f"models.{spec.name}.method = {spec.method!r}, but this trainer's FinetuneConfig "
                          f"has no `method` field (no LoRA support installed); set method = \"full\" "
                          f"or upgrade RepoTune")
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
