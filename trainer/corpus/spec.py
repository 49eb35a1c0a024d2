"""The corpus's input (:class:`CorpusSpec`) and output (:class:`CorpusResult`) dataclasses."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

ENGINE_VERSION = 4
"""Bumped whenever the engine's output for the same spec changes (shard layout, filters,
secrets candidates, manifest indexes): a corpus built by another version is rebuilt in full.
3: a full build writes the held-out shard of a pinned file (2 could leave it unwritten).
4: the secrets scanner changed (unquoted/env/URL/PEM-body/vendor-token values now redacted)."""


@dataclass(frozen=True)
class CorpusSpec:
    """What to ingest from one repository, and how."""

    name: str
    """Corpus name: folder under ``corpus/`` and ``mirrors/``; may contain one ``/``."""
    url: str
    """Clone URL (https, ssh, file://) or a local repository path."""
    branch: str | None = "main"
    """Tracked branch; None means the remote's default branch."""
    include: tuple[str, ...] = ("**",)
    """Globs a path must match (``**`` crosses folders; no ``/`` matches the base name)."""
    exclude: tuple[str, ...] = ()
    """Globs that remove a path even if included."""
    max_file_bytes: int = 1_000_000
    """Blobs larger than this (bytes) are skipped as ``too-large`` without being read."""
    heldout_fraction: float = 0.05
    """Share of paths held out for evaluation (by hash of repo and path)."""
    heldout_min: int = 1
    """At least this many eligible files are held out (sticky pins; see docs/corpus.md)."""
    secrets: str = "redact"
    """``redact``: replace each secret by ``<SECRET>``; ``drop``: leave the file out."""
    num_shards: int = 8
    """Shards per split at least; a split gets twice as many each time its records outgrow
    256 KB per shard (``shards.shard_count``), so a small update rewrites little at any size."""
    token: str | None = field(default=None, repr=False, compare=False)
    """HTTPS token for private remotes; never stored or logged."""

    def __post_init__(self) -> None:
        if self.secrets not in ("redact", "drop"):
            raise ValueError(f"secrets must be 'redact' or 'drop', not {self.secrets!r}")
        if self.name.count("/") > 1 or not self.name.strip("/") or ".." in self.name:
            raise ValueError(f"corpus name {self.name!r}: use letters, digits, -_. and at most one /")
        if not 0 <= self.heldout_fraction < 1 or self.num_shards < 1:
            raise ValueError("heldout_fraction must be in [0, 1) and num_shards >= 1")
        from trainer.corpus.mirror import split_credentials

        url, creds = split_credentials(self.url)  # user:token@ in a URL would reach the manifest
        if creds is not None:
            object.__setattr__(self, "url", url)
            object.__setattr__(self, "token", self.token or creds[1])
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def public(self) -> dict:
        """The spec as stored in the manifest (no token)."""
        data = asdict(self)
        data.pop("token")
        return data

    def fingerprint(self) -> str:
        """The settings that shape the corpus content, and the engine version; a change of
        either forces a full rebuild."""
        data = self.public()
        data.pop("url")
        data.pop("branch")
        data["engine"] = ENGINE_VERSION
        return json.dumps(data, sort_keys=True)


@dataclass
class CorpusResult:
    """What one :func:`trainer.corpus.update` did."""

    name: str
    commit: str
    previous_commit: str | None
    version: int
    full: bool
    added: int = 0
    modified: int = 0
    deleted: int = 0
    changed_paths: list[str] = field(default_factory=list)
    train_files: int = 0
    heldout_files: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    secrets_redacted: int = 0
    shards_touched: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)
