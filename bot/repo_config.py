"""One repository to learn from: the ``[[repos]]`` table, its validation and its corpus spec.

Split from :mod:`bot.settings` (which re-exports :class:`RepoConfig`): a repository is the one
setting that comes as a list of tables, and its checks (required keys, a clone URL that must not
carry credentials, tracked branch patterns) are its own.
"""

from __future__ import annotations

import fnmatch
import typing as t
from dataclasses import dataclass, field

from bot.errors import ConfigError

_TOKEN_VARIABLES = {"github": "REPOTUNE_GITHUB_TOKEN", "gitlab": "REPOTUNE_GITLAB_TOKEN"}


def _refuse_credentials(name: str, url: str, forge: str) -> None:
    """A clone URL with ``user:token@`` would put the token in the mirror's git config, the
    corpus manifest and every log line naming the URL: refuse it and name the variable to use."""
    from urllib.parse import urlsplit

    if "://" not in url:
        return  # a path, or scp-style git@host:path (an SSH user, not a credential)
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and parts.scheme in ("http", "https")):
        return
    wanted = _TOKEN_VARIABLES.get(forge)
    variable = (f"{wanted} (or {wanted}_FILE)" if wanted else
                "REPOTUNE_GITHUB_TOKEN or REPOTUNE_GITLAB_TOKEN (or their _FILE forms; set forge)")
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else (parts.hostname or "")
    clean = parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()
    raise ConfigError(f"repos.{name}.url holds credentials (user:token@ before the host); tokens never go "
                      f"in repotune.toml, where they would reach the mirror and the corpus manifest. "
                      f"Write url = \"{clean}\" and set {variable}.")


@dataclass
class RepoConfig:
    """One repository to learn from (a ``[[repos]]`` table)."""

    name: str = None  # type: ignore[assignment]  # required; __post_init__ names the fix
    """Short unique name (may contain one '/'); names the mirror and corpus folders."""
    url: str = None  # type: ignore[assignment]
    """Clone URL (https://…, ssh, file://… or a local path), without credentials: a user:token@ URL is refused; the token comes from REPOTUNE_GITHUB_TOKEN or REPOTUNE_GITLAB_TOKEN."""
    forge: str = "local"
    """github, gitlab or local (no webhooks; reconciliation only)."""
    full_name: str | None = None
    """Forge path owner/repo that webhooks name (default: name)."""
    project_id: int | None = None
    """GitLab project id (matches webhooks when set)."""
    branch: str = "main"
    """The default branch; its corpus is named like the repository."""
    branches: list[str] = field(default_factory=list)
    """fnmatch patterns of tracked branches (default: only `branch`); other branches get a corpus NAME@BRANCH."""
    include: list[str] = field(default_factory=lambda: ["**"])
    """Glob patterns of paths to learn from."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of paths to skip."""
    max_file_bytes: int = 1_000_000
    """Larger files are skipped (bytes)."""
    heldout_fraction: float = 0.05
    """Share of files held out for evaluation."""
    heldout_min: int = 1
    """Least number of held-out files."""
    secrets: str = "redact"
    """redact (replace detected secrets) or drop (skip the file)."""
    num_shards: int = 8
    """Least shards per split (more as the corpus grows, about 128 KB each)."""

    def __post_init__(self) -> None:
        if not self.name or not self.url:
            raise ConfigError("every [[repos]] entry needs `name` and `url`, e.g. "
                              "name = \"web\", url = \"https://github.com/acme/web.git\"")
        if self.forge not in ("github", "gitlab", "local"):
            raise ConfigError(f"repos.{self.name}.forge = {self.forge!r}: use github, gitlab or local")
        if self.secrets not in ("redact", "drop"):
            raise ConfigError(f"repos.{self.name}.secrets = {self.secrets!r}: use redact or drop")
        _refuse_credentials(self.name, self.url, self.forge)
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
