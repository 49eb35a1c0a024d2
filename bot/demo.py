"""The embedded demo: what ``repotune up`` sets up when nothing is configured, and the scripted
loop ``repotune demo`` drives against it.

``bootstrap(settings)`` runs inside ``repotune up`` once Redis and Triton are up:

1. no repositories configured → a local bare repository made from the sample codebase
   (``<home>/demo/forge/acme/acme-internal.git``) stands in for the forge, with a
   configuration file ``<home>/demo/repotune.toml`` tuned for a CPU (short debounce, a few
   dozen training steps) and a random webhook secret in ``<home>/demo/webhook-secret`` — the
   demo's webhooks are verified like production ones;
2. no base model → a tiny model is bootstrapped from the corpus (``trainer.tiny``): a CodeGen, or
   the FIM family ``[training] family`` names (then the demo fills in the middle end to end);
3. nothing serving → the base model is published and activated as version 1, so the
   completion endpoint answers from the first second; with ``[[models]]`` every model is
   brought up this way, a LoRA model by loading its base once and serving it bare until its
   first adapter (:func:`ensure_serving`, docs/models.md).

``run_demo(...)`` is the scripted loop: commit new code to the demo repository, deliver a
signed GitHub push webhook, follow the run it starts through ingest → train → evaluate →
convert → publish, and ask the proxy for a completion (with a ``suffix`` for a FIM family).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import typing as t
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot import config, models, serving_version
from bot.errors import BotError
from durable import write_atomic

log = logging.getLogger(__name__)

DEMO_REPO = "acme-internal"
DEMO_FULL_NAME = "acme/acme-internal"
SECRET_ENV = "REPOTUNE_GITHUB_WEBHOOK_SECRET_FILE"

# Tuned so one run (ingest → train → evaluate → convert → publish) takes about a minute on
# two CPU cores with the tiny model. The tiny model starts from random weights, hence the
# high learning rate; production keeps the original recipe's 2e-5 on a real CodeGen.
DEMO_TOML = """\
# Written by `repotune up` for the embedded demo; edit freely, it is re-read by new jobs.
[policy]
debounce_seconds = 2
min_changed_files = 1
cooldown_seconds = 0
reconcile_seconds = 0
tick_seconds = 1.0

[training]
deepspeed = "zero2"
block_size = 256
per_device_batch = 8
learning_rate = 0.002
warmup_steps = 5
max_steps = {max_steps}
{family_line}
# Each run continues from the serving model, so every push makes the tiny model better.
continue_from_serving = true

[evaluation]
# A model this small barely changes its greedy completions between consecutive runs, while its
# held-out loss measures every gain precisely: the demo gates on loss and still refuses a
# candidate whose completions get clearly worse (the tolerances are about twice the noise of
# 120 tasks: a paired 95% interval is roughly ±0.02 wide). Production keeps edit similarity as
# the primary metric.
primary_metric = "loss"
margin = 0.02
tolerances = {{ edit_similarity = 0.04, identifier_match = 0.04 }}
num_tasks = {num_tasks}
max_new_tokens = 24

[[repos]]
name = "{name}"
url = "{url}"
forge = "github"
full_name = "{full_name}"
branch = "main"
heldout_fraction = 0.1
heldout_min = 3
num_shards = 4
"""


FAMILY_HINT = ('# family = "starcoder2"  # a FIM family instead of CodeGen: set it in repotune.toml '
               'before the first `repotune up` (docs/families.md)')
"""The demo file's family line when none is chosen: says where choosing one takes effect."""


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo keeps its stand-in forge and settings inside ``home``."""

    home: Path

    @property
    def root(self) -> Path:
        return self.home / "demo"

    @property
    def bare(self) -> Path:
        return self.root / "forge" / "acme" / f"{DEMO_REPO}.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "repotune.toml"

    @property
    def secret(self) -> Path:
        return self.root / "webhook-secret"


# --- git -----------------------------------------------------------------------------------


def run_git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "RepoTune demo", "GIT_AUTHOR_EMAIL": "demo@repotune.invalid",
           "GIT_COMMITTER_NAME": "RepoTune demo", "GIT_COMMITTER_EMAIL": "demo@repotune.invalid"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BotError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done.stdout.strip()


def create_demo_repository(paths: DemoPaths, files: int = 120) -> str:
    """Create the bare repository and a working clone holding the sample codebase; returns HEAD."""
    from trainer import sample_code

    if paths.bare.exists():
        return run_git(paths.bare, "rev-parse", "HEAD")
    paths.bare.parent.mkdir(parents=True, exist_ok=True)
    run_git(paths.bare.parent, "init", "-q", "--bare", "-b", "main", paths.bare.name)
    paths.work.mkdir(parents=True, exist_ok=True)
    run_git(paths.work, "init", "-q", "-b", "main")
    run_git(paths.work, "remote", "add", "origin", paths.bare.as_uri())
    sample_code.generate(paths.work, files=files, seed=0)
    return commit_and_push(paths, "Initial import of the acme internal codebase")


def commit_and_push(paths: DemoPaths, message: str) -> str:
    """Commit everything in the working clone and push it to the bare repository."""
    run_git(paths.work, "add", "-A")
    run_git(paths.work, "commit", "-q", "--allow-empty", "-m", message)
    run_git(paths.work, "push", "-q", "origin", "HEAD:main")
    return run_git(paths.work, "rev-parse", "HEAD")


def add_code(paths: DemoPaths, files: int, seed: int) -> list[str]:
    """Write ``files`` new sample source files (a new package) into the working clone."""
    import tempfile

    from trainer import sample_code

    with tempfile.TemporaryDirectory() as tmp:
        written = sample_code.generate(Path(tmp), files=files, seed=seed)
        added = []
        for path in written:
            rel = path.relative_to(tmp)
            if rel.name == "README.md":
                continue
            target = paths.work / f"batch{seed}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            added.append(str(target.relative_to(paths.work)))
    return added


# --- bootstrap -----------------------------------------------------------------------------


def _ensure_secret(paths: DemoPaths) -> str:
    if not paths.secret.exists():
        write_atomic(paths.secret, secrets.token_hex(32), mode=0o600)  # born 0600, never world-readable
    return paths.secret.read_text().strip()


def _adopt(settings: config.Settings, loaded: config.Settings) -> None:
    """Copy the demo file's settings into the running ``settings`` (keeping URLs ``up`` chose)."""
    for section in ("policy", "training", "evaluation", "canary"):
        setattr(settings, section, getattr(loaded, section))
    settings.repos = loaded.repos
    settings.source = loaded.source


def setup_demo(settings: config.Settings, *, max_steps: int = 60, num_tasks: int = 120) -> DemoPaths:
    """Create the demo repository, secret and configuration, and point ``settings`` at them."""
    paths = DemoPaths(settings.home)
    create_demo_repository(paths)
    secret = _ensure_secret(paths)
    if not paths.config.exists():
        # Atomic: workers re-read this file when its mtime changes and must never see half of it.
        family = settings.training.family
        family_line = f"family = {json.dumps(family)}" if family else FAMILY_HINT
        write_atomic(paths.config, DEMO_TOML.format(max_steps=max_steps, num_tasks=num_tasks, name=DEMO_REPO,
                                                    url=paths.bare.as_uri(), full_name=DEMO_FULL_NAME,
                                                    family_line=family_line))
    # Children (workers, webhook) read the secret through the environment, never the TOML.
    os.environ[SECRET_ENV] = str(paths.secret)
    requested = settings.training.family
    _adopt(settings, config.load(paths.config, env={**os.environ, SECRET_ENV: str(paths.secret)}))
    if requested and settings.training.family != requested:
        raise BotError(f"training.family = {requested!r}, but this home's demo ({paths.config}) was set up "
                       f"for {settings.training.family or 'CodeGen'}: start `repotune up` with a fresh --home "
                       "(REPOTUNE_HOME) to run the demo on another family")
    settings.github.webhook_secret = secret
    settings.insecure_no_webhook_secret = False
    return paths


def ensure_base_model(settings: config.Settings, progress: Callable[[str], None] = log.info) -> Path:
    """The base checkpoint; bootstraps a tiny model of ``[training] family`` (default CodeGen) from
    the configured corpora when the default ``<home>/models/base`` does not exist yet."""
    base = Path(settings.base_model_path())
    if settings.training.base_model:
        return base
    family = settings.training.family or "codegen"
    if (base / "config.json").exists():
        _check_bootstrapped_family(base, settings.training.family)
        return base
    from trainer import corpus
    from trainer.tiny import init_tiny

    texts: list[str] = []
    for repo in settings.repos:
        progress(f"building the corpus of {repo.name} for the tiny base model")
        corpus.update(repo.corpus_spec(settings.token_for(repo.forge)), settings.home)
        files = corpus.shard_files(settings.home, repo.corpus_name(), "train")
        texts += [r["text"] for r in corpus.read_records(files)]
    if not texts:
        raise BotError("no source text to bootstrap the tiny base model from: configure a repository "
                       "or set training.base_model")
    progress(f"training a tokenizer and initialising a tiny {family} model at {base}")
    tmp = base.with_name(base.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        import shutil

        shutil.rmtree(tmp)
    init_tiny(texts, tmp, family=family)
    tmp.rename(base)
    return base


def _check_bootstrapped_family(base: Path, family: str | None) -> None:
    """Refuse a bootstrapped base of another family than ``[training] family`` asks for: every run
    would fail on the sentinels its tokenizer lacks, far from the cause."""
    from families import FamilyError, detect_checkpoint_family

    if family is None:
        return
    try:
        found = detect_checkpoint_family(base).name
    except FamilyError:
        return  # not ours to judge; training names the problem
    if found != family:
        raise BotError(f"the base model bootstrapped at {base} is a tiny {found}, but training.family = "
                       f"{family!r}: a home serves one family; start `repotune up` with a fresh --home "
                       "(REPOTUNE_HOME) to bootstrap the other, or unset training.family")


def ensure_serving(settings: config.Settings, base: Path,
                   progress: Callable[[str], None] = log.info) -> int | None:
    """Make one model answer from the first second; returns its serving version.

    ``settings`` are that model's view (:func:`bot.models.settings_for`; with one model the
    plain settings do). A full model publishes and activates ``base`` as version 1 when nothing
    serves yet; a LoRA model on the python backend gets ``base`` loaded once as its base version
    and, until its first adapter, serves it bare (:meth:`serving.adapters.AdapterRepository.serve_base`;
    the returned version is then None: no adapter serves). After a restart Triton has nothing
    loaded: what the pointer names is loaded again.
    """
    if not settings.serving.triton_url:
        return None
    repository = serving_version.repository(settings)
    if serving_version.serves_adapters(settings):
        from serving.repository import read_pointer

        if read_pointer(repository.model_dir) is None:  # a restart skips this: no base digest to read
            progress(f"loading the base of LoRA model {settings.serving.model_name!r} "
                     "(it serves bare until its first adapter)")
            repository.serve_base(base)
        return repository.ensure_loaded()
    current = serving_version.active_version(settings)
    if current is not None:
        repository.activate(current)  # after a restart Triton has nothing loaded
        return current
    import converter

    progress(f"publishing the base model as the first serving version of {settings.serving.model_name!r}")
    spec = models.get_model(settings, None)
    artifact = settings.home / "models" / ("base-artifact" if spec.implicit else f"base-artifact-{spec.name}")
    if not (artifact / "artifact.json").exists():
        import shutil

        shutil.rmtree(artifact, ignore_errors=True)
        sv = settings.serving
        converter.convert(base, artifact, to="python", model_name=sv.model_name, device=sv.device, gpus=sv.gpus,
                          dtype=sv.dtype)
    version = repository.publish(artifact)
    repository.activate(version)
    return int(version)


def bootstrap(settings: config.Settings, **demo_options: t.Any) -> None:
    """``repotune up``'s bootstrap: demo forge if nothing is configured, base model, first version
    of every configured model (:func:`ensure_serving`; one model without ``[[models]]``).

    ``demo_options`` go to :func:`setup_demo` (tests use fewer training steps)."""
    if not settings.repos:
        paths = setup_demo(settings, **demo_options)
        log.info("no repositories configured: serving the demo repository %s", paths.bare)
    for spec in models.model_specs(settings):
        view = models.settings_for(settings, spec)
        # A model without its own base shares the default one, bootstrapped from every repository.
        base = ensure_base_model(view if spec.base_model else settings, progress=print)
        ensure_serving(view, base, progress=print)


# --- the scripted loop ---------------------------------------------------------------------
